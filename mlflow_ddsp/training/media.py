"""What a validation looks and sounds like, as files: per speaker a spectrogram and gt/pred audio.

The tracker logs them on the run (by step); the checkpoint queue also stores
them with the checkpoint of that step, so the MLflow UI shows them next to the
checkpoint they belong to (the LoggedModel's artifacts), covered by its manifest.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from ..audio import save_wav
from ..plots import mel_image, spectrogram_image

__all__ = ["validation_media"]


def validation_media(clips, sampling_rate: int, step: int) -> dict[str, bytes]:
    """Files for the first clip of every speaker in ``clips`` (``ValidationClip``s).

    Returns:
        ``validation_spk<k>.png`` (target | prediction | difference spectrogram; for the
        cascade models target | DDSP stage | output mel)
        and ``validation_spk<k>_{gt,pred}.wav`` (16-bit PCM at ``sampling_rate`` Hz)
        -> their bytes.
    """
    import matplotlib.image

    files: dict[str, bytes] = {}
    seen: set[int] = set()
    with tempfile.TemporaryDirectory(prefix="mlflow-ddsp-media-") as tmp:
        for clip in clips:
            if clip.speaker in seen:
                continue
            seen.add(clip.speaker)
            stem = f"validation_spk{clip.speaker}"
            title = f"speaker {clip.speaker}: {clip.name} at step {step}"
            if getattr(clip, "mels", None):  # cascade models: target | DDSP stage | output mels
                image = mel_image(clip.mels, title=title)
            else:
                image = spectrogram_image([("target", clip.target), ("prediction", clip.prediction)], sampling_rate,
                                          title=title)  # fmt: skip
            buffer = io.BytesIO()
            matplotlib.image.imsave(buffer, image, format="png")
            files[f"{stem}.png"] = buffer.getvalue()
            for kind, audio in (("gt", clip.target), ("pred", clip.prediction)):
                path = save_wav(Path(tmp) / f"{stem}_{kind}.wav", audio, sampling_rate)
                files[path.name] = path.read_bytes()
    return files
