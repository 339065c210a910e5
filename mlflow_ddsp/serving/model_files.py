"""The files that make a checkpoint version an MLflow pyfunc model.

Every version's artifact root gets, beside ``model_<step>.pt``, ``config.yaml``
and ``manifest.json``: an ``MLmodel`` (python_function flavor loaded by
:mod:`mlflow_ddsp.serving.pyfunc`, with signature and input example) and
explicit requirements. They are the same for every version of a training
run, so they are built once and handed to the checkpoint queue; writing
them per checkpoint costs nothing, unlike MLflow's requirement inference
(5-10 s a call).
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

from .. import __version__
from ..pyfunc_layout import LOADER_MODULE, MLMODEL_FILE, PYTHON_ENV_FILE, REQUIREMENTS_FILE
from .payload import input_example, model_signature

__all__ = ["pyfunc_files", "pip_requirements", "LOADER_MODULE"]


def _release(version: str) -> str:
    return version.split("+", 1)[0]  # "2.13.0+cpu" -> "2.13.0": what pip can install


def pip_requirements() -> list[str]:
    """Pinned to what trained the model; mlflow-ddsp itself must be installed (serve with
    ``--env-manager local``)."""
    import mlflow  # third-party, slow to import: training and transfer load it only when they write a version
    import numpy
    import torch

    return [
        f"mlflow-ddsp=={__version__}",
        f"mlflow=={_release(mlflow.__version__)}",
        f"torch=={_release(torch.__version__)}",
        f"numpy=={numpy.__version__}",
        "soundfile",
        "soxr",
        "praat-parselmouth",
        "pyyaml",
    ]


def pyfunc_files(sampling_rate: int = 44100) -> dict[str, bytes]:
    """``{file name: bytes}`` for MLmodel, requirements and the input example."""
    from mlflow.models import Model  # third-party, slow to import: loaded when a version's files are written
    from mlflow.models.utils import _save_example
    from mlflow.pyfunc import add_to_model
    from mlflow.utils.environment import _PythonEnv

    requirements = pip_requirements()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = Model(signature=model_signature())
        _save_example(model, input_example(sampling_rate), str(root))
        (root / REQUIREMENTS_FILE).write_text("\n".join(requirements) + "\n")
        env = _PythonEnv(python=platform.python_version(), build_dependencies=["pip"], dependencies=[f"-r {REQUIREMENTS_FILE}"])
        env.to_yaml(root / PYTHON_ENV_FILE)
        # data "." : the loader gets the version's artifact root, where the checkpoint lies.
        add_to_model(model, loader_module=LOADER_MODULE, data=".", python_env=PYTHON_ENV_FILE)
        model.save(os.path.join(tmp, MLMODEL_FILE))
        return {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}
