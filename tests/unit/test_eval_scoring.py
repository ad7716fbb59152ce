"""RULER string-match scoring: exact, wrong and partial answers, and RULER's task-to-metric assignment."""

import pytest

from megatron_endprompt.eval.scoring import (
    metric_name,
    postprocess_prediction,
    score_sample,
    string_match_all,
    string_match_part,
)


def test_known_answers_score_100_and_wrong_ones_0():
    refs = [["7391042"], ["lucky-otter", "1234567"]]
    assert string_match_all(["The number is 7391042.", "lucky-otter 1234567"], refs) == 100.0
    assert string_match_part(["The number is 7391042.", "lucky-otter 1234567"], refs) == 100.0
    assert string_match_all(["no idea", "nothing"], refs) == 0.0
    assert string_match_part(["no idea", "nothing"], refs) == 0.0


def test_partial_matches_follow_ruler_definitions():
    refs = [["a1", "b2", "c3", "d4"], ["x"]]
    preds = ["A1 and C3", "y"]
    # all: mean over samples of the fraction found -> (2/4 + 0) / 2 = 25
    assert string_match_all(preds, refs) == pytest.approx(25.0)
    # part: mean over samples of any-found -> (1 + 0) / 2 = 50
    assert string_match_part(preds, refs) == pytest.approx(50.0)


def test_match_is_case_insensitive_substring():
    assert string_match_all(["ANSWER: LUCKY-OTTER"], [["lucky-otter"]]) == 100.0
    assert string_match_all(["12345"], [["1234"]]) == 100.0  # substring, as RULER defines it
    assert string_match_all(["123"], [["1234"]]) == 0.0


def test_task_metric_assignment_matches_ruler():
    for task in (
        "niah_single_1",
        "niah_multikey_3",
        "niah_multivalue",
        "vt",
        "ruler_vt",
        "cwe",
        "fwe",
        "passkey",
    ):
        assert metric_name(task) == "string_match_all"
    for task in ("qa_squad", "qa_hotpot", "ruler_qa_squad"):
        assert metric_name(task) == "string_match_part"
    with pytest.raises(ValueError, match="--tasks"):
        metric_name("summarise")


def test_score_sample_postprocesses_like_ruler():
    assert postprocess_prediction("  12\x0034\t ") == "12\n34"
    # control characters become newlines, so a reference spanning them is not found
    assert score_sample("niah_single_1", " 12\x0034 ", ["1234"]) == 0.0
    assert score_sample("vt", "AAAAA BBBBB", ["AAAAA", "BBBBB", "CCCCC", "DDDDD"]) == pytest.approx(50.0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        string_match_all(["a"], [["a"], ["b"]])
    with pytest.raises(TypeError):
        string_match_all("a", [["a"]])
    with pytest.raises(ValueError):
        string_match_all([], [])
