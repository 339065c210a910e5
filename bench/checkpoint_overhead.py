"""How much checkpointing slows training: the queue vs a hand-written MLflow loop.

Trains DDSP-SVC's CombSubFast (4.0 M parameters at 768 unit channels) on the
CPU against a local `mlflow server` (SQLite, proxied artifacts) started here
(or, with ``--backend embedded``, the embedded SQLite store),
checkpointing once per ``--interval-seconds`` of training, and prints from one
run the training time

* with the CheckpointQueue / without checkpointing (with and without AdamW state),
* with a naive synchronous baseline / without: what users write by hand,
  ``mlflow.pytorch.log_model(..., registered_model_name=...)`` plus an alias move
  per checkpoint (and ``mlflow.pytorch.log_state_dict`` for the optimizer).

Every interval is the same number of identical training steps. Configurations
run interleaved in rounds and each interval is timed on its own; the figures
are medians. For the queue only steady-state intervals count (ones during which
the previous save is committed in the background); the final flush of each run
is left out, as it is a one-off at the end of a training run.

The training steps run with subnormal floats flushed on every thread, as
``mlflow-ddsp train`` runs them (:mod:`mlflow_ddsp.subnormals`), and torch's
threads wait passively (``bench/calibration.py``). The header gives the machine's
load; a warning line says when the calibration step or the no-checkpoint
intervals are off from an idle host's (then the ratios are noise).

    python bench/checkpoint_overhead.py [--backend server|embedded] [--interval-seconds 10] [--rounds 3]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/calibration.py, also when loaded by path
import calibration  # noqa: E402  first, before torch: OMP_WAIT_POLICY is read when torch loads libgomp

import argparse
import contextlib
import logging
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.testing.server import LocalServer
from mlflow_ddsp.loss import RandomScaleSpectralLoss
from mlflow_ddsp.models import build_model
from mlflow_ddsp.subnormals import flushed_subnormals
from mlflow_ddsp.store.location import ensure_experiment, prepare_store

SAMPLING_RATE = 44100
BLOCK = 512
#: README "Measured": 138 steps per ~10 s of batch 2 x 0.5 s on the idle 2-core host (torch's 2 threads).
EXPECTED_STEP_SECONDS = {(2, 0.5): 0.072}
#: Beyond this (max - min) / median of the no-checkpoint intervals, the machine moved more than the overheads.
SPREAD_LIMIT = 0.35  # the README's runs: 15-33%


@dataclass
class Trainer:
    """A real CombSubFast training step on a fixed synthetic batch."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batch: tuple[torch.Tensor, ...]
    loss_fn: Callable

    @classmethod
    def create(cls, batch_size: int, seconds: float) -> "Trainer":
        torch.manual_seed(0)
        model = build_model("CombSubFast", sampling_rate=SAMPLING_RATE, block_size=BLOCK, n_unit=768, n_spk=1)
        frames = int(seconds * SAMPLING_RATE / BLOCK)
        units = torch.randn(batch_size, frames, 768)
        f0 = torch.full((batch_size, frames, 1), 220.0)
        volume = torch.rand(batch_size, frames, 1) * 0.1
        target = torch.randn(batch_size, frames * BLOCK) * 0.1
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
        return cls(model, optimizer, (units, f0, volume, target), RandomScaleSpectralLoss(256, 2048, 4))

    def step(self) -> None:
        """One step, subnormals flushed on every thread of the calling thread's team as training does."""
        units, f0, volume, target = self.batch
        with flushed_subnormals(True):
            prediction = self.model(units, f0, volume, infer=False)
            loss = self.loss_fn(prediction, target)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()


def run(trainer: Trainer, intervals: int, steps: int, checkpoint=None) -> list[float]:
    """Seconds per interval: ``steps`` training steps plus the checkpoint call that ends it."""
    durations = []
    for _ in range(intervals):
        started = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        if checkpoint is not None:
            checkpoint()
        durations.append(time.perf_counter() - started)
    return durations


class QueueCheckpoints:
    """One CheckpointQueue for the whole benchmark; ``flush`` between timed runs."""

    def __init__(self, trainer: Trainer, uri: str, name: str, save_optimizer: bool):
        self.trainer, self.step = trainer, 0
        self.queue = CheckpointQueue(name, 1, None, save_optimizer=save_optimizer, tracking_uri=uri, experiment="bench")
        self.blocking: list[float] = []

    def __call__(self) -> None:
        self.step += 1
        t = time.perf_counter()
        self.queue.save(self.step, self.trainer.model, self.trainer.optimizer)
        self.blocking.append(time.perf_counter() - t)

    def flush(self) -> None:
        self.queue.flush()


class NaiveCheckpoints:
    """What users write by hand: log_model + register + move an alias, synchronously."""

    def __init__(self, trainer: Trainer, name: str, save_optimizer: bool):
        import mlflow
        from mlflow import MlflowClient

        self.mlflow, self.client = mlflow, MlflowClient()
        self.trainer, self.name, self.save_optimizer, self.step = trainer, name, save_optimizer, 0
        self.blocking: list[float] = []

    def __call__(self) -> None:
        self.step += 1
        t = time.perf_counter()
        info = self.mlflow.pytorch.log_model(
            self.trainer.model, name=f"checkpoint-{self.step}", registered_model_name=self.name,
            serialization_format="pickle",
        )  # fmt: skip
        if self.save_optimizer:
            self.mlflow.pytorch.log_state_dict(self.trainer.optimizer.state_dict(), artifact_path=f"optimizer-{self.step}")
        self.client.set_registered_model_alias(self.name, "rolling", info.registered_model_version)
        self.blocking.append(time.perf_counter() - t)

    def flush(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval-seconds", type=float, default=10.0, help="training time between checkpoints")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of none / queue / queue+optimizer")
    parser.add_argument("--intervals", type=int, default=3, help="checkpoint intervals per configuration and round")
    parser.add_argument("--naive-intervals", type=int, default=3, help="intervals of the naive baseline (each costs seconds)")
    parser.add_argument("--backend", choices=["server", "embedded"], default="server",
                        help="a local mlflow server on this machine (default), or the embedded SQLite store")
    parser.add_argument("--server-nice", type=int, default=0,
                        help="run the local server at this nice level (e.g. 19: a server on the training "
                        "machine that yields the CPU to training); default 0, the same priority")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--crop-seconds", type=float, default=0.5)
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    trainer = Trainer.create(args.batch_size, args.crop_seconds)
    n_params = sum(p.numel() for p in trainer.model.parameters())

    trainer.step()  # warm-up: allocator, kernels
    t = time.perf_counter()
    for _ in range(3):
        trainer.step()
    step_seconds = (time.perf_counter() - t) / 3
    steps = max(1, round(args.interval_seconds / step_seconds))
    print(f"CombSubFast, {n_params / 1e6:.2f} M parameters, batch {args.batch_size} x {args.crop_seconds} s, "
          f"{step_seconds:.2f} s/step on {torch.get_num_threads()} threads: checkpoint every {steps} steps "
          f"(~{steps * step_seconds:.1f} s of training)")  # fmt: skip
    print(f"machine: {calibration.machine()}")
    expected = EXPECTED_STEP_SECONDS.get((args.batch_size, args.crop_seconds))
    if expected is not None:
        calibration.check(f"CombSubFast step (batch {args.batch_size} x {args.crop_seconds} s)", step_seconds, expected,
                          "s", source="README, idle 2-core host")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        import mlflow

        if args.backend == "server":
            uri = stack.enter_context(LocalServer(tmp, nice=args.server_nice)).uri
        else:
            uri = f"sqlite:///{tmp}/mlflow.db"
            prepare_store(uri)
        mlflow.set_tracking_uri(uri)
        niced = f", server at nice {args.server_nice}" if args.server_nice and args.backend == "server" else ""
        print(f"tracking store: {args.backend} ({uri}){niced}; {args.rounds} rounds of {args.intervals} intervals")

        configs = {
            "none": None,
            "queue": QueueCheckpoints(trainer, uri, "bench-queue", False),
            "queue + optimizer": QueueCheckpoints(trainer, uri, "bench-queue-opt", True),
        }
        durations: dict[str, list[float]] = {label: [] for label in configs}
        # Interleaved rounds: slow drifts of a shared machine hit every configuration alike.
        for round_ in range(1, args.rounds + 1):
            for label, checkpoints in configs.items():
                measured = run(trainer, args.intervals, steps, checkpoints)
                if checkpoints is not None:
                    checkpoints.flush()  # untimed: the next run starts without a pending save
                    measured = measured[1:]  # steady state: a previous save is being committed
                durations[label] += measured
            print(f"  round {round_}: " + ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in durations.items()), flush=True)
        # The naive baseline last: MLflow's fluent logging leaves work running behind it.
        # Created with a pinned artifact location: fluent set_experiment would put it under ./mlruns.
        ensure_experiment(mlflow.MlflowClient(), "bench-naive", uri)
        mlflow.set_experiment("bench-naive")
        with mlflow.start_run():
            for label, save_optimizer in (("naive", False), ("naive + optimizer", True)):
                checkpoints = NaiveCheckpoints(trainer, f"bench-{label.replace(' + ', '-')}", save_optimizer)
                configs[label] = checkpoints
                durations[label] = run(trainer, args.naive_intervals, steps, checkpoints)
                print(f"  {label}: {statistics.median(durations[label]):.2f} s per interval", flush=True)
        for checkpoints in configs.values():
            if isinstance(checkpoints, QueueCheckpoints):
                checkpoints.queue.close()

    base = statistics.median(durations["none"])
    spread = (max(durations["none"]) - min(durations["none"])) / base
    print()
    print(f"{'configuration':<20} {'median s/interval':>18} {'vs none':>9} {'intervals':>10} {'blocked/ckpt':>13}")
    for label, values in durations.items():
        blocking = getattr(configs[label], "blocking", None)
        blocked = f"{statistics.median(blocking) * 1000:.0f} ms" if blocking else "-"
        print(f"{label:<20} {statistics.median(values):>18.2f} {statistics.median(values) / base:>8.3f}x "
              f"{len(values):>10} {blocked:>13}")  # fmt: skip
    print(f"\nno-checkpoint intervals spread {spread:.1%} (min to max)")
    if spread > SPREAD_LIMIT:
        print(f"WARNING: calibration off: no-checkpoint intervals spread {spread:.0%}, expected <= {SPREAD_LIMIT:.0%} "
              f"(the README's runs: 15-33%); {calibration.machine()}: the ratios below are noise")  # fmt: skip
    if expected is not None:
        calibration.check("no-checkpoint interval step", base / steps, expected, "s", source="README, idle 2-core host")
    for suffix in ("", " + optimizer"):
        queue = statistics.median(durations[f"queue{suffix}"])
        naive = statistics.median(durations[f"naive{suffix}"])
        ratio = (naive - base) / max(queue - base, 1e-9)
        print(
            f"queue{suffix}: {queue / base:.3f}x the time without checkpointing (target <= 1.05); "
            f"naive{suffix}: {naive / base:.3f}x; naive overhead / queue overhead: "
            f"{ratio:.1f}x (target >= 5)" + ("" if queue > base else " (queue overhead below the noise)")
        )


if __name__ == "__main__":
    main()
