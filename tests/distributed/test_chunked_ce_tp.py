"""Chunked vocab-parallel cross entropy at TP=2 (with and without sequence parallelism, tied or not) equals the
unchunked megatron path and a full-vocabulary F.cross_entropy (one 2-rank gloo launch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed._launch import run_two_ranks

WORKER = Path(__file__).with_name("_perf_worker.py")

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    return run_two_ranks(WORKER, tmp_path_factory.mktemp("chunked_ce"), timeout=120)


def test_vocab_parallel_function_matches_full_cross_entropy(results):
    for res in results:
        assert res["fn_loss"] < 1e-6 and res["fn_dx"] < 1e-6 and res["fn_dw"] < 1e-6, res


@pytest.mark.parametrize("tag", ["model_sp0_tied0", "model_sp1_tied1"])
def test_tp2_model_chunked_equals_unchunked(results, tag):
    for res in results:
        assert res[f"{tag}_loss"] < 1e-6 and res[f"{tag}_grads"] < 1e-6, {
            k: v for k, v in res.items() if tag in k
        }
