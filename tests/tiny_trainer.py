"""A tiny deterministic training process for crash-safety and lease tests.

    python tiny_trainer.py train URI NAME EXPERIMENT STEPS [--takeover] [--keep-last N] [--encoder FILE]
        Resume from the registry, train to STEPS saving every 10 steps
        (force-save every 30) and waiting for each commit (so that a crash point
        named for a step is reached: a trainer that does not wait lets a newer save
        supersede a spooled one), print JSON events, close. The data of step s
        depends only on s, so a run that crashes and resumes ends with exactly
        the weights of an uninterrupted run. ``--encoder FILE``: every checkpoint depends
        on FILE as its content encoder (issue 21): the first save stores it in the
        store's dependencies, the next ones find it there; the weights do not use it.
    python tiny_trainer.py hold URI NAME EXPERIMENT 0
        Open the queue, print {"event": "ready"}, then obey stdin lines
        ("save <step>" / "quit") until EOF: a live writer under the test's control.

Exit status 3 with {"event": "error"} for an mlflow-ddsp error.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import torch

from mlflow_ddsp import CheckpointQueue, MlflowDdspError
from mlflow_ddsp.checkpoint.dependencies import DependencyRecord
from mlflow_ddsp.checkpoint.files import sha256_file

INTERVAL_VAL = 10
INTERVAL_FORCE_SAVE = 30


def emit(**event) -> None:
    print(json.dumps(event), flush=True)


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def make_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def train_step(model, optimizer, step: int) -> float:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(8, 16, generator=g)
    y = torch.randn(8, 4, generator=g)
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def encoder_dependency(path: str) -> tuple[str, DependencyRecord]:
    """``(path, record)`` of the encoder file at ``path``: what ``CheckpointQueue(dependencies=...)`` takes."""
    found = sha256_file(path)
    return path, DependencyRecord("encoder", found.sha256, found.size, Path(path).name)


def main(argv: list[str]) -> int:
    mode, uri, name, experiment, steps = argv[:5]
    takeover = "--takeover" in argv
    keep_last = int(argv[argv.index("--keep-last") + 1]) if "--keep-last" in argv else 1
    dependencies = [encoder_dependency(argv[argv.index("--encoder") + 1])] if "--encoder" in argv else None
    model, optimizer = make_model()
    try:
        queue = CheckpointQueue(
            name, INTERVAL_VAL, INTERVAL_FORCE_SAVE, save_optimizer=True,
            config={"model": {"type": "tiny"}}, tracking_uri=uri, experiment=experiment,
            takeover=takeover, keep_last=keep_last, dependencies=dependencies,
        )  # fmt: skip
        with queue:
            start = queue.restore(model, optimizer)
            emit(event="resumed", step=start)
            if mode == "hold":
                emit(event="ready")
                for line in sys.stdin:
                    command = line.split()
                    if command and command[0] == "save":
                        queue.save(int(command[1]), model, optimizer).result()
                        emit(event="saved", step=int(command[1]))
                    elif command and command[0] == "quit":
                        break
                return 0
            for step in range(start + 1, int(steps) + 1):
                train_step(model, optimizer, step)
                if step % INTERVAL_VAL == 0:
                    queue.save(step, model, optimizer).result()
        emit(event="done", step=int(steps), weights=weights_digest(model))
        return 0
    except MlflowDdspError as exc:
        emit(event="error", type=type(exc).__name__, message=str(exc))
        return 3


# -- a crash run, started from a warm process -----------------------------------------------
# Each kill test starts a trainer that SIGKILLs itself. A fresh interpreter spends ~3 s importing
# torch and mlflow before it trains for a fraction of a second; a forkserver (one per test
# process, started once: a fresh interpreter that has only imported these modules, with no
# thread, store or connection of the test's) forks each run instead. The run is still its own
# process, killed by the kernel at the named point, with its own environment and output.
_PRELOAD = ["tiny_trainer", "mlflow_ddsp.checkpoint.queue", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store"]
_context = None


def _child(argv: list[str], env: dict[str, str], out: str, err: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_forked(argv: list[str], env: dict[str, str], folder: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run ``main(argv)`` in a process forked from the warm forkserver, with exactly ``env``;
    returns its exit status (``-signal`` when killed), stdout and stderr, as ``subprocess.run``.

    Raises:
        subprocess.TimeoutExpired: the run did not end within ``timeout`` s (it is killed).
    """
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(_PRELOAD)
    folder.mkdir(parents=True, exist_ok=True)
    out, err = folder / "stdout", folder / "stderr"
    process = _context.Process(target=_child, args=(argv, env, str(out), str(err)))
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        raise subprocess.TimeoutExpired(argv, timeout)
    return subprocess.CompletedProcess(argv, process.exitcode, out.read_text(), err.read_text())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
