"""Evaluation backends at TP=2 and CP=2 match the single-process backend (one 2-rank gloo launch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed._launch import run_two_ranks

WORKER = Path(__file__).with_name("_eval_parallel_worker.py")

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    return run_two_ranks(WORKER, tmp_path_factory.mktemp("eval_parallel"), timeout=240)


@pytest.mark.parametrize("layout", ["tp2_cp1", "tp1_cp2"])
def test_parallel_backend_matches_single_process(results, layout):
    for res in results:
        assert res["generated_something"] and min(res["gen_lengths"]) >= 3  # drafts with several tokens
        assert res[f"{layout}_nll"] < 1e-4
        assert res[f"{layout}_logits"] < 1e-4
        assert res[f"{layout}_gen_equal"]
        assert res[f"{layout}_eval_equal"]
        assert res[f"{layout}_draft_gen_equal"]  # a draft (the right answer) changes no token
        assert res[f"{layout}_eval_nll_equal"]  # with --answer-nll: same generations, same answer NLL
        assert res[f"{layout}_kv_cache"] == (layout == "tp2_cp1")  # the cache at CP = 1; CP = 2 recomputes


def test_tp2_kv_cache_gives_the_recompute_generations_and_nlls(results):
    for res in results:
        assert res["tp2_cache_equals_recompute"]
