"""Output paths are checked before the work: every command that writes refuses a bad one in one line.

Table: (command, bad destination). ``infer -o``, ``compare -o``, ``export OUTDIR``
and ``demo-data DIRECTORY`` each get a folder where a file belongs (or a file
where a folder belongs), a path below a regular file, and a name longer than
the file system allows. The model URI in the ``infer`` rows names a version
that does not exist: the destination's error wins only because it is checked
before anything is downloaded or converted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mlflow_ddsp.cli import main
from mlflow_ddsp.transfer import import_experiment

from test_transfer import write_upstream_expdir

LONG = "n" * 300


def _destinations(tmp_path: Path) -> dict[str, Path]:
    blocker = tmp_path / "a-file"
    blocker.write_text("mine\n")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    return {"folder": folder, "file": blocker, "below a file": blocker / "out.wav", "name too long": tmp_path / LONG}


ROWS = [
    ("infer", "folder", "is a folder"),
    ("infer", "below a file", "is a file"),
    ("infer", "name too long", "longer than 255 bytes"),
    ("compare", "file", "is a file"),
    ("compare", "below a file", "is a file"),
    ("compare", "name too long", "longer than 255 bytes"),
    ("export", "file", "is a file"),
    ("export", "below a file", "is a file"),
    ("export", "name too long", "longer than 255 bytes"),
    ("demo-data", "file", "is a file"),
    ("demo-data", "below a file", "is a file"),
    ("demo-data", "name too long", "longer than 255 bytes"),
]


@pytest.fixture
def one_version(embedded, model_name, tmp_path) -> str:
    write_upstream_expdir(tmp_path / "exp" / "one", [2000], with_optimizer=False)
    import_experiment(tmp_path / "exp" / "one", model_name, tracking_uri=embedded.uri, experiment=embedded.experiment)
    return model_name


@pytest.mark.parametrize(("command", "kind", "expected"), ROWS, ids=[f"{c}-{k}" for c, k, _ in ROWS])
def test_bad_destination_is_one_line_before_any_work(embedded, one_version, tmp_path, command, kind, expected):
    target = _destinations(tmp_path)[kind]
    clip = tmp_path / "exp" / "one" / "config.yaml"  # exists; never read as audio: the check comes first
    args = {
        "infer": ["infer", "-m", f"models:/{one_version}/99", "-i", str(clip), "-o", str(target)],
        "compare": ["compare", one_version, "1", "-i", str(clip), "-o", str(target), "--no-log"],
        "export": ["export", f"models:/{one_version}/1", str(target)],
        "demo-data": ["demo-data", str(target)],
    }[command]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, ["--tracking-uri", embedded.uri, *args])
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert expected in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "a-file").read_text() == "mine\n"


def test_compare_checks_every_version_before_converting(embedded, one_version, tmp_path):
    out = tmp_path / "out"
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"not read: v99 is refused first")
    result = CliRunner().invoke(main, ["--tracking-uri", embedded.uri, "compare", one_version, "1", "99",
                                       "-i", str(clip), "-o", str(out), "--no-log"])  # fmt: skip
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "99" in lines[0], result.output
    assert not out.exists()  # nothing converted, nothing partial
