"""Issue 23, point 7: every template under projects/ says truthfully which upstream config it mirrors.

A template that mirrors upstream names its source on its first lines as
``upstream <ref>:configs/<file>.yaml``; its ``model`` section must hold every key of that
file's ``model`` section with upstream's value. Upstream's sections are recorded in
tests/data/upstream_config_models.json by tests/upstream_golden/upstream_config_models.py
(from upstream's own files at the commits it names).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = json.loads((ROOT / "tests" / "data" / "upstream_config_models.json").read_text())
SOURCE = re.compile(r"upstream (\S+:configs/[\w.-]+\.yaml)")
TEMPLATES = sorted(p for p in (ROOT / "projects").glob("*/config.yaml") if p.parent.name != "demo")


def _source(path: Path) -> str:
    header = "".join(line for line in path.read_text().splitlines(keepends=True)[:3] if line.startswith("#"))
    found = SOURCE.findall(header)
    assert len(found) == 1, f"{path}: its header must name exactly one upstream source (upstream <ref>:configs/X.yaml)"
    return found[0]


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.parent.name)
def test_a_template_holds_the_model_section_of_the_upstream_config_it_names(path):
    source = _source(path)
    assert source in UPSTREAM, f"{path} names {source}, which the recipe did not record"
    ours = yaml.safe_load(path.read_text())["model"]
    theirs = UPSTREAM[source]["model"]
    differ = {k: (ours.get(k, "<missing>"), v) for k, v in theirs.items() if ours.get(k, "<missing>") != v}
    assert not differ, f"{path} differs from {source} (ours, upstream's): {differ}"


def test_the_combsub_template_does_not_claim_upstreams_current_combsub_yaml():
    """Upstream's configs/combsub.yaml has trained CombSubSuperFast since January 2024."""
    assert UPSTREAM["master:configs/combsub.yaml"]["model"]["type"] == "CombSubSuperFast"
    assert _source(ROOT / "projects" / "combsub" / "config.yaml") != "master:configs/combsub.yaml"
    assert _source(ROOT / "projects" / "superfast" / "config.yaml") == "master:configs/combsub.yaml"
