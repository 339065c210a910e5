"""Training throughput on the CPU: ours against upstream DDSP-SVC's own ``solver.py``, side by side.

Both trainers train on the same preprocessed demo data with the same model
(``projects/demo/config.yaml``: CombSubFast, batch 4 x 1 s crops, lr 1e-3, AdamW,
random-scale spectral loss 256..2048 x 4), each in the main thread of its own
process (as ``mlflow-ddsp train`` and upstream's ``train.py`` run), taking turns
step by step (ours, upstream, ours, ...) under a coordinator, so machine load
hits both alike. A step is timed from handing out its batch (data loading
included) to asking for the next one; printed are steps/s (wall) and CPU
ms/step (the process's CPU time, all its threads) for the first and the last
``--window`` steps, their ratio (end/start: 1.00 is flat) and ours/upstream.
Every ``--eval-every`` steps both models are scored, outside the timing, with one
common loss: our fixed-scale spectral loss (FFT 480, 928, 1376, 1824) on the
whole validation files, noise seeded alike.

A third process, the probe, takes its turn after the two trainers: the same
forward+loss+backward of our fresh model on one fixed batch every turn (no
optimizer step, torch reseeded), so its end/start is the machine's own drift
over the run; a trainer whose end/start differs from the probe's has slowed (or
sped up) for reasons of its own. ``--no-probe`` leaves it out. Printed too are
steps/s per ``--window``-step span over the whole run, for each process.

Each side runs its own code: ours is the package's model, loss and optimizer
(fused AdamW, :mod:`mlflow_ddsp.optimizer`), upstream its own ``ddsp/`` model, loss
and ``torch.optim.AdamW`` as its ``train.py`` builds it.

Threads: ours uses what ``mlflow-ddsp train`` uses (``train.num_threads``, default
torch's), upstream torch's default (one per core); ``--threads N`` gives both N.

Ours is :class:`mlflow_ddsp.training.loop.TrainLoop` as ``mlflow-ddsp train``
builds it (no-op checkpointer and tracker, no progress bar); upstream is
``solver.train`` from a checkout of https://github.com/yxlllc/DDSP-SVC, e.g.

    git clone https://github.com/yxlllc/DDSP-SVC /tmp/DDSP-SVC
    git -C /tmp/DDSP-SVC checkout 88f157c03dfea4855e9b7101897bac174fd9b53d

The checkout is copied to a temporary folder; modules it imports only for
feature extraction or logging, and that are not installed here (pyworld,
torchcrepe, transformers, fairseq, gin, tensorboard), are stubbed, and
torchaudio's ``Spectrogram`` (upstream's loss; torchaudio does not import beside
this torch) is replaced by an equivalent ``torch.stft`` module. Nothing is
downloaded: the demo data is synthesised and preprocessed into a temp folder.

    python bench/train_throughput.py --upstream /tmp/DDSP-SVC [--steps 600] [--seed 0]
    python bench/train_throughput.py --model-only [--steps 5]   # forward+loss+backward+AdamW per config
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/calibration.py, also when loaded by path
import calibration  # noqa: E402  first, before torch: OMP_WAIT_POLICY is read when torch loads libgomp

import argparse
import contextlib
import json
import random
import shutil
import subprocess
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from mlflow_ddsp.config import load_config
from mlflow_ddsp.loss import FixedScaleSpectralLoss, RandomScaleSpectralLoss
from mlflow_ddsp.models import build_model_from_config
from mlflow_ddsp.optimizer import build_optimizer
from mlflow_ddsp.subnormals import subnormals_flushed
from mlflow_ddsp.training.session import intra_op_threads, training_cpu_settings

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"demo (tiny)": ROOT / "projects/demo/config.yaml", "default CombSubFast": ROOT / "projects/combsub/config.yaml"}
DEMO = ROOT / "projects/demo/config.yaml"
#: README "Measured" (training speed against upstream): the probe's steps/s over its first 50 steps.
EXPECTED_PROBE_STEPS_PER_SECOND = 7.10


# --------------------------------------------------------------------------- model only


def measure(config_path: Path, device: torch.device, steps: int) -> tuple[float, float, float]:
    """(seconds per step, steps/s, audio seconds trained per second) of bare training steps."""
    cfg = load_config(config_path)
    torch.manual_seed(0)
    model = build_model_from_config(cfg).to(device)
    optimizer = build_optimizer(model.parameters(), cfg.train.lr, cfg.train.weight_decay, device)
    loss_fn = RandomScaleSpectralLoss(cfg.loss.fft_min, cfg.loss.fft_max, cfg.loss.n_scale).to(device)
    batch, block = cfg.train.batch_size, cfg.data.block_size
    frames = int(cfg.data.duration * cfg.data.sampling_rate / block)
    units = torch.randn(batch, frames, cfg.data.encoder_out_channels, device=device)
    f0 = 110 + 330 * torch.rand(batch, frames, 1, device=device)
    volume = 0.1 * torch.rand(batch, frames, 1, device=device)
    spk = torch.randint(1, cfg.model.n_spk + 1, (batch, 1), device=device)
    target = 0.1 * torch.randn(batch, frames * block, device=device)

    def step() -> None:
        loss = loss_fn(model(units, f0, volume, spk, infer=False), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - started) / steps
    return per_step, 1 / per_step, batch * cfg.data.duration / per_step


def model_only(steps: int) -> None:
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; machine: {calibration.machine()}")
    print(f"{'config':<22} {'device':<6} {'batch':>12} {'s/step':>8} {'steps/s':>8} {'audio s/s':>10}")
    for label, path in CONFIGS.items():
        cfg = load_config(path)
        for device in devices:
            with training_cpu_settings(cfg, device):  # as `mlflow-ddsp train` runs
                per_step, rate, audio_rate = measure(path, device, steps)
            shape = f"{cfg.train.batch_size}x{cfg.data.duration:g}s"
            print(f"{label:<22} {device.type:<6} {shape:>12} {per_step:>8.2f} {rate:>8.2f} {audio_rate:>10.1f}", flush=True)


# --------------------------------------------------------------------------- upstream import


class _Spectrogram(torch.nn.Module):
    """torchaudio.transforms.Spectrogram for what upstream's SSSLoss uses (power 1, normalized, center False)."""

    def __init__(self, n_fft, hop_length=None, power=2.0, normalized=False, center=True, **_):
        super().__init__()
        self.n_fft, self.hop, self.power, self.normalized, self.center = n_fft, hop_length or n_fft // 2, power, normalized, center
        self.register_buffer("window", torch.hann_window(n_fft))  # torchaudio keeps it as a buffer too

    def forward(self, x):
        spec = torch.stft(x, self.n_fft, self.hop, self.n_fft, self.window, center=self.center, pad_mode="reflect",
                          normalized=False, onesided=True, return_complex=True)  # fmt: skip
        if self.normalized:
            spec = spec / self.window.pow(2.0).sum().sqrt()
        return spec.abs() if self.power == 1.0 else spec.abs().pow(self.power)


def _stub(name: str, **attrs) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


def import_upstream(checkout: Path, workdir: Path) -> types.SimpleNamespace:
    """Copy upstream's training code to ``workdir`` and import it with the unused imports stubbed."""
    for rel in ("solver.py", "data_loaders.py", "logger", "ddsp", "diffusion/model_conformer_naive.py",
                "encoder/hubert/model.py"):  # fmt: skip
        src, dst = checkout / rel, workdir / rel
        if not src.exists():
            sys.exit(f"--upstream {checkout}: {rel} is missing; give a checkout of github.com/yxlllc/DDSP-SVC")
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    for pkg in ("diffusion", "encoder", "encoder/hubert"):
        (workdir / pkg / "__init__.py").touch()

    class _Unused:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("stubbed for the bench: feature extraction is not used in training")

    class _Writer:  # tensorboard's SummaryWriter: the bench keeps no logs
        def __init__(self, *args, **kwargs): ...
        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    for name in ("pyworld", "torchcrepe", "fairseq", "gin"):
        _stub(name, checkpoint_utils=None)
    _stub("transformers", HubertModel=_Unused, Wav2Vec2FeatureExtractor=_Unused)
    _stub("torchaudio")
    _stub("torchaudio.transforms", Spectrogram=_Spectrogram, Resample=_Unused)
    sys.modules["torchaudio"].transforms = sys.modules["torchaudio.transforms"]
    _stub("torch.utils.tensorboard", SummaryWriter=_Writer)
    with contextlib.suppress(ImportError):
        import sklearn.cluster  # noqa: F401  (encoder/hubert/model.py)
    if "sklearn.cluster" not in sys.modules:
        _stub("sklearn")
        _stub("sklearn.cluster", KMeans=_Unused)
    sys.path.insert(0, str(workdir))
    import data_loaders  # noqa: E402
    import solver  # noqa: E402
    from ddsp import loss, vocoder  # noqa: E402
    from logger import utils  # noqa: E402

    return types.SimpleNamespace(solver=solver, data_loaders=data_loaders, vocoder=vocoder, loss=loss, utils=utils)


# --------------------------------------------------------------------------- the side-by-side run


class _Done(Exception):
    """Ends a side's training thread after its last timed step."""


@dataclass
class _Side:
    name: str
    model: torch.nn.Module
    steps: int
    times: list = field(default_factory=list)  # (wall s, cpu s) per step
    evals: dict = field(default_factory=dict)  # step -> common loss
    rng: tuple | None = None  # (torch state, python state) while the other side runs
    error: BaseException | None = None


class _PipeBaton:
    """This process's turn: wait for a byte from the coordinator, answer with one after a step."""

    def __init__(self, go_fd: int, done_fd: int):
        self.go, self.done = go_fd, done_fd

    def wait(self, name):
        if os.read(self.go, 1) != b"g":
            raise SystemExit(f"{name}: the coordinator went away")

    def pass_on(self, name, finished=False):
        os.write(self.done, b"f" if finished else b"d")


class _TurnTakingLoader:
    """Wraps a DataLoader: waits for this side's turn before each batch and times each step."""

    def __init__(self, loader, side: _Side, baton: _PipeBaton, evaluate, eval_every: int):
        self.loader, self.side, self.baton, self.evaluate, self.eval_every = loader, side, baton, evaluate, eval_every
        self.sampler, self.batch_size = getattr(loader, "sampler", None), loader.batch_size
        self.started = None
        self.holding = False  # the turn carries over an epoch's end

    def __len__(self):
        return len(self.loader)

    def _end_step(self):
        if self.started is not None:
            wall, cpu = self.started
            self.side.times.append((time.perf_counter() - wall, time.process_time() - cpu))
            self.started = None
        step = len(self.side.times)
        if step % self.eval_every == 0 or step == self.side.steps:
            self.evaluate(self.side, step)
        finished = step >= self.side.steps
        self.side.rng = (torch.get_rng_state(), random.getstate())
        self.baton.pass_on(self.side.name, finished)
        if finished:
            raise _Done

    def __iter__(self):
        iterator = None
        while True:
            if self.started is not None:
                self._end_step()  # raises _Done after the last step
            if self.holding:
                self.holding = False  # a new epoch: the turn is still this side's
            else:
                self.baton.wait(self.side.name)
            torch.set_rng_state(self.side.rng[0])
            random.setstate(self.side.rng[1])
            self.started = (time.perf_counter(), time.process_time())
            try:
                if iterator is None:
                    iterator = iter(self.loader)  # a shuffle draws from this side's RNG
                batch = next(iterator)
            except StopIteration:
                # The epoch ended; this side keeps its turn and its next batch starts the step.
                self.started, self.holding = None, True
                self.side.rng = (torch.get_rng_state(), random.getstate())
                return
            yield batch


def _common_loss(model: torch.nn.Module, batches: list[dict], loss_fn, upstream: bool) -> float:
    """Mean fixed-scale loss over the validation files, noise seeded alike; RNG and mode untouched."""
    state, was_training = torch.get_rng_state(), model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i, b in enumerate(batches):
            torch.manual_seed(1000 + i)
            out = model(b["units"].float(), b["f0"], b["volume"], b["spk_id"])
            out = out[0] if upstream else out
            n = min(out.shape[-1], b["audio"].shape[-1])
            total += float(loss_fn(out[..., :n].float(), b["audio"][..., :n].float()))
    model.train(was_training)
    torch.set_rng_state(state)
    return total / len(batches)


def _demo_data(workdir: Path, cfg_overrides: list[str]) -> Path:
    from mlflow_ddsp.demo_data import make_demo_dataset
    from mlflow_ddsp.preprocess import preprocess

    data = workdir / "demo"
    make_demo_dataset(data, progress=False)
    preprocess(load_config(DEMO, cfg_overrides), workers=1, progress=False)
    return data


class _NoCheckpoints:
    def save(self, *args, **kwargs):
        return None


class _NoTracking:
    def log_metrics(self, metrics, step):
        return None

    def log_validation(self, result, step, media=None):
        return None


def _overrides(workdir: Path, steps: int, seed: int) -> list[str]:
    return [f"data.train_path={workdir / 'demo/train'}", f"data.valid_path={workdir / 'demo/val'}",
            f"train.seed={seed}", f"train.max_steps={steps}", f"train.interval_val={10 * steps}",
            "train.interval_force_save=null"]  # fmt: skip


def worker(name: str, workdir: Path, upstream_path: Path, steps: int, seed: int, eval_every: int,
           threads: int | None, go_fd: int, done_fd: int, out: Path) -> None:  # fmt: skip
    """One trainer in this process's main thread, stepping when the coordinator says so."""
    # ours and the probe take their threads from the config, as `mlflow-ddsp train` does
    cfg = load_config(DEMO, _overrides(workdir, steps, seed) + ([f"train.num_threads={threads}"] if threads else []))
    common = FixedScaleSpectralLoss.from_range(cfg.loss.fft_min, cfg.loss.fft_max, cfg.loss.n_scale)
    baton = _PipeBaton(go_fd, done_fd)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    if name == "probe":
        probe(cfg, baton, steps, out)
        return
    if name == "ours":
        from mlflow_ddsp.training.data import make_loaders
        from mlflow_ddsp.training.loop import TrainLoop

        model = build_model_from_config(cfg)
        optimizer = build_optimizer(model.parameters(), cfg.train.lr, cfg.train.weight_decay, torch.device("cpu"))
        train_loader, valid_loader = make_loaders(cfg)
    else:
        up = import_upstream(upstream_path, workdir / "upstream")
        args = up.utils.load_config(workdir / "upstream.yaml")
        model = up.vocoder.CombSubFast(sampling_rate=args.data.sampling_rate, block_size=args.data.block_size,
                                       n_unit=args.data.encoder_out_channels, n_spk=args.model.n_spk)  # fmt: skip
        optimizer = torch.optim.AdamW(model.parameters())
        for group in optimizer.param_groups:  # as upstream's train.py
            group["lr"], group["weight_decay"] = args.train.lr, args.train.weight_decay
        up_loss = up.loss.RSSLoss(args.loss.fft_min, args.loss.fft_max, args.loss.n_scale, device="cpu")
        train_loader, up_valid = up.data_loaders.get_data_loaders(args, whole_audio=False)
        from mlflow_ddsp.training.data import make_loaders

        valid_loader = make_loaders(cfg)[1]  # the same files, for the common loss only
    side = _Side(name, model, steps, rng=(torch.get_rng_state(), random.getstate()))
    valid_batches = list(valid_loader)

    def evaluate(side: _Side, step: int) -> None:
        side.evals[step] = _common_loss(side.model, valid_batches, common, upstream=name == "upstream")

    loader = _TurnTakingLoader(train_loader, side, baton, evaluate, eval_every)
    # ours as `mlflow-ddsp train` runs on the CPU; upstream as its train.py (torch's threads, no flushing)
    cpu = training_cpu_settings(cfg, torch.device("cpu")) if name == "ours" else intra_op_threads(threads)
    with cpu:
        flushing, threads_used = subnormals_flushed(), torch.get_num_threads()
        try:
            if name == "ours":
                TrainLoop(model=model, optimizer=optimizer, loss_fn=RandomScaleSpectralLoss(
                    cfg.loss.fft_min, cfg.loss.fft_max, cfg.loss.n_scale), validation_loss_fn=common,
                    train_loader=loader, valid_loader=valid_loader, checkpointer=_NoCheckpoints(),
                    tracker=_NoTracking(), device=torch.device("cpu"), interval_log=cfg.train.interval_log,
                    interval_val=10 * steps, epochs=cfg.train.epochs, max_steps=steps + 1,
                    progress=False).run(0)  # fmt: skip
            else:
                with contextlib.redirect_stdout(sys.stderr):
                    up.solver.train(args, 0, model, optimizer, up_loss, loader, up_valid)
        except _Done:
            pass
    out.write_text(json.dumps({"times": side.times, "evals": side.evals, "threads": threads_used,
                               "flush_subnormals": flushing}))  # fmt: skip


def probe(cfg, baton: _PipeBaton, steps: int, out: Path) -> None:
    """The same work every turn: forward, loss and backward of our fresh model on one fixed batch.

    The weights never change (no optimizer step) and every turn reseeds torch, so
    a change in its time over the run is the machine's, not training's.
    """
    from mlflow_ddsp.training.data import make_loaders

    torch.manual_seed(0)
    model = build_model_from_config(cfg)
    loss_fn = RandomScaleSpectralLoss(cfg.loss.fft_min, cfg.loss.fft_max, cfg.loss.n_scale)
    batch = next(iter(make_loaders(cfg)[0]))
    times = []
    with training_cpu_settings(cfg, torch.device("cpu")):  # as ours trains
        flushing, threads_used = subnormals_flushed(), torch.get_num_threads()
        for step in range(1, steps + 1):
            baton.wait("probe")
            wall, cpu = time.perf_counter(), time.process_time()
            torch.manual_seed(step % 2)  # the random-scale loss draws the same scales every other turn
            model.zero_grad(set_to_none=True)
            prediction = model(batch["units"].float(), batch["f0"], batch["volume"], batch["spk_id"], infer=False)
            loss_fn(prediction, batch["audio"]).backward()
            times.append((time.perf_counter() - wall, time.process_time() - cpu))
            baton.pass_on("probe", finished=step == steps)
    out.write_text(json.dumps({"times": times, "evals": {}, "threads": threads_used,
                               "flush_subnormals": flushing}))  # fmt: skip


def side_by_side(upstream_path: Path, steps: int, seed: int, window: int, eval_every: int, threads: int | None,
                 with_probe: bool = True) -> None:
    """Prepare data and upstream, then run both trainers in their own processes, one step each in turn."""
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        workdir = Path(tmp)
        _demo_data(workdir, _overrides(workdir, steps, seed))
        src = upstream_path.resolve()
        for rel in ("solver.py", "data_loaders.py", "ddsp/vocoder.py"):
            if not (src / rel).is_file():
                sys.exit(f"--upstream {upstream_path}: {rel} is missing; give a checkout of github.com/yxlllc/DDSP-SVC")
        raw = yaml.safe_load(DEMO.read_text())  # upstream's config: the same values, in its own layout
        raw["data"].update(train_path=str(workdir / "demo/train"), valid_path=str(workdir / "demo/val"))
        raw["env"] = {"expdir": str(workdir / "upstream-exp"), "gpu_id": 0}
        raw["train"].update(interval_val=10 * steps, interval_log=10 * steps)
        (workdir / "upstream.yaml").write_text(yaml.safe_dump(raw))

        procs, pipes, results = {}, {}, {}
        names = ["ours", "upstream"] + (["probe"] if with_probe else [])
        for name in names:
            go_r, go_w = os.pipe()
            done_r, done_w = os.pipe()
            out = workdir / f"{name}.json"
            cmd = [sys.executable, __file__, "--worker", name, "--workdir", str(workdir), "--steps", str(steps),
                   "--seed", str(seed), "--eval-every", str(eval_every), "--fds", f"{go_r},{done_w}",
                   "--out", str(out), "--upstream", str(src)] + (["--threads", str(threads)] if threads else [])  # fmt: skip
            procs[name] = subprocess.Popen(cmd, pass_fds=(go_r, done_w), stdout=subprocess.DEVNULL)
            os.close(go_r)
            os.close(done_w)
            pipes[name], results[name] = (go_w, done_r), out
        print(f"torch {torch.__version__}; seed {seed}, {steps} steps each, one step each in turn, each trainer "
              f"in its own process; upstream {upstream_path}; machine: {calibration.machine()}", flush=True)  # fmt: skip
        alive = list(names)
        while alive:
            for name in list(alive):
                go_w, done_r = pipes[name]
                os.write(go_w, b"g")
                answer = os.read(done_r, 1)
                if answer != b"d":  # b"f": its last step; b"": it failed (its stderr says why)
                    alive.remove(name)
                    os.close(go_w)
        for name, proc in procs.items():
            if proc.wait() != 0:
                sys.exit(f"the {name} trainer failed (exit {proc.returncode})")
        sides = {}
        for name, out in results.items():
            data = json.loads(out.read_text())
            sides[name] = _Side(name, None, steps, times=data["times"], evals={int(k): v for k, v in data["evals"].items()})
            flushed = "flushed on every thread" if data["flush_subnormals"] else "not flushed"
            print(f"{name}: {data['threads']} intra-op thread(s), subnormals {flushed}")
        report(sides["ours"], sides["upstream"], window, sides.get("probe"))


def report(ours: _Side, upstream: _Side, window: int, probe: _Side | None = None) -> None:
    def rates(side: _Side, part: slice) -> tuple[float, float]:
        chunk = side.times[part]
        wall = sum(t for t, _ in chunk) / len(chunk)
        cpu = sum(c for _, c in chunk) / len(chunk)
        return 1 / wall, 1000 * cpu

    first, last = slice(1, 1 + window), slice(-window, None)  # step 1 (warm-up) left out
    print(f"\n{'':<10} {'steps/s start':>14} {'steps/s end':>12} {'end/start':>10} {'CPU ms/step start':>18} "
          f"{'end':>6} {'end/start':>10}")  # fmt: skip
    rows = {}
    for side in (ours, upstream) + ((probe,) if probe else ()):
        (r0, c0), (r1, c1) = rates(side, first), rates(side, last)
        rows[side.name] = (r0, r1, c0, c1)
        print(f"{side.name:<10} {r0:>14.2f} {r1:>12.2f} {r1 / r0:>10.2f} {c0:>18.0f} {c1:>6.0f} {c1 / c0:>10.2f}")
    print(f"\nsteps/s over the run, by {window}-step span (step 1 left out):")
    for side in (ours, upstream) + ((probe,) if probe else ()):
        spans = [side.times[i : i + window] for i in range(1, len(side.times), window)]
        print(f"{side.name:<10} " + " ".join(f"{len(c) / sum(t for t, _ in c):5.2f}" for c in spans if c))
    o, u = rows["ours"], rows["upstream"]
    whole = {s.name: len(s.times) / sum(t for t, _ in s.times) for s in (ours, upstream)}
    print(f"{'ours/upstream':<10} {o[0] / u[0]:>14.2f} {o[1] / u[1]:>12.2f}   (whole run: {whole['ours']:.2f} vs "
          f"{whole['upstream']:.2f} steps/s = {whole['ours'] / whole['upstream']:.2f}x)")  # fmt: skip
    print(f"(windows: steps 2-{1 + window} and the last {window}; wall steps/s, CPU ms/step of the whole process;\n"
          f" step 1, in the whole run only: ours {ours.times[0][0]:.2f} s, upstream {upstream.times[0][0]:.2f} s)")
    if probe:
        calibration.check("probe steps/s at the start", rows["probe"][0], EXPECTED_PROBE_STEPS_PER_SECOND, "steps/s",
                          source="README, idle 2-core host, torch's 2 threads", higher_is_faster=True)  # fmt: skip
        print("(probe: the same forward+backward of a fixed model on a fixed batch every turn, in its own process;\n"
              " its end/start is the machine's drift over the run)")
    print("\ncommon fixed-scale validation loss at equal steps:")
    print(f"{'step':>6} {'ours':>8} {'upstream':>9} {'ours-up':>8}")
    for step in sorted(set(ours.evals) & set(upstream.evals)):
        a, b = ours.evals[step], upstream.evals[step]
        print(f"{step:>6} {a:>8.4f} {b:>9.4f} {a - b:>+8.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", type=Path, help="a checkout of github.com/yxlllc/DDSP-SVC (see above)")
    parser.add_argument("--steps", type=int, default=600, help="steps per trainer (model-only: timed steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=50, help="steps averaged at the start and at the end")
    parser.add_argument("--eval-every", type=int, default=200, help="score both models every this many steps")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for both (default: ours its own train.num_threads rule, upstream torch's)")
    parser.add_argument("--model-only", action="store_true", help="bare training steps of the project configs")
    parser.add_argument("--no-probe", action="store_true",
                        help="leave out the constant-work probe process (it measures the machine's drift)")
    parser.add_argument("--worker", choices=["ours", "upstream", "probe"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fds", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        go_fd, done_fd = (int(x) for x in args.fds.split(","))
        worker(args.worker, args.workdir, args.upstream, args.steps, args.seed, args.eval_every, args.threads, go_fd, done_fd, args.out)
    elif args.model_only:
        model_only(args.steps)
    elif args.upstream is None:
        parser.error("give --upstream PATH (a DDSP-SVC checkout), or --model-only")
    else:
        side_by_side(args.upstream, args.steps, args.seed, args.window, args.eval_every, args.threads, not args.no_probe)


if __name__ == "__main__":
    main()
