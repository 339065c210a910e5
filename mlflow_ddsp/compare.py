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

from .audio import load_audio, save_wav
from .checkpoint import CheckpointReader
from .config import parse_config
from .plots import spectrogram_image
from .tracking import DEFAULT_EXPERIMENT

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
) -> CompareResult:
    """Convert ``clip`` with each version of ``name``; write the audio and one spectrogram image.

    Raises DeviceError (before anything is fetched) when ``device`` is not available here.
    """
    from .device import resolve_device
    from .inference import VoiceConverter

    if not versions:
        raise ValueError("give at least one version to compare")
    torch_device = resolve_device(device, setting="--device")
    clip, out_dir = Path(clip), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reader = CheckpointReader(name, tracking_uri=tracking_uri)
    result = CompareResult()
    panels = []
    steps = {}
    rate = None
    for number in versions:
        restored = reader.fetch(number)  # verified; an explicit version is never substituted
        cfg = parse_config(yaml.safe_load(restored.config_yaml))
        converter = VoiceConverter.from_checkpoint(restored.checkpoint, cfg, device=torch_device)
        rate = cfg.data.sampling_rate
        if not panels:
            panels.append(("input", load_audio(clip, rate)))
        audio = converter.convert(load_audio(clip, rate), rate, key=key, spk_id=spk_id)
        path = out_dir / f"{clip.stem}_v{number}.wav"
        save_wav(path, audio, rate)
        result.outputs[number] = path
        steps[number] = restored.step
        metrics = reader.store.logged_model_metrics(restored.version.model_id) if restored.version.model_id else {}
        result.table.append({"version": number, "step": restored.step, "validation/loss": metrics.get("validation/loss"),
                             "size_bytes": restored.version.size})  # fmt: skip
        panels.append((f"v{number} (step {restored.step})", audio))
        log.info("%s v%d (step %d) -> %s", name, number, restored.step, path)
    image = spectrogram_image(panels, rate, difference=False, title=f"{name}: {clip.name}")
    result.image = out_dir / f"{clip.stem}_compare.png"
    import matplotlib.image

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
    client = store.client
    run = client.create_run(store.experiment_id(experiment), run_name=f"compare-{name}",
                            tags={"mlflow_ddsp.compare.model": name,
                                  "mlflow_ddsp.compare.versions": ",".join(map(str, steps))})  # fmt: skip
    run_id = run.info.run_id
    try:
        client.log_param(run_id, "clip", str(clip))
        client.log_param(run_id, "key", key)
        client.log_param(run_id, "spk_id", spk_id)
        for number, step in steps.items():
            client.log_param(run_id, f"v{number}.step", step)
        for path in [*result.outputs.values(), result.image, result.table_path]:
            client.log_artifact(run_id, str(path), "compare")
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id
