"""`make install` passes TORCH_INDEX to pip as an extra index; empty (or unreachable by default) adds nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _env_outside_make() -> dict[str, str]:
    """The environment without an enclosing make's variables (`make test` runs these tests inside make)."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}


def _install_command(*assignments: str) -> str:
    proc = subprocess.run(
        ["make", "--no-print-directory", "-n", "install", "PYTHON=python3", *assignments],
        capture_output=True, text=True, cwd=REPO, check=True, timeout=60, env=_env_outside_make(),
    )  # fmt: skip
    (line,) = proc.stdout.strip().splitlines()
    return line


def test_torch_index_becomes_an_extra_index_url() -> None:
    line = _install_command("TORCH_INDEX=https://mirror.example/whl/cpu")
    assert line.startswith("python3 -m pip install -q torch==2.13.0 ")
    assert "--extra-index-url https://mirror.example/whl/cpu" in line and line.endswith('-e ".[dev]"')


def test_empty_torch_index_leaves_pip_configuration_alone() -> None:
    line = _install_command("TORCH_INDEX=")
    assert "index-url" not in line and line.endswith('-e ".[dev]"')


def test_default_is_the_pytorch_cpu_index_or_nothing() -> None:
    """The default probes https://download.pytorch.org/whl/cpu/: used when it answers, else omitted (offline CI)."""
    line = _install_command()
    assert "index-url" not in line or "--extra-index-url https://download.pytorch.org/whl/cpu/" in line
    makefile = (REPO / "Makefile").read_text()
    assert "TORCH_CPU_INDEX = https://download.pytorch.org/whl/cpu" in makefile
