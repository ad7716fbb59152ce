"""examples/real_model/run.py wired end to end at tiny sizes: a tiny llama GGUF written here (instead of the
SmolLM2 package) goes through convert, the logits check, the /usr/share corpus, both datasets, both fine-tuning
runs, every evaluation cell and the report. The report's Wilson interval and the settings' refusals are unit tests
(tests/unit/test_real_model_settings.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_convert_gguf import write_tiny_gguf

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "real_model"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/common-licenses").is_dir(), reason="needs Debian's /usr/share text")
def test_smoke_run_writes_every_stage_and_the_report(tmp_path):
    pytest.importorskip("gguf", reason="the gguf extra is not installed (pip install '.[gguf]')")
    (tmp_path / "in").mkdir()
    gguf = write_tiny_gguf(tmp_path / "in" / "tiny.gguf")
    out, report = tmp_path / "cache", tmp_path / "report" / "real_model.md"
    cmd = [sys.executable, str(EXAMPLE / "run.py"), "--preset", "smoke", "--gguf-file", str(gguf),
           "--out", str(out), "--report", str(report)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["max_abs_logit_diff"] < 1e-4 and parity["argmax_agreement"] == 1.0
    for name in ("contiguous_short", "endprompt"):
        done = json.loads((out / "runs" / f"{name}.done.json").read_text())
        assert (Path(done["checkpoint"]) / "endprompt_model.json").is_file()
    scaled = json.loads((out / "megatron" / "scaling_only" / "endprompt_model.json").read_text())
    assert scaled["rope_scaling"]["factor"] == 2.0 and scaled["max_position_embeddings"] == 1024
    base = json.loads((out / "megatron" / "base" / "endprompt_model.json").read_text())
    assert base["max_position_embeddings"] == 512 and base["rope_scaling"]["type"] == "none"
    text = report.read_text()
    # every model has a passkey cell at 700 tokens (past the 512 window), with its count and interval
    for model in ("base", "scaling_only", "contiguous_short", "endprompt"):
        assert re.search(rf"\| {model} \|.*\| [01]/1 \(\d+-\d+%\) \|", text), text
    assert report.with_suffix(".png").is_file()
    # a rerun reads every stage back: nothing is trained or evaluated again
    stamp = (out / "eval" / "endprompt" / "passkey_700.json").stat().st_mtime
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "eval" / "endprompt" / "passkey_700.json").stat().st_mtime == stamp
    assert "megatron_endprompt.train" not in again.stderr
