"""Reading encoder checkpoint files without executing pickled code.

Every file goes through ``torch.load(weights_only=True)``. Plain state dicts (bshall's
HubertSoft) load that way as they are. fairseq checkpoints also pickle Python
objects around the weights (an ``argparse.Namespace`` of arguments, numpy scalars
in training state, sometimes omegaconf nodes); for those, each class the file names
is replaced by an inert stand-in (``Opaque``) that only records the arguments and
state it is given, and the file is loaded again, still weights-only. Nothing the
file names is imported or called, so a malicious file cannot run code; modules
torch blocks outright (``os``, ``sys``, ...) still fail, with a one-line error.

``plain`` turns what came back (dicts, Namespaces, stand-ins for omegaconf
containers) into ordinary dicts so configuration can be read from it.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from mlflow_ddsp.errors import ConfigError

__all__ = ["Opaque", "read_checkpoint", "require_checkpoint_path", "plain"]

_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global")
_MAX_STUBS = 256  # a fairseq file names a handful of classes; more means something odd


class Opaque:
    """Inert stand-in for an object of a class the checkpoint names but we do not import.

    ``args`` holds the constructor arguments and ``state`` the pickled state (for a
    plain object, its ``__dict__``).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # everything was recorded in __new__ (pickle's NEWOBJ skips __init__)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<opaque {type(self).__module__}.{type(self).__qualname__}>"


def _stub_for(full_path: str) -> tuple[type, str]:
    """A fresh ``Opaque`` subclass standing in for ``module.Name``, registered by that path."""
    module, _, name = full_path.rpartition(".")
    stub = type(name or full_path, (Opaque,), {"__module__": module or "builtins"})
    stub.__qualname__ = name or full_path
    return stub, full_path


def _one_line(exc: BaseException) -> str:
    """The useful part of an exception message, on one line.

    torch prefixes weights-only failures with a paragraph of advice (including
    "re-run with weights_only=False", which this module deliberately never does);
    keep only the unpickler's own reason.
    """
    text = " ".join(str(exc).split())
    for marker in ("WeightsUnpickler error: ", "from a trusted source. "):
        if marker in text:
            text = text.split(marker, 1)[1]
            break
    return text.split(" Check the documentation")[0][:300]


def require_checkpoint_path(ckpt: str | Path | None, encoder: str, key: str = "data.encoder_ckpt") -> Path:
    """Check that an encoder's checkpoint file is set and exists; return it as a Path."""
    hint = f"set {key} to a local {encoder} checkpoint, or use data.encoder: 'logmel' for a weights-free demo"
    if ckpt is None or str(ckpt).strip() == "":
        raise ConfigError(f"{key}: not set; encoder {encoder!r} needs weights: {hint}")
    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}: {str(ckpt)!r} does not exist; {hint}")
    return path


def read_checkpoint(path: Path, key: str = "data.encoder_ckpt") -> Any:
    """``torch.load`` a checkpoint onto the CPU, weights-only, stubbing unknown classes.

    Raises:
        ConfigError: the file is not a loadable torch checkpoint (named with ``key``).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_error: BaseException = exc
    except Exception as exc:  # truncated zip, not a torch file, ...
        raise ConfigError(f"{key}: cannot load {path} ({_one_line(exc)})") from exc

    # The file names classes outside torch's allowlist. A zip checkpoint can be
    # listed statically; a legacy (pre-1.6) one is retried global by global,
    # which is cheap because legacy files read tensor data after unpickling.
    stubs: dict[str, tuple[type, str]] = {}
    if zipfile.is_zipfile(path):
        for name in torch.serialization.get_unsafe_globals_in_checkpoint(path):
            stubs[name] = _stub_for(name)
    error: BaseException = first_error
    for _ in range(_MAX_STUBS):
        try:
            with torch.serialization.safe_globals(list(stubs.values())):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            error = exc
            match = _UNSUPPORTED_GLOBAL.search(str(exc))
            if match is None or match.group(1) in stubs:
                break
            stubs[match.group(1)] = _stub_for(match.group(1))
        except Exception as exc:
            error = exc
            break
    raise ConfigError(f"{key}: cannot load {path} safely ({_one_line(error)})") from error


def plain(obj: Any) -> Any:
    """Best-effort conversion of loaded configuration objects to plain Python values.

    dicts stay dicts (values converted), ``argparse.Namespace`` and stand-ins for
    plain objects become their attribute dicts, and stand-ins for omegaconf
    containers (state with ``_content``) and value nodes (``_val``) are unwrapped.
    """
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, argparse.Namespace):
        return {k: plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, Opaque):
        state = obj.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # (dict state, slot state)
        if isinstance(state, dict):
            if "_content" in state:
                return plain(state["_content"])
            if "_val" in state:
                return plain(state["_val"])
            return {k: plain(v) for k, v in state.items()}
        if obj.args and not state:
            return plain(obj.args[0]) if len(obj.args) == 1 else plain(list(obj.args))
        return None
    return obj
