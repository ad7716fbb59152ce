# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures are redefined as arguments)
"""Coverage report: exact against brute-force token pairs (the CLI's table and PNG:
tests/integration/test_build_cli.py)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_endprompt import positions as pos
from megatron_endprompt.data.coverage import bucket_edges, distance_coverage
from tests.fixtures.data_fixtures import corpus_jsonl, corpus_texts, data_dir, sp_model  # noqa: F401


def _brute(samples, t):
    dense = np.zeros(t, dtype=np.int64)
    for segs in samples:
        ids = pos.position_ids(segs)
        for i in range(len(ids) - 1):  # the last query has no target
            np.add.at(dense, ids[i] - ids[: i + 1], 1)
    return dense


@given(st.sampled_from(pos.SCHEMES), st.integers(4, 40), st.integers(2, 30), st.integers(0, 2**31))
@settings(max_examples=40, deadline=None)
def test_matches_brute_force(scheme, p, mult, seed):
    t = p if scheme == "contiguous" else p * mult
    cfg = pos.SchemeConfig(scheme, p, t, terminal_length=3, placement="random", pose_chunks=2)
    rng = np.random.default_rng(seed)
    samples = [cfg.segments(rng, cue_length=2) for _ in range(3)]
    report = distance_coverage(samples, t)
    dense = _brute(samples, t)
    edges = bucket_edges(t)
    np.testing.assert_array_equal(report.pairs, np.add.reduceat(dense, edges[:-1]))
    np.testing.assert_array_equal(report.distinct, np.add.reduceat((dense > 0).astype(int), edges[:-1]))
    assert report.pairs.sum() == sum(p * (p + 1) // 2 - p for _ in samples)


def test_endprompt_covers_long_distances_contiguous_does_not():
    t = 4096
    ep = distance_coverage([pos.endprompt(256, t, 8)], t)
    ct = distance_coverage([pos.contiguous(256)], t)
    assert ep.pairs[-1] > 0 and ct.pairs[-1] == 0
    assert bucket_edges(t).tolist() == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
