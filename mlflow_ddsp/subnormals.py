"""Subnormal floats flushed to zero on the CPU, on every thread torch computes with.

A float32 below 1.2e-38 in magnitude is subnormal. Intel cores handle a
subnormal operand or result of a vector multiply or FMA with a microcode assist
that costs on the order of a hundred cycles, unless the thread's MXCSR register
has FTZ (flush results to zero) and DAZ (read subnormal inputs as zero) set; AMD
Zen cores pay little or nothing. DDSP-SVC training makes subnormals as the model
learns: the Performer's kernel features are floored at ``exp(-87) = 1.6e-38``
(:mod:`mlflow_ddsp.dsp.underflow`) and the filter gains of silenced bins end at
``exp(-87) / 128``, so products with anything below 1 fall under the normal
range. Measured with ``bench/train_throughput.py`` on a 2-core Intel Xeon (AMX),
torch 2.13: the demo model's step went from 211 ms to 956 ms of CPU over 600
steps, ``aten::mm`` and ``aten::bmm`` 3.5-4.6x slower on the same shapes, while a
fresh model's step stayed flat; the trained model's step with FTZ/DAZ cost what
the fresh model's did. Upstream DDSP-SVC slows alike (it does not flush).

Flushing replaces a subnormal operand or result by zero, a change below 1.2e-38
in that operation; what follows from it stays at that scale beside normal numbers
(with most of the Performer's key features on the floor, a gradient element
moved by at most ~1e-29 and the loss and weights not at all over 4 steps:
``tests/test_subnormals.py``). A quotient of two subnormals becomes NaN; the
model divides by none (the Performer's normaliser adds 1e-8, the loss 1e-7).

MXCSR is per thread. ``torch.set_flush_denormal`` sets it on the calling thread
only, and torch's OpenMP workers copy it from the thread that creates them when
they start, never again: set after the first parallel operator, it leaves the
workers making subnormals. :func:`flushed_subnormals` therefore also runs glibc's
``fesetenv`` on every thread of the calling thread's OpenMP team, through
libgomp's ``GOMP_parallel`` (the entry point an ``omp parallel`` region compiles
to) as libtorch itself binds it, on Linux x86-64 with torch's OpenMP backend.
Elsewhere it sets the calling thread and threads created later;
:func:`subnormals_flushed` says what holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator

import torch

__all__ = ["flushed_subnormals", "subnormals_flushed"]

_FENV_BYTES = 64  # glibc's x86-64 fenv_t is 32 bytes (x87 environment + MXCSR); room to spare
_GRAIN_SIZE = 32768  # at::internal::GRAIN_SIZE: the elements one intra-op thread takes at least


@contextmanager
def flushed_subnormals(enabled: bool = True) -> Iterator[bool]:
    """Run the block with subnormal floats flushed to zero on this thread and torch's intra-op threads.

    On exit, errors included, the calling thread's previous floating-point
    environment is set again on it and on every thread of its team (torch's
    workers share it unless someone set one thread alone). Cheap (one OpenMP
    region each way, ~20 us); it computes nothing.

    Set the thread count (``torch.set_num_threads``) before entering and keep it
    inside: a team that grows inside may take idle workers that were not in it
    when it was entered (they do not flush), and one that shrinks to one thread
    leaves the others flushing after exit. Threads and processes started inside
    keep flushing after exit (in training: the checkpoint writer's threads and
    forked data-loader workers, which end with it).

    Args:
        enabled: False runs the block unchanged (the same call site either way).

    Yields:
        Whether the CPU supports flushing (``torch.set_flush_denormal``: x86 with
        SSE3); False also when ``enabled`` is False. Whether every thread flushes
        is :func:`subnormals_flushed`'s answer.
    """
    if not enabled:
        yield False
        return
    libm, gomp = _libm(), _libgomp()
    saved = ctypes.create_string_buffer(_FENV_BYTES) if libm is not None else None
    if saved is not None:
        libm.fegetenv(saved)
    was_flushing = _this_thread_flushes() if saved is None else None
    supported = torch.set_flush_denormal(True)
    try:
        if supported:
            _on_team(gomp, libm)
        yield supported
    finally:
        if saved is not None:
            libm.fesetenv(saved)
            _on_team(gomp, libm, saved)
        else:
            torch.set_flush_denormal(was_flushing)


def subnormals_flushed() -> bool:
    """Whether a product that underflows comes out as zero on every intra-op thread.

    One parallel multiply of ``1e-30 * 1e-10`` (1e-40, subnormal) with one of
    torch's 32,768-element work units per intra-op thread, so every thread of the
    team computes a part.
    """
    n = _GRAIN_SIZE * max(1, torch.get_num_threads())
    product = torch.full((n,), 1e-30) * torch.full((n,), 1e-10)
    return not bool(product.any())


def _this_thread_flushes() -> bool:
    return bool((torch.tensor([1e-30]) * 1e-10).item() == 0.0)  # one element: computed on this thread


def _on_team(gomp, libm, env=None) -> None:
    """``fesetenv(env)`` (default: this thread's environment) on every thread of this thread's OpenMP team."""
    if gomp is None or libm is None:
        return
    if env is None:
        env = ctypes.create_string_buffer(_FENV_BYTES)
        libm.fegetenv(env)
    # GOMP_parallel(fn, data, num_threads=0: the team torch.set_num_threads chose, flags=0)
    # calls fn(data) on each thread of the team, this one included, and returns after all.
    gomp.GOMP_parallel(_fesetenv_as_task(libm), env, ctypes.c_uint(0), ctypes.c_uint(0))


@lru_cache(maxsize=1)
def _libm():
    """glibc's libm on Linux x86-64 (where fenv_t holds MXCSR); None elsewhere."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    except OSError:
        return None


@lru_cache(maxsize=1)
def _libgomp():
    """libtorch's OpenMP runtime, with ``GOMP_parallel`` as libtorch itself binds it; None if there is none.

    ``dlsym`` on libtorch_cpu's handle searches that library and its dependencies,
    so this is the runtime torch's pool runs on, whatever its file is called and
    whichever other copies (scikit-learn ships one) the process has loaded.
    """
    if _libm() is None or "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)  # the copy already loaded; never a second one
        lib.GOMP_parallel.restype = None
        return lib
    except (OSError, AttributeError):
        return None


@lru_cache(maxsize=1)
def _fesetenv_as_task(libm):
    # int fesetenv(const fenv_t *) called as void fn(void *): the x86-64 ABI ignores the int.
    return ctypes.cast(libm.fesetenv, ctypes.CFUNCTYPE(None, ctypes.c_void_p))
