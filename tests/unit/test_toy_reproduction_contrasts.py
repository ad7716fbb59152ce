"""The toy report's pre-registered contrasts: exact t statistics on hand-computed examples, Holm's correction,
the primary metrics (answer NLL over depths < 1, perplexity at T) and the verdict lines; the settings that feed
them (contrasts, EP_1 cue set, released-code tail variant, generic-corpus control)."""

import math

import pytest


@pytest.fixture(scope="module")
def stats(toy):
    import toy_contrasts

    return toy_contrasts


def test_paired_t_on_hand_computed_examples(stats) -> None:
    # diffs 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t = 3.464 on 2 df; p = 1 - sin(atan(t / sqrt 2)) = 0.0742;
    # t_0.975(2) = 4.303, so the interval is 2 -+ 4.303 / sqrt(3) = [-0.484, 4.484]
    r = stats.paired_t([1.0, 2.0, 3.0])
    assert r["mean"] == 2.0 and r["p"] == pytest.approx(0.07418, abs=1e-5)
    assert (r["low"], r["high"]) == (pytest.approx(-0.48414, abs=1e-5), pytest.approx(4.48414, abs=1e-5))
    # diffs 1, 3: t = 2 on 1 df (Cauchy): p = 1 - 2 atan(2) / pi = 0.29517; t_0.975(1) = 12.706
    r = stats.paired_t([1.0, 3.0])
    assert r["p"] == pytest.approx(1 - 2 * math.atan(2) / math.pi, abs=1e-9)
    assert r["high"] - r["mean"] == pytest.approx(12.7062, abs=1e-3)
    assert stats.t_quantile_two_sided(0.05, 4) == pytest.approx(2.7764, abs=1e-4)
    assert stats.paired_t([0.5] * 5)["p"] == 0.0 and stats.paired_t([0.0] * 5)["p"] == 1.0
    with pytest.raises(ValueError, match=">= 2 seeds"):
        stats.paired_t([1.0])


def test_t_distribution_equals_scipys(stats) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in range(1, 15):
        for t in (0.05, 0.9, 2.1, 3.7, 11.0):
            assert stats.t_two_sided_p(t, df) == pytest.approx(2 * scipy_stats.t.sf(t, df), abs=1e-10)


def test_holm_steps_down_and_stays_monotone(stats) -> None:
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]


def _eval(far: float, local: float, ppl: float, length: str = "2032") -> dict:
    depths = {"0": far - 0.1, "0.5": far + 0.1, "1": local}
    return {
        "answer_nll_depth": {"passkey": {length: depths}, "niah_single_1": {length: depths}},
        "perplexity": {length: {"ppl": ppl, "tail_ppl": ppl}},
    }


def _results(toy, seeds: int = 5) -> dict:
    import dataclasses

    cfg = dataclasses.asdict(
        toy.load_toy_config(None, [f"seeds={list(range(seeds))}", "eval_lengths=[256,2032]"])
    )
    noise = [0.0, 0.1, -0.05, 0.08, -0.02][:seeds]
    rows = {
        "contiguous_short": [_eval(2.0 + e, 0.1, 2.30 + e / 10) for e in noise],
        "endprompt": [_eval(1.5 + e + 0.01 * i, 9.0, 2.30 + e / 10 + 0.001 * i) for i, e in enumerate(noise)],
        "endprompt_tail_fixed": [
            _eval(2.0 + e + (0.05 if i % 2 else -0.05), 0.1, 2.3) for i, e in enumerate(noise)
        ],
        "endprompt_tail_document": [_eval(2.0 + e, 0.1, 2.3) for e in noise],
        "pose": [_eval(1.9 + e, 0.1, 2.3) for e in noise],
    }
    return {"config": cfg, "rows": {k: {"evals": v} for k, v in rows.items()}}


def test_contrasts_pair_seeds_leave_depth_one_apart_and_correct_within_each_metric(toy, stats) -> None:
    entries = stats.contrast_stats(_results(toy))
    assert [(e["metric"], e["variant"], e["reference"]) for e in entries[:4]] == [
        ("answer NLL", "endprompt", "contiguous_short"),
        ("answer NLL", "endprompt_tail_fixed", "contiguous_short"),
        ("answer NLL", "endprompt_tail_document", "contiguous_short"),
        ("answer NLL", "endprompt", "pose"),
    ]
    first = entries[0]  # depth 1.0 (9.0 against 0.1) would make endprompt far worse if it were counted
    assert first["diffs"] == pytest.approx([-0.5, -0.49, -0.48, -0.47, -0.46])
    assert first["mean"] == pytest.approx(-0.48) and first["p"] < 1e-6
    family = [e["p"] for e in entries[:4]]
    assert [e["p_holm"] for e in entries[:4]] == pytest.approx(stats.holm(family))
    assert stats.verdict(first) == "supported at 5%: endprompt lower (better)"
    assert stats.verdict(entries[1]) == "not supported at 5%"  # +-0.05 alternating: mean 0.01
    assert entries[2]["p"] == 1.0 and stats.verdict(entries[2]) == "not supported at 5%"
    ppl = [e for e in entries if e["metric"] == "perplexity"]
    assert len(ppl) == 4 and ppl[0]["mean"] == pytest.approx(0.002)


def test_report_prints_one_verdict_line_per_contrast_and_metric(toy, report) -> None:
    results = _results(toy)
    meta = {"command": "python run.py", "date": "2026-12-05", "hardware": "cpu", "wall_minutes": 1.0}
    for row in results["rows"].values():
        row.update(seconds=[1.0] * 5, physical_length=256, flops=1e11)
        for e in row["evals"]:
            e.update(results={}, answer_nll={}, depth_detail={}, elapsed_s=1.0)
            e["perplexity"]["256"] = {"ppl": 2.0, "tail_ppl": 2.0}
    results["rows"] = {"base": {**results["rows"]["contiguous_short"], "evals": results["rows"]["pose"]["evals"][:1]},
                       **results["rows"]}  # fmt: skip
    results["config"]["eval_tasks"] = ["perplexity"]
    text = report.markdown(results, meta)
    verdicts = [line for line in text.splitlines() if line.startswith("- **")]
    assert len(verdicts) == 8 and all("supported at 5%" in line for line in verdicts)
    assert "- **endprompt vs contiguous_short**, answer NLL: -0.480 [" in text
    assert "| endprompt | 1.542 | 9.000 |" in text  # far needles apart from local retrieval
    assert (
        "Cue set of `endprompt` / `endprompt_pose`: 'This is the end of text, please pay attention here'."
        in text
    )


def test_settings_register_at_most_four_contrasts_of_run_variants(toy) -> None:
    import toy_config

    with pytest.raises(ValueError, match="contrasts: at most 4"):
        toy.load_toy_config(None, ["contrasts=[[pose,endprompt]" + ",[endprompt,pose]" * 4 + "]"])
    with pytest.raises(
        ValueError, match=r"contrasts: \['pose', 'full_length'\] needs \['full_length'\] in variants"
    ):
        toy.load_toy_config(None, ["contrasts=[[pose,full_length]]"])
    with pytest.raises(ValueError, match="extend_corpus: one of"):
        toy.load_toy_config(None, ["extend_corpus=books"])
    cfg = toy.load_toy_config(None, [])
    assert len(cfg.seeds) >= 5 and len(cfg.contrasts) == 4
    schemes = toy.schemes(cfg)
    assert schemes["endprompt"][1] == [toy_config.EP_1] == schemes["endprompt_pose"][1]
    tail = schemes["endprompt_tail_document"][0]
    assert (tail.scheme, tail.tail_source, tail.placement) == ("endprompt-tail", "document", "fixed")
    generic = toy.load_toy_config(None, ["extend_corpus=generic"])
    assert generic.run_suffix == "_generic" and cfg.run_suffix == ""
    assert (
        toy.Unit("pose", 3, generic.run_suffix).label == "pose_generic_s3"
        and toy.Unit("base", 0).label == "base"
    )
    assert toy.results_path(toy.Path("/o"), generic).name == "results_generic.json"


def test_answer_nll_is_kept_per_depth(toy) -> None:
    records = [
        {"task": "passkey", "length": 2032, "depth": 0.0, "answer_nll": 1.0},
        {"task": "passkey", "length": 2032, "depth": 0.0, "answer_nll": 3.0},
        {"task": "passkey", "length": 2032, "depth": 1.0, "answer_nll": 0.5},
        {"task": "passkey", "length": 2032, "depth": 0.5, "answer_nll": None},
    ]
    assert toy.answer_nll_by_depth(records) == {"passkey": {"2032": {"0": 2.0, "1": 0.5}}}
