"""Convert one clip with several versions, side by side, and log the comparison to MLflow.

Writes ``<clip>_v<N>.wav`` per version, one image with the input's and every
version's spectrogram next to each other, and ``<clip>_compare.tsv``: a table
of step, validation loss and checkpoint size per version. Logs them (and which
versions at which steps) as a ``compare-<name>`` run, so listening tests live
beside the training runs in the MLflow UI.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from . import tags as T
from .audio import load_audio, save_wav
from .checkpoint import CheckpointReader
from .config import parse_config
from .destinations import check_output_dir
from .device import resolve_device
from .errors import ConfigError
from .inference import VoiceConverter
from .plots import spectrogram_image
from .serving.dependencies import converter_files, registered_dependencies, resolve_dependencies
from .store.location import DEFAULT_EXPERIMENT

__all__ = ["CompareResult", "compare_versions"]

log = logging.getLogger(__name__)


@dataclass
class CompareResult:
    outputs: dict[int, Path] = field(default_factory=dict)  # version -> converted wav
    image: Path | None = None
    table: list[dict] = field(default_factory=list)  # per version: version, step, validation/loss, size_bytes
    table_path: Path | None = None
    run_id: str | None = None

    def table_lines(self) -> list[str]:
        """The metrics table as aligned text lines (header first)."""
        rows = [("VERSION", "STEP", "VALIDATION/LOSS", "SIZE (MB)")]
        for r in self.table:
            loss = r["validation/loss"]
            rows.append((f"v{r['version']}", str(r["step"]), "-" if loss is None else f"{loss:.4f}",
                         "-" if r["size_bytes"] is None else f"{r['size_bytes'] / 1e6:.1f}"))  # fmt: skip
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


def compare_versions(
    name: str,
    versions: Sequence[int],
    clip: str | Path,
    out_dir: str | Path,
    *,
    key: float = 0.0,
    spk_id: int = 1,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    log_to_mlflow: bool = True,
    device: str = "cpu",
    vocoder_ckpt: str | None = None,
    seed: int | None = 0,
) -> CompareResult:
    """Convert ``clip`` with each version of ``name``; write the audio and one spectrogram image.

    Every version is resolved and the output folder checked before the first
    conversion, so a missing version costs no work and leaves no partial output.
    Every version converts with the same ``seed`` (the synthesiser's and the
    sampler's noise), so what differs is the model; ``vocoder_ckpt`` is the
    NSF-HiFiGAN weights file of RectifiedFlow / DiffusionFast versions on this machine.

    Raises:
        DeviceError: ``device`` is not available here (before anything is fetched).
        ConfigError: no versions given, or ``out_dir`` cannot be a writable folder.
        CheckpointNotFoundError: a version does not exist (named).
    """
    versions = list(dict.fromkeys(versions))  # each version once, in the order given
    if not versions:
        raise ConfigError("give at least one version to compare")
    torch_device = resolve_device(device, setting="--device")
    clip, out_dir = Path(clip), check_output_dir(out_dir, "-o/--output")
    reader = CheckpointReader(name, tracking_uri=tracking_uri)
    for number in versions:
        reader.resolve(number)  # raises naming the version before anything is converted
    result = CompareResult()
    panels = []
    steps = {}
    rate = None
    converted = {}
    for number in versions:  # convert everything first: a failure leaves no file behind
        restored = reader.fetch(number)  # verified; an explicit version is never substituted
        cfg = parse_config(yaml.safe_load(restored.config_yaml))
        records = registered_dependencies(reader.store, restored.version)
        cfg = resolve_dependencies(reader.store, records, cfg, overrides={"vocoder": ("--vocoder-ckpt", vocoder_ckpt)},
                                   label=restored.version.label)  # fmt: skip
        source = f"checkpoint {restored.version.label}"
        files = converter_files(records, cfg, vocoder_ckpt=vocoder_ckpt)
        converter = VoiceConverter.from_checkpoint(restored.checkpoint, cfg, device=torch_device, source=source,
                                                   vocoder_ckpt=files["vocoder_ckpt"])  # fmt: skip
        rate = cfg.data.sampling_rate
        if not panels:
            panels.append(("input", load_audio(clip, rate)))
        converted[number] = converter.convert(load_audio(clip, rate), rate, key=key, spk_id=spk_id, seed=seed)
        steps[number] = restored.step
        metrics = reader.store.logged_model_metrics(restored.version.model_id) if restored.version.model_id else {}
        result.table.append({"version": number, "step": restored.step, "validation/loss": metrics.get("validation/loss"),
                             "size_bytes": restored.version.size})  # fmt: skip
        panels.append((f"v{number} (step {restored.step})", converted[number]))
        log.info("%s v%d (step %d) converted", name, number, restored.step)
    image = spectrogram_image(panels, rate, difference=False, title=f"{name}: {clip.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for number, audio in converted.items():
        result.outputs[number] = save_wav(out_dir / f"{clip.stem}_v{number}.wav", audio, rate)
    result.image = out_dir / f"{clip.stem}_compare.png"
    import matplotlib.image  # third-party, slow to import: loaded only when a comparison writes its image

    matplotlib.image.imsave(result.image, image)
    result.table_path = out_dir / f"{clip.stem}_compare.tsv"
    header = "version\tstep\tvalidation/loss\tsize_bytes\n"
    result.table_path.write_text(header + "".join(
        f"{r['version']}\t{r['step']}\t{'' if r['validation/loss'] is None else r['validation/loss']}\t"
        f"{'' if r['size_bytes'] is None else r['size_bytes']}\n" for r in result.table))  # fmt: skip
    if log_to_mlflow:
        result.run_id = _log_run(reader.store, name, experiment, clip, key, spk_id, steps, result)
    return result


def _log_run(store, name, experiment, clip, key, spk_id, steps, result: CompareResult) -> str:
    run_id = store.create_run(store.experiment_id(experiment), run_name=f"compare-{name}",
                              tags={T.COMPARE_MODEL: name, T.COMPARE_VERSIONS: ",".join(map(str, steps))})  # fmt: skip
    try:
        store.log_params(run_id, {"clip": str(clip), "key": key, "spk_id": spk_id,
                                  **{f"v{number}.step": step for number, step in steps.items()}})  # fmt: skip
        for path in [*result.outputs.values(), result.image, result.table_path]:
            store.log_artifacts(run_id, path, "compare")
        store.end_run(run_id, "FINISHED")
    except Exception:
        store.end_run(run_id, "FAILED")
        raise
    return run_id
