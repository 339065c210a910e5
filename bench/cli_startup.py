"""What `mlflow-ddsp --help` costs before it prints anything: CPU seconds per start.

Runs each command ``--runs`` times in a child process and reads the children's
CPU time (user + system, ``resource.getrusage(RUSAGE_CHILDREN)``) around each
run, so the figure does not depend on how busy the machine is the way wall time
does. Prints the median per command and its ratio to ``python -c pass`` (the
interpreter's own start-up, the floor), then what importing the library's
queue costs (torch + MLflow), which the command line defers to the commands
that need it (issue 23 point 10: the target is under 0.5 s of CPU).

    python bench/cli_startup.py [--runs 7]

The test suite asserts the load-independent form of this (``tests/test_cli_startup.py``:
``--help`` imports neither torch nor MLflow); this script gives the number.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys

TARGET_SECONDS = 0.5  # issue 23 point 10


def _cli() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m mlflow_ddsp``."""
    script = shutil.which("mlflow-ddsp", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "mlflow_ddsp"]


def cpu_seconds(command: list[str]) -> float:
    """User + system CPU seconds one run of ``command`` spent (its output discarded)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="Runs per command; the median is printed.")
    args = parser.parse_args()

    py = sys.executable
    cases = [
        ("python -c pass", [py, "-c", "pass"]),
        ("mlflow-ddsp --help", [*_cli(), "--help"]),
        ("python -m mlflow_ddsp --help", [py, "-m", "mlflow_ddsp", "--help"]),
        ("mlflow-ddsp train --help", [*_cli(), "train", "--help"]),
        ("mlflow-ddsp versions --help", [*_cli(), "versions", "--help"]),
        ("import mlflow_ddsp.CheckpointQueue", [py, "-c", "import mlflow_ddsp; mlflow_ddsp.CheckpointQueue"]),
    ]
    print(f"CPU seconds per start (user+sys of the child, median of {args.runs}); {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    floor = None
    worst_cli = 0.0
    for label, command in cases:
        cpu_seconds(command)  # warm the page cache and .pyc files
        median = statistics.median(cpu_seconds(command) for _ in range(args.runs))
        floor = median if floor is None else floor
        if "mlflow-ddsp" in label or "mlflow_ddsp --help" in label:
            worst_cli = max(worst_cli, median)
        print(f"  {label:<38} {median:6.3f} s  {median / max(floor, 1e-9):5.1f}x python -c pass")
    verdict = "under" if worst_cli < TARGET_SECONDS else "OVER"
    print(f"slowest command line start: {worst_cli:.3f} s, {verdict} the {TARGET_SECONDS} s target")


if __name__ == "__main__":
    main()
