"""A tiny deterministic training process for crash-safety and lease tests.

    python tiny_trainer.py train URI NAME EXPERIMENT STEPS [--takeover] [--keep-last N]
        Resume from the registry, train to STEPS saving every 10 steps
        (force-save every 30) and waiting for each commit (so that a crash point
        named for a step is reached: a trainer that does not wait lets a newer save
        supersede a spooled one), print JSON events, close. The data of step s
        depends only on s, so a run that crashes and resumes ends with exactly
        the weights of an uninterrupted run.
    python tiny_trainer.py hold URI NAME EXPERIMENT 0
        Open the queue, print {"event": "ready"}, then obey stdin lines
        ("save <step>" / "quit") until EOF: a live writer under the test's control.

Exit status 3 with {"event": "error"} for an mlflow-ddsp error.
"""

from __future__ import annotations

import hashlib
import json
import sys

import torch

from mlflow_ddsp import CheckpointQueue, MlflowDdspError

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


def main(argv: list[str]) -> int:
    mode, uri, name, experiment, steps = argv[:5]
    takeover = "--takeover" in argv
    keep_last = int(argv[argv.index("--keep-last") + 1]) if "--keep-last" in argv else 1
    model, optimizer = make_model()
    try:
        queue = CheckpointQueue(
            name, INTERVAL_VAL, INTERVAL_FORCE_SAVE, save_optimizer=True,
            config={"model": {"type": "tiny"}}, tracking_uri=uri, experiment=experiment,
            takeover=takeover, keep_last=keep_last,
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
