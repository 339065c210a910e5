"""Which torch device a request names, decided in one place for every command.

``mlflow-ddsp infer/compare --device``, the config's ``device`` (train,
preprocess) and ``MLFLOW_DDSP_DEVICE`` (the pyfunc model, ``mlflow models
serve``) all go through :func:`resolve_device`. A request this machine cannot
meet is refused with one line naming the request and what is available; it is
never silently replaced by another device. ``auto`` picks the first of CUDA,
MPS, CPU that is available.

On the CPU, torch's intra-op threads are OpenMP threads (libgomp), and how they
wait between operators is set once, when ``import torch`` loads libgomp, by
``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT``. libgomp's default spins up to 300,000
iterations (milliseconds) before it sleeps. On cores shared with other work that
collapses: a waiting thread spinning on a core takes it from the thread it waits
for, at every operator. Measured on this project's 2-core hosts at load ~12 (other
test runs), ``bench/serve_latency.py``'s small model converted 10 s of singing in
2.2-7.8 s (synthesis 90% of it) instead of 0.65-0.86 s, a CombSubFast training
step (``bench/checkpoint_overhead.py``) took 1.9 s instead of 0.25 s, and the
spinning burned 8x the CPU (13.5 s against 1.6 s). :func:`passive_openmp_waits`
(called by ``mlflow_ddsp/__init__.py`` before anything imports torch) sets
``OMP_WAIT_POLICY=PASSIVE`` unless the environment chose a policy: waiting threads
sleep at once. It reaches this process only if torch is not loaded yet, and every
process started from it (``mlflow models serve``, data-loader workers) in any case.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING, MutableMapping

from .errors import DeviceError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEVICE_CHOICES",
    "available_devices",
    "check_device_syntax",
    "openmp_waits",
    "passive_openmp_waits",
    "resolve_device",
]

#: The environment variables libgomp reads for how its threads wait (a user's choice is kept).
OPENMP_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_waits = ""


def passive_openmp_waits(environ: MutableMapping[str, str] | None = None) -> str:
    """Make torch's OpenMP threads sleep, not spin, while they wait; what holds for this process, in words.

    Sets ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` (default ``os.environ``)
    unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set there. libgomp reads
    them once, when torch loads it: called after ``import torch``, it changes only
    processes started later. Idempotent; the source of the rule and the
    measurements are in this module's docstring.

    Returns:
        ``"OMP_WAIT_POLICY=PASSIVE"`` (set here or by the environment), the
        environment's own setting, or a sentence saying this process's threads
        still spin because torch was loaded first (:func:`openmp_waits` repeats it).
    """
    global _waits
    env = os.environ if environ is None else environ
    chosen = [f"{key}={env[key]}" for key in OPENMP_WAIT_VARIABLES if key in env]
    if chosen:
        state = ", ".join(chosen)
    elif "torch" in sys.modules:  # libgomp already read an environment without either
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        state = ("torch's threads spin while they wait (libgomp's default): torch was imported before "
                 "mlflow_ddsp; set OMP_WAIT_POLICY=PASSIVE in the environment")  # fmt: skip
    else:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        state = "OMP_WAIT_POLICY=PASSIVE"
    if environ is None and not _waits:
        _waits = state
    return state


def openmp_waits() -> str:
    """How this process's OpenMP threads wait, as :func:`passive_openmp_waits` found it first ("" if never called)."""
    return _waits

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
_SYNTAX = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The devices this process can use, e.g. ``['cpu', 'cuda:0', 'cuda:1']``."""
    import torch

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
    import torch  # here, not at the top: passive_openmp_waits must be importable before torch is

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
