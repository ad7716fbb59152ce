"""What the README's commands write is ignored by git (checkpoints, models, built data, results, runs)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Flags of the README's commands whose value is a path the command writes.
OUTPUT_FLAGS = ("--megatron-dir", "--hf-dir", "--output-prefix", "--out", "--checkpoint.save")
BUILDER_SUFFIXES = (".bin", ".idx", ".seg", ".meta.json", ".coverage.png")  # docs/data_format.md's file table


def readme_outputs() -> list[str]:
    text = (REPO / "README.md").read_text()
    found = set()
    for flag in OUTPUT_FLAGS:
        found.update(re.findall(rf"{re.escape(flag)}[ =]([\w./-]+)", text))
    found.update(re.findall(r"`(runs/[\w./-]+)`", text))  # e.g. the demo's runs/demo/results.md
    return sorted(path for path in found if not path.startswith("-"))


def test_readme_names_the_usual_output_folders() -> None:
    outputs = readme_outputs()
    for folder in ("checkpoints/", "models/", "data/", "results/", "runs/"):
        assert any(p.startswith(folder) for p in outputs), (folder, outputs)


@pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout"
)
def test_every_readme_output_is_ignored() -> None:
    paths = readme_outputs()
    prefix = next(p for p in paths if p.startswith("data/llama3_endprompt"))
    paths += [prefix + suffix for suffix in BUILDER_SUFFIXES]
    paths += [p + "/iter_0000001/common.pt" for p in paths if p.startswith(("runs/", "checkpoints/"))]
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *paths],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    not_ignored = [line.split("\t")[-1] for line in proc.stdout.splitlines() if line.startswith("::")]
    assert not_ignored == [], not_ignored
    # The package's own data/ folder is code, not output.
    code = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", "megatron_endprompt/data/builder.py"],
        cwd=REPO,
        check=False,
    )
    assert code.returncode == 1
