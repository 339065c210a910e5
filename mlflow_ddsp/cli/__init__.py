"""The ``mlflow-ddsp`` command line: a thin layer over the library.

Every command reports mlflow-ddsp's own errors as one line on stderr and exits
non-zero; tracebacks are for bugs only. Commands live by concern:
``registry`` (versions, verify, gc, keep, unkeep, alias, lineage), ``dependencies``
(attach-dependencies), ``data`` (demo-data, preprocess),
``training`` (train, demo), ``serving`` (infer, serve, compare) and
``transfer`` (import, export).

Start-up stays light (``mlflow-ddsp --help`` under 0.1 s of CPU): a command
module imports torch, MLflow, numpy and the library's heavy modules inside its
command functions, never at the top (``tests/test_cli_startup.py``).
"""

from .group import main

# Importing the command modules registers their commands on `main`.
from . import client, data, dependencies, registry, serving, training, transfer, weights  # noqa: E402,F401

__all__ = ["main"]
