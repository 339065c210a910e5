"""How well and how fast each f0 extractor tracks singing whose pitch is known.

The singing is synthetic (``mlflow_ddsp.demo_data.synthesize_sung_clip``): for each
demo voice (a soprano about D4-F5 and a baritone about A2-B3) one clip of
``--seconds`` seconds of phrases on a melody, with glides between notes, scoops into
phrases, delayed vibrato, pitch drift, formant-filtered pulses, breath noise and
inhales in the pauses. The bench adds consonant-like noise: 40-120 ms bursts of
high-passed white noise (s/sh/t-like) in the pauses and just before some notes. The
pitch the synthesiser used is the reference, on the 44.1 kHz / hop 512 frame grid;
a frame is voiced where the voiced source is at least 20 % of its peak level. Each
clip is scored twice: as synthesised ("clean") and with pink background noise at
``--snr-db`` (default 10 dB) below the singing's level ("noisy", a rough stand-in for
a home recording's room and hiss).

Printed for each extractor, over all clips (mir_eval's definitions):

- RPA: raw pitch accuracy, the share of reference-voiced frames the extractor calls
  voiced with a pitch within 50 cents of the reference;
- RPA filled: the same on the f0 the model is trained on (``F0Track.f0``, unvoiced
  frames filled by interpolation), whatever the extractor's voicing;
- VR: voicing recall (reference-voiced frames called voiced);
- VFA: voicing false alarm (reference-unvoiced frames called voiced);
- s / 10 s: wall seconds per 10 s of audio (both conditions). Extractors run interleaved, clip by
  clip, after one warm-up call each (model loading and JIT compilation excluded),
  so machine load affects all alike.

``crepe`` (full) takes minutes per 10 s on a CPU and is left out unless named in
``--extractors``; ``rmvpe`` runs only with ``--rmvpe-ckpt`` (upstream's model.pt);
``dio``/``harvest`` only when pyworld is installed; ``fcpe``/``crepe*`` only when
torchfcpe/torchcrepe are (``pip install 'mlflow-ddsp[f0]' && pip install --no-deps
torchfcpe torchcrepe``). Skipped extractors are listed with the reason.

    python bench/f0_accuracy.py [--seconds 10] [--extractors parselmouth fcpe crepe-tiny ...]
                                [--snr-db 10] [--rmvpe-ckpt pretrain/rmvpe/model.pt] [--seed 0]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/calibration.py, also when loaded by path
import calibration  # noqa: E402  first, before torch: OMP_WAIT_POLICY is read when torch loads libgomp

import argparse
import time

import numpy as np
import torch

from mlflow_ddsp.demo_data import VOICES, SungClip, synthesize_sung_clip
from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.features import F0_EXTRACTORS, get_f0_extractor

SR, HOP = 44100, 512
DEFAULT_EXTRACTORS = [name for name in F0_EXTRACTORS if name != "crepe"]


def add_consonants(clip: SungClip, rng: np.random.Generator, per_second: float = 1.5) -> SungClip:
    """Add unvoiced noise bursts where the reference is unvoiced; the reference is unchanged."""
    audio = clip.audio.astype(np.float64).copy()
    unvoiced = np.flatnonzero(~clip.voiced)
    level = float(np.abs(audio).max())
    for _ in range(int(per_second * audio.size / SR)):
        if unvoiced.size == 0:
            break
        frame = int(rng.choice(unvoiced))
        length = int(rng.uniform(0.04, 0.12) * SR)
        start = frame * HOP - length // 2
        lo, hi = max(start, 0), min(start + length, audio.size)
        if hi <= lo:
            continue
        # Frames the burst touches must all be reference-unvoiced.
        if clip.voiced[lo // HOP : hi // HOP + 1].any():
            continue
        burst = np.diff(rng.standard_normal(hi - lo + 1))  # high-passed white noise
        audio[lo:hi] += burst * np.hanning(hi - lo) * level * rng.uniform(0.05, 0.25)
    return SungClip(np.clip(audio, -1, 1).astype(np.float32), clip.f0, clip.voiced)


def add_noise(clip: SungClip, rng: np.random.Generator, snr_db: float) -> SungClip:
    """Pink noise (1/f power) at ``snr_db`` below the RMS of the voiced frames."""
    white = np.fft.rfft(rng.standard_normal(clip.audio.size))
    freqs = np.fft.rfftfreq(clip.audio.size, 1 / SR)
    pink = np.fft.irfft(white / np.sqrt(np.maximum(freqs, 20.0)), n=clip.audio.size)
    frames = np.repeat(clip.voiced, HOP)[: clip.audio.size]
    sung_rms = float(np.sqrt(np.mean(clip.audio[frames].astype(np.float64) ** 2)))
    pink *= sung_rms / float(np.sqrt(np.mean(pink**2))) * 10 ** (-snr_db / 20)
    return SungClip(np.clip(clip.audio + pink, -1, 1).astype(np.float32), clip.f0, clip.voiced)


def scores(ref: SungClip, raw: np.ndarray, filled: np.ndarray) -> dict[str, float]:
    """Counts for RPA, RPA filled, VR and VFA of one clip (summed over clips, then divided)."""
    est_v = raw > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        cents = 1200 * np.abs(np.log2(np.where(est_v, raw, 1.0) / ref.f0))
        cents_filled = 1200 * np.abs(np.log2(np.maximum(filled, 1e-3) / ref.f0))
    v = ref.voiced
    return {
        "voiced": float(v.sum()),
        "unvoiced": float((~v).sum()),
        "hit": float((v & est_v & (cents <= 50)).sum()),
        "hit_filled": float((v & (cents_filled <= 50)).sum()),
        "recall": float((v & est_v).sum()),
        "false_alarm": float((~v & est_v).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per voice (default 10)")
    parser.add_argument("--extractors", nargs="+", default=DEFAULT_EXTRACTORS, choices=F0_EXTRACTORS)
    parser.add_argument("--rmvpe-ckpt", default=None, help="RMVPE weights (upstream's pretrain/rmvpe/model.pt)")
    parser.add_argument("--snr-db", type=float, default=10.0, help="noisy condition's SNR (default 10 dB)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    clips = [add_consonants(synthesize_sung_clip(args.seconds, voice, rng, SR, HOP), rng) for voice in VOICES.values()]
    total_seconds = sum(c.audio.size for c in clips) / SR

    extractors, skipped = {}, {}
    for name in args.extractors:
        if name == "rmvpe" and not args.rmvpe_ckpt:
            skipped[name] = "no --rmvpe-ckpt given"
            continue
        try:
            ex = get_f0_extractor(name, sample_rate=SR, hop_size=HOP, ckpt=args.rmvpe_ckpt)
            ex.extract(clips[0].audio[: SR // 2])  # warm-up: lazy loads, JIT, kernel caches
        except ConfigError as exc:
            skipped[name] = str(exc)
            continue
        extractors[name] = ex

    conditions = {"clean": clips, f"noisy ({args.snr_db:g} dB SNR)": [add_noise(c, rng, args.snr_db) for c in clips]}
    keys = ("voiced", "unvoiced", "hit", "hit_filled", "recall", "false_alarm")
    totals = {(cond, name): dict.fromkeys(keys, 0.0) for cond in conditions for name in extractors}
    seconds = dict.fromkeys(extractors, 0.0)
    for cond, cond_clips in conditions.items():
        for clip in cond_clips:  # interleaved: every extractor on this clip before the next clip
            for name, ex in extractors.items():
                start = time.perf_counter()
                track = ex.extract(clip.audio)
                seconds[name] += time.perf_counter() - start
                for key, value in scores(clip, track.raw, track.f0).items():
                    totals[cond, name][key] += value

    total_seconds *= len(conditions)
    frames = sum(c.voiced.size for c in clips)
    voiced = sum(int(c.voiced.sum()) for c in clips)
    print(f"machine: {calibration.machine()}")
    print(f"{len(clips)} clips ({', '.join(v.name for v in VOICES.values())}) of {args.seconds:g} s at {SR} Hz, "
          f"hop {HOP}: {frames} frames, {voiced} voiced; each clean and noisy "
          f"(seed {args.seed}, torch threads {torch.get_num_threads()})")  # fmt: skip
    print(f"{'extractor':<12} {'condition':<20} {'RPA':>6} {'RPA filled':>11} {'VR':>6} {'VFA':>6} {'s / 10 s':>9}")
    for name in extractors:
        for i, cond in enumerate(conditions):
            t = totals[cond, name]
            speed = f"{seconds[name] / total_seconds * 10:9.2f}" if i == 0 else ""
            print(
                f"{name if i == 0 else '':<12} {cond:<20} {t['hit'] / t['voiced']:6.3f} "
                f"{t['hit_filled'] / t['voiced']:11.3f} {t['recall'] / t['voiced']:6.3f} "
                f"{t['false_alarm'] / max(t['unvoiced'], 1):6.3f} {speed}"
            )
    for name, why in skipped.items():
        print(f"{name:<12} skipped: {why}")
    if "crepe" not in args.extractors:
        print("crepe        skipped: full CREPE takes minutes per 10 s on a CPU; name it in --extractors to run it")


if __name__ == "__main__":
    main()
