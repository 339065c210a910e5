"""Recipe for tests/data/upstream_config_models.json: the ``model`` section of upstream's configs.

Reads DDSP-SVC's own config files at fixed commits from a git clone (a bare mirror
works) and records each file's ``model`` section, so tests/test_templates.py can check
that every template under projects/ says truthfully which upstream config it mirrors.

    python tests/upstream_golden/upstream_config_models.py --upstream-git PATH --out tests/data/upstream_config_models.json
"""

from __future__ import annotations

import argparse
import json
import subprocess

import yaml

#: (git ref, config file): the configs the templates mirror
SOURCES = [
    ("master", "configs/combsub.yaml"),
    ("master", "configs/sins.yaml"),
    ("master", "configs/reflow.yaml"),
    ("master", "configs/diffusion-fast.yaml"),
    ("6.1", "configs/reflow.yaml"),
    ("4.0", "configs/combsub.yaml"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream-git", required=True, help="a git clone of yxlllc/DDSP-SVC (bare is fine)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    def git(*argv: str) -> str:
        return subprocess.run(["git", "-C", args.upstream_git, *argv], capture_output=True, text=True, check=True).stdout

    out = {}
    for ref, path in SOURCES:
        commit = git("rev-parse", f"{ref}^{{commit}}").strip()
        doc = yaml.safe_load(git("show", f"{commit}:{path}"))
        out[f"{ref}:{path}"] = {"commit": commit, "model": doc["model"]}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
