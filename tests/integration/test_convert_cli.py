# ruff: noqa: F811  (the module-scoped fixture imported from the unit tests is redefined as an argument)
"""tools/convert_checkpoint.py run as a process: a refusal exits 2 with a message naming the flags, without a
traceback, and leaves the input alone. The refusals themselves, in process: tests/unit/test_convert_safety.py
and tests/unit/test_convert_refusals.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.unit.test_convert_safety import _copy, hf_dir  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def _convert(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120
    )


def test_overwrite_refusal_cli_exits_2_naming_both_flags(hf_dir, tmp_path):
    src = _copy(hf_dir, tmp_path / "work" / "model")
    proc = _convert(
        "hf-to-megatron", "--hf-dir", str(src), "--megatron-dir", str(tmp_path / "work"), "--overwrite"
    )
    assert proc.returncode == 2, proc.stderr
    assert "--megatron-dir" in proc.stderr and "--hf-dir" in proc.stderr and "Traceback" not in proc.stderr
    assert (src / "model.safetensors").is_file()


def test_cli_reports_errors_without_a_traceback(hf_dir, tmp_path):
    out = tmp_path / "deep" / "out"
    proc = _convert("hf-to-megatron", "--hf-dir", str(hf_dir), "--megatron-dir", str(out), "--tp", "4")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --tp 4 must divide") and "Traceback" not in proc.stderr
    assert not (tmp_path / "deep").exists()
