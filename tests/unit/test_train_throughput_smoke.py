"""The GPU benchmark's --smoke mode runs every case kind on CPU: the script keeps working between GPU runs."""

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
    assert {"ep8k_b1", "engine_ep8k_b1", "full64k_b1", "upstream8k_b1", "ref_ep8k_b1"} <= set(results)
    for name, r in results.items():
        assert r["status"] == "ok", (name, r["status"])
        assert r["tokens_per_s"] > 0 and 0 < r["loss"] < 20, (name, r)
    # The FLOPs reported are the documented formula at the PHYSICAL length.
    cfg = get_preset("tiny").replace(max_position_embeddings=256)
    ep = results["ep8k_b1"]
    assert ep["extra"]["flops_per_token"] == flops.flops_per_token(cfg, ep["case"]["seq_length"])
    assert "| ep8k_b1 | ours |" in (tmp_path / "results.md").read_text()
    # The chunked cross-entropy cases run on CPU too, and the targets table is computed from the cases.
    assert results["ep8k_b1_ce"]["case"]["ce_chunk"] > 0 and results["full64k_b1_ce"]["status"] == "ok"
    rows = {row["target"]: row for row in data["targets"]}
    ratio = rows["EndPrompt positions / contiguous positions (ep8k_b1 / contig8k_b1 step time)"]["value"]
    assert ratio == pytest.approx(results["ep8k_b1"]["step_ms"] / results["contig8k_b1"]["step_ms"], rel=1e-3)


class KernelCompileError(Exception):
    """Stands in for triton's CompilationError: an Exception that is neither RuntimeError nor ValueError."""


def test_any_exception_fails_only_its_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from benchmarks import train_throughput as tt

    real_build = tt.build

    def build(impl, cfg, dtype, device, use_te, case=None):
        if case is not None and case.name == "broken":
            raise KernelCompileError("at 3:4: unsupported layout\n(traceback of the kernel)")
        return real_build(impl, cfg, dtype, device, use_te, case)

    monkeypatch.setattr(tt, "build", build)
    cfg = get_preset("tiny").replace(max_position_embeddings=64)
    args = tt.parse_args(["--out", str(tmp_path), "--steps", "1", "--warmup", "0", "--dtype", "fp32"])
    device = torch.device("cpu")
    cases = [tt.Case("broken", "reference", 16, 1), tt.Case("after", "reference", 16, 1)]
    results = tt.run_cases(cases, cfg, args, device, tt._meta(args, cfg, device))
    assert [r.status for r in results] == ["error: KernelCompileError: at 3:4: unsupported layout", "ok"]
    written = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [r["status"] for r in written] == [r.status for r in results]
