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

__all__ = ["pyfunc_files", "pip_requirements", "LOADER_MODULE"]

LOADER_MODULE = "mlflow_ddsp.serving.pyfunc"


def _release(version: str) -> str:
    return version.split("+", 1)[0]  # "2.13.0+cpu" -> "2.13.0": what pip can install


def pip_requirements() -> list[str]:
    """Pinned to what trained the model; mlflow-ddsp itself must be installed (serve with
    ``--env-manager local``)."""
    import mlflow
    import numpy
    import torch

    from .. import __version__

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
    from mlflow.models import Model
    from mlflow.models.utils import _save_example
    from mlflow.pyfunc import add_to_model
    from mlflow.utils.environment import _PythonEnv

    from .payload import input_example, model_signature

    requirements = pip_requirements()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = Model(signature=model_signature())
        _save_example(model, input_example(sampling_rate), str(root))
        (root / "requirements.txt").write_text("\n".join(requirements) + "\n")
        env = _PythonEnv(python=platform.python_version(), build_dependencies=["pip"], dependencies=["-r requirements.txt"])
        env.to_yaml(root / "python_env.yaml")
        # data "." : the loader gets the version's artifact root, where the checkpoint lies.
        add_to_model(model, loader_module=LOADER_MODULE, data=".", python_env="python_env.yaml")
        model.save(os.path.join(tmp, "MLmodel"))
        return {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}
