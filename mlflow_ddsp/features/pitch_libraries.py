"""Importing the pip pitch trackers (torchfcpe, torchcrepe) with or without torchaudio.

Both libraries ship their trained weights inside the wheel and import torchaudio at
module level, but neither *calls* it when given a tensor already at 16 kHz:
torchfcpe imports ``torchaudio.transforms.Resample`` (used only when the input rate
differs from 16 kHz) and torchcrepe imports ``torchaudio`` in ``load.py`` (used only
by ``torchcrepe.load.audio``, for files). mlflow-ddsp resamples to 16 kHz with soxr
before calling them.

Where torchaudio imports, the libraries are imported as they are. Where it does not
(a torch without a matching torchaudio, e.g. torch 2.13 with torchaudio 2.11 or
none), they are imported once beside a placeholder ``torchaudio`` module whose every
attribute raises ``RuntimeError`` naming the cause, and the placeholder is removed
from ``sys.modules`` right after: the libraries' own code and weights run, and
nothing else in the process sees the placeholder. ``tests/test_f0_libraries.py``
checks our extractors against the libraries' own entry points.

Install: ``pip install 'mlflow-ddsp[f0]'`` (einops, local-attention, librosa,
resampy, scipy), then ``pip install --no-deps torchfcpe torchcrepe``; ``--no-deps``
keeps pip from replacing torch to satisfy torchaudio's pin. Where torch and
torchaudio match, a plain ``pip install torchfcpe torchcrepe`` works too.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType

from mlflow_ddsp.errors import ConfigError

__all__ = ["INSTALL_HINT", "import_pitch_library", "torchaudio_importable"]

INSTALL_HINT = "pip install 'mlflow-ddsp[f0]' && pip install --no-deps torchfcpe torchcrepe"

_LIBRARIES = ("torchfcpe", "torchcrepe")
_LOCK = threading.Lock()
_TORCHAUDIO_OK: bool | None = None


def torchaudio_importable() -> bool:
    """Whether ``import torchaudio`` works in this process (checked once).

    A torchaudio built for another torch fails with ``OSError``/``ImportError``
    (its C++ extension does not load); any partly imported ``torchaudio.*``
    modules are then dropped from ``sys.modules``.
    """
    global _TORCHAUDIO_OK
    if _TORCHAUDIO_OK is None:
        try:
            import torchaudio  # noqa: F401

            _TORCHAUDIO_OK = True
        except Exception:  # noqa: BLE001 -- ImportError, OSError, RuntimeError: all mean "not usable"
            _drop_torchaudio_modules()
            _TORCHAUDIO_OK = False
    return _TORCHAUDIO_OK


def _drop_torchaudio_modules() -> dict[str, ModuleType]:
    dropped = {}
    for name in [n for n in sys.modules if n == "torchaudio" or n.startswith("torchaudio.")]:
        dropped[name] = sys.modules.pop(name)
    return dropped


class _Unavailable:
    """Any use raises: the placeholder for a torchaudio name the library only imports."""

    def __init__(self, qualname: str) -> None:
        self._qualname = qualname

    def __getattr__(self, attr: str) -> "_Unavailable":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Unavailable(f"{self._qualname}.{attr}")

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(
            f"{self._qualname} was called, but torchaudio does not import here; mlflow-ddsp "
            "resamples to 16 kHz with soxr so that the pitch libraries never need it"
        )


def _placeholder_torchaudio() -> dict[str, ModuleType]:
    """``torchaudio`` and ``torchaudio.transforms`` modules whose names resolve to ``_Unavailable``."""

    def module(name: str) -> ModuleType:
        mod = ModuleType(name, "placeholder: torchaudio does not import beside this torch")
        mod.__getattr__ = lambda attr, _n=name: _Unavailable(f"{_n}.{attr}")  # type: ignore[attr-defined]
        return mod

    top, transforms = module("torchaudio"), module("torchaudio.transforms")
    top.transforms = transforms  # type: ignore[attr-defined]
    return {"torchaudio": top, "torchaudio.transforms": transforms}


def import_pitch_library(name: str, extractor: str) -> ModuleType:
    """Import ``torchfcpe`` or ``torchcrepe`` for the f0 extractor named ``extractor``.

    Raises:
        ConfigError: the library or one of its dependencies is not installed (one
            line naming what is missing and the install command).
    """
    if name not in _LIBRARIES:
        raise ValueError(f"not a pitch library: {name!r}")
    if sys.modules.get(name) is not None:
        return sys.modules[name]
    hint = f"data.f0_extractor: {extractor!r} needs {name}; {INSTALL_HINT}"
    if importlib.util.find_spec(name) is None:
        raise ConfigError(hint)
    with _LOCK:
        if sys.modules.get(name) is not None:
            return sys.modules[name]
        placeholder = not torchaudio_importable()
        if placeholder:
            sys.modules.update(_placeholder_torchaudio())
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            _forget(name)
            raise ConfigError(f"{hint} (missing module {exc.name!r})") from exc
        finally:
            if placeholder:
                _drop_torchaudio_modules()


def _forget(name: str) -> None:
    """Drop a half-imported library so that a later attempt starts clean."""
    for mod in [n for n in sys.modules if n == name or n.startswith(name + ".")]:
        del sys.modules[mod]
