"""The GPU benchmark's --smoke mode runs every case kind on CPU: the script keeps working between GPU runs. Its
cases in process: tests/unit/test_train_throughput_cases.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_endprompt.model.config import get_preset
from megatron_endprompt.training import flops

REPO = Path(__file__).resolve().parents[2]


def test_benchmark_smoke_runs_every_case(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "train_throughput.py"),
        "--smoke",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    results = {r["case"]["name"]: r for r in data["results"]}
    assert {
        "ep8k_b1",
        "engine_ep8k_b1",
        "full64k_b1_ce",
        "upstream8k_b1",
        "ref_ep8k_b1",
        "ref_ep8k_b8_ce",
    } <= set(results)
    for name, r in results.items():
        assert r["status"] == "ok", (name, r["status"])
        assert r["tokens_per_s"] > 0 and 0 < r["loss"] < 20, (name, r)
    # The FLOPs reported are the documented formula at the PHYSICAL length.
    cfg = get_preset("tiny").replace(max_position_embeddings=256)
    ep = results["ep8k_b1"]
    assert ep["extra"]["flops_per_token"] == flops.flops_per_token(cfg, ep["case"]["seq_length"])
    table = (tmp_path / "results.md").read_text()
    assert "| ep8k_b1 | ours | local |" in table and "| ref_ep8k_b1 | reference | - |" in table
    # Every case of 64K tokens per step is chunked (the full logits do not fit 80 GB), and says so.
    for name in ("full64k_b1_ce", "ref_full64k_b1_ce", "ep8k_b8_ce", "ref_ep8k_b8_ce"):
        assert results[name]["case"]["ce_chunk"] > 0 and "~50 GB" in results[name]["case"]["notes"], name
    assert "Note (full64k_b1_ce, ref_full64k_b1_ce" in table
    rows = {row["target"]: row for row in data["targets"]}
    ratio = rows["EndPrompt positions / contiguous positions (ep8k_b1 / contig8k_b1 step time)"]["value"]
    assert ratio == pytest.approx(results["ep8k_b1"]["step_ms"] / results["contig8k_b1"]["step_ms"], rel=1e-3)
