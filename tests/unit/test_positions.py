"""Position schemes: exact constructions from METHOD.md, invariants over random settings, and flag-naming errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_endprompt import positions as pos
from megatron_endprompt.positions import SchemeConfig, Segment

FAST = settings(max_examples=60, deadline=None)


@st.composite
def p_t(draw, min_p=2):
    p = draw(st.integers(min_p, 300))
    t = draw(st.integers(p + 1, 20 * p + 5))
    return p, t


def released_tail_position_ids(current_length: int, chunk2_length: int, final_pos_id: int) -> list[int]:
    """The released code's `preprocess_fixed_split_pose` construction, restated from its description."""
    split_index = current_length - chunk2_length
    start = final_pos_id - chunk2_length + 1
    return list(range(split_index)) + list(range(start, final_pos_id + 1))


def test_contiguous():
    segs = pos.contiguous(7)
    assert segs == [Segment(7, 0, "text")]
    np.testing.assert_array_equal(pos.position_ids(segs), np.arange(7))
    np.testing.assert_array_equal(pos.loss_weights(segs, 0.3), [1, 1, 1, 1, 1, 1, 0])


def test_endprompt_paper_mapping():
    # eq. 5: p_l = l for l < a; T - b + (l - a) for a <= l < a + b
    p, t, b = 10, 100, 3
    ids = pos.position_ids(pos.endprompt(p, t, b))
    a = p - b
    expected = [lpos if lpos < a else t - b + (lpos - a) for lpos in range(p)]
    np.testing.assert_array_equal(ids, expected)
    w = pos.loss_weights(pos.endprompt(p, t, b), 0.25)
    # predictions l = 0..a-2 target text; l = a-1 (the jump) .. P-2 target cue tokens; P-1 has no target
    np.testing.assert_allclose(w, [1] * (a - 1) + [0.25] * b + [0])
    assert w.dtype == np.float32


@given(p_t(min_p=3), st.data())
@FAST
def test_tail_fixed_equals_released_code(pt, data):
    p, t = pt
    k = data.draw(st.integers(1, p - 1))
    ids = pos.position_ids(pos.endprompt_tail(p, t, k, "fixed"))
    assert ids.tolist() == released_tail_position_ids(p, k, t - 1)
    assert np.all(pos.loss_weights(pos.endprompt_tail(p, t, k), 0.0)[:-1] == 1.0)  # all text


@given(p_t(min_p=3), st.data(), st.integers(0, 2**32 - 1))
@FAST
def test_tail_random_placement(pt, data, seed):
    p, t = pt
    k = data.draw(st.integers(1, p - 1))
    segs = pos.endprompt_tail(p, t, k, "random", np.random.default_rng(seed))
    head, tail = segs
    assert head == Segment(p - k, 0, "text") and tail.length == k and tail.role == "text"
    assert p - k <= tail.first_position <= t - k


def _check_pose_text(segs, p_text, t, p, n):
    assert len(segs) == n and sum(s.length for s in segs) == p_text
    biases, start = [], 0
    for s in segs:
        assert s.role == "text" and s.length >= 1
        biases.append(s.first_position - start)
        start += s.length
    assert biases[0] == 0
    assert all(0 <= u <= t - p for u in biases)
    assert biases == sorted(biases)  # nondecreasing skip biases
    return biases


@given(p_t(min_p=2), st.data(), st.integers(0, 2**32 - 1))
@FAST
def test_pose_invariants(pt, data, seed):
    p, t = pt
    n = data.draw(st.integers(1, min(p, 6)))
    segs = pos.pose(p, t, n, np.random.default_rng(seed))
    _check_pose_text(segs, p, t, p, n)
    ids = pos.position_ids(segs)
    assert np.all(np.diff(ids) >= 1) and ids[-1] < t
    if n == 2:
        assert 1 <= segs[0].length <= (p + 1) // 2  # released rule r1 ~ U[1, (P+1)/2]


@given(p_t(min_p=3), st.data(), st.integers(0, 2**32 - 1))
@FAST
def test_endprompt_pose_invariants(pt, data, seed):
    p, t = pt
    b = data.draw(st.integers(1, p - 1))
    n = data.draw(st.integers(1, min(p - b, 5)))
    segs = pos.endprompt_pose(p, t, b, n, np.random.default_rng(seed))
    assert segs[-1] == Segment(b, t - b, "cue")
    _check_pose_text(segs[:-1], p - b, t, p, n)
    ids = pos.position_ids(segs)
    assert np.all(np.diff(ids) >= 1) and ids[-1] == t - 1


def test_pose_biases_cover_full_range():
    """Over many seeds the second chunk's bias reaches both ends of [0, T-P] (it is sampled, not fixed)."""
    p, t = 8, 12
    seen = {
        pos.pose(p, t, 2, np.random.default_rng(s))[1].first_position
        - pos.pose(p, t, 2, np.random.default_rng(s))[0].length
        for s in range(200)
    }
    assert seen == set(range(t - p + 1))


@pytest.mark.parametrize(
    "call, flag",
    [
        (lambda: pos.endprompt(8, 8, 2), "--target-length"),
        (lambda: pos.endprompt(8, 100, 8), "--cue"),
        (lambda: pos.endprompt_tail(8, 100, 8), "--terminal-length"),
        (lambda: pos.endprompt_tail(8, 100, 0), "--terminal-length"),
        (lambda: pos.endprompt_tail(8, 100, 2, "middle"), "--placement"),
        (lambda: pos.pose(8, 7, 2, np.random.default_rng(0)), "--target-length"),
        (lambda: pos.pose(8, 100, 9, np.random.default_rng(0)), "--pose-chunks"),
        (lambda: pos.endprompt_pose(8, 100, 4, 5, np.random.default_rng(0)), "--pose-chunks"),
        (lambda: pos.contiguous(1), "--seq-length"),
        (lambda: pos.validate("endprompt", 8, 100), "--cue"),
        (lambda: pos.validate("bogus", 8, 100), "--scheme"),
        (lambda: pos.validate("contiguous", 8, 4), "--target-length"),
        (lambda: pos.loss_weights(pos.contiguous(4), -1.0), "--cue-loss-weight"),
    ],
)
def test_errors_name_the_flag(call, flag):
    with pytest.raises(ValueError, match=flag):
        call()


@given(st.sampled_from(pos.SCHEMES), p_t(min_p=6), st.integers(0, 2**32 - 1))
@FAST
def test_scheme_config_dispatch(scheme, pt, seed):
    p, t = pt
    cfg = SchemeConfig(scheme, p, t, terminal_length=2, placement="random", pose_chunks=3)
    cfg.validate(max_cue_length=2 if cfg.uses_cue else None)
    segs = cfg.segments(np.random.default_rng(seed), cue_length=2)
    assert sum(s.length for s in segs) == p
    assert len(segs) <= cfg.max_segments()
    assert pos.max_position(segs) < t
