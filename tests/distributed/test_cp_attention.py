"""Context-parallel attention and pipeline (incl. interleaved) position plumbing on 2 gloo ranks (one launch)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_model_core_worker.py")

pytestmark = pytest.mark.distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("model_core")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), str(WORKER), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(ranks):
        assert "error" not in res, f"rank {r}:\n{res['error']}"
    return ranks


@pytest.mark.parametrize("check", ["forward", "grad_q", "grad_k", "grad_v"])
def test_cp_attention_matches_single_rank(results, check):
    for res in results:
        assert res[f"cp_attention_{check}"] < 1e-5


def test_cp_model_matches_single_rank(results):
    for res in results:
        assert res["cp_model_loss"] < 1e-5
        assert res["cp_model_grads"] < 1e-5


@pytest.mark.parametrize("name", ["pp_loss", "pp_vp2_loss"], ids=["1f1b", "interleaved-vp2"])
def test_pp_stages_get_positions(results, name):
    assert len(results[1]) and results[1][name] < 1e-5  # rank 1 is the last stage
