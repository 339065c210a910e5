"""Serving checkpoint versions: every version is an MLflow pyfunc model.

``model_files`` writes the MLmodel and requirements each version carries;
``pyfunc`` is the loader MLflow calls; ``payload`` defines requests and responses;
``resolve`` pins an alias to a concrete version before loading or serving.
"""

from .model_files import pyfunc_files
from .payload import PayloadError
from .pyfunc import DdspVoiceModel, load_version_dir

__all__ = ["DdspVoiceModel", "PayloadError", "load_version_dir", "pyfunc_files"]
