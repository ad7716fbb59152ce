"""Context-parallel attention and pipeline (incl. interleaved) position plumbing on 2 gloo ranks (one launch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed._launch import run_two_ranks

WORKER = Path(__file__).with_name("_model_core_worker.py")

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    return run_two_ranks(WORKER, tmp_path_factory.mktemp("model_core"), timeout=180)


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
