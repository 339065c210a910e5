"""Which torch device a request names, decided in one place for every command.

``mlflow-ddsp infer/compare --device``, the config's ``device`` (train,
preprocess) and ``MLFLOW_DDSP_DEVICE`` (the pyfunc model, ``mlflow models
serve``) all go through :func:`resolve_device`. A request this machine cannot
meet is refused with one line naming the request and what is available; it is
never silently replaced by another device. ``auto`` picks the first of CUDA,
MPS, CPU that is available.
"""

from __future__ import annotations

import re

import torch

from .errors import DeviceError

__all__ = ["DEVICE_CHOICES", "available_devices", "check_device_syntax", "resolve_device"]

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
_SYNTAX = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The devices this process can use, e.g. ``['cpu', 'cuda:0', 'cuda:1']``."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        out.append("mps")
    return out


def check_device_syntax(request: str, *, setting: str = "device") -> str:
    """``request`` normalised (stripped, lower case) if it names a device kind we know.

    Raises:
        DeviceError: not one of auto, cpu, cuda, cuda:N, mps.
    """
    text = str(request).strip().lower()
    if not _SYNTAX.match(text):
        raise DeviceError(f"{setting}={request!r} is not a device; use {DEVICE_CHOICES}")
    return text


def resolve_device(request: str | torch.device | None, *, setting: str = "device") -> torch.device:
    """The torch device for ``request``, or a one-line refusal.

    Args:
        request: ``auto`` (or None), ``cpu``, ``cuda``, ``cuda:N``, ``mps``, or a
            ``torch.device``.
        setting: how the user wrote the request (``--device``, ``device``,
            ``MLFLOW_DDSP_DEVICE``), named in the error.

    Raises:
        DeviceError: the request is not a device, or this machine cannot run on it
            (no CUDA in this torch or no GPU, ``cuda:N`` beyond the GPUs present,
            no MPS). The message lists the devices that are available.
    """
    if isinstance(request, torch.device):
        request = str(request)
    text = check_device_syntax("auto" if request is None else request, setting=setting)
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    have = ", ".join(available_devices())
    if text == "mps":
        if not _mps_available():
            raise DeviceError(
                f"{setting}={request!r}: MPS is not available on this machine; available: {have} (or auto)"
            )
        return torch.device("mps")
    # cuda / cuda:N
    if not torch.cuda.is_available():
        why = (
            f"this torch {torch.__version__} is built without CUDA"
            if torch.version.cuda is None
            else "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES?)"
        )
        raise DeviceError(f"{setting}={request!r}: {why}; available: {have} (or auto)")
    device = torch.device(text)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(f"{setting}={request!r}: this machine has {count} CUDA device(s); available: {have} (or auto)")
    return device
