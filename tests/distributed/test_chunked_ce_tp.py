"""Chunked vocab-parallel cross entropy at TP=2 (with and without sequence parallelism, tied or not) equals the
unchunked megatron path and a full-vocabulary F.cross_entropy (one 2-rank gloo launch)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_perf_worker.py")

pytestmark = pytest.mark.distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("chunked_ce")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), str(WORKER), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(ranks):
        assert "error" not in res, f"rank {r}:\n{res['error']}"
    return ranks


def test_vocab_parallel_function_matches_full_cross_entropy(results):
    for res in results:
        assert res["fn_loss"] < 1e-6 and res["fn_dx"] < 1e-6 and res["fn_dw"] < 1e-6, res


@pytest.mark.parametrize("tag", ["model_sp0_tied0", "model_sp1_tied1"])
def test_tp2_model_chunked_equals_unchunked(results, tag):
    for res in results:
        assert res[f"{tag}_loss"] < 1e-6 and res[f"{tag}_grads"] < 1e-6, {
            k: v for k, v in res.items() if tag in k
        }
