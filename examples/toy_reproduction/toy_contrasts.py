"""The toy reproduction's pre-registered contrasts (toy_config.CONTRASTS): paired differences over seeds with
95% t-intervals, Holm-corrected paired t-test p-values and one verdict line per contrast.

Primary metrics (issue 20), both at T (the longest eval length), lower is better:
- answer NLL: the teacher-forced NLL per token of the right answer, mean over the needle tasks (passkey, NIAH) and
  the depths below 1.0. A needle at depth 1.0 sits next to the question: local retrieval, reported apart.
- perplexity of held-out text at T.
Each metric is one Holm family over the contrasts. Accuracy is secondary (all-or-nothing per prompt, dominated by
the seed). The t distribution is computed exactly for integer degrees of freedom (no scipy needed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

NEEDLE_TASKS = ("passkey", "niah_single_1")
LOCAL_DEPTH = "1"
"""depth_key(1.0): the needle next to the question."""


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with integer df >= 1 (Abramowitz & Stegun 26.7.3/26.7.4, exact)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if math.isinf(t):
        return 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(2, df, 2):  # (1*3*...*(k-1)) / (2*4*...*k) cos^k
            term *= c2 * (k - 1) / k
            total += term
        inside = s * total
    else:
        term, total = math.cos(theta), 0.0
        if df > 1:
            total = term
            for k in range(3, df - 1, 2):  # (2*4*...*(k-1)) / (1*3*...*k) cos^k
                term *= c2 * (k - 1) / k
                total += term
        inside = 2 / math.pi * (theta + s * total) if df > 1 else 2 * theta / math.pi
    return min(1.0, max(0.0, 1.0 - inside))


def t_quantile_two_sided(alpha: float, df: int) -> float:
    """The t with P(|T| >= t) = alpha (e.g. alpha 0.05, df 4: 2.776), by bisection on `t_two_sided_p`."""
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > alpha:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > alpha else (lo, mid)
    return (lo + hi) / 2


def paired_t(diffs: Sequence[float], level: float = 0.95) -> dict:
    """Mean paired difference, its `level` t-interval and the two-sided paired t-test p-value (n >= 2)."""
    n = len(diffs)
    if n < 2:
        raise ValueError(f"a paired t-test needs >= 2 seeds, got {n}")
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    half = t_quantile_two_sided(1 - level, n - 1) * se
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = t_two_sided_p(mean / se, n - 1)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half, "p": p}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down; monotone, capped at 1), in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def answer_nll(evaluation: dict, length: str, local: bool = False) -> float | None:
    """Mean answer NLL at `length` over the needle tasks and the depths < 1 (or depth 1 alone, `local`)."""
    per_task = []
    for task, by_length in evaluation.get("answer_nll_depth", {}).items():
        if task not in NEEDLE_TASKS or length not in by_length:
            continue
        cells = [v for d, v in by_length[length].items() if (d == LOCAL_DEPTH) == local]
        if cells:
            per_task.append(sum(cells) / len(cells))
    return sum(per_task) / len(per_task) if per_task else None


def perplexity(evaluation: dict, length: str) -> float | None:
    return evaluation.get("perplexity", {}).get(length, {}).get("ppl")


METRICS = {"answer NLL": answer_nll, "perplexity": perplexity}


def contrast_stats(results: dict) -> list[dict]:
    """Per (contrast, metric): the per-seed differences, `paired_t` and the Holm p within the metric's family."""
    cfg, rows = results["config"], results["rows"]
    length = str(max(cfg["eval_lengths"]))
    out = []
    for metric, value in METRICS.items():
        family = []
        for variant, reference in cfg.get("contrasts", []):
            if variant not in rows or reference not in rows:
                continue
            a = [value(e, length) for e in rows[variant]["evals"]]
            b = [value(e, length) for e in rows[reference]["evals"]]
            if None in a or None in b or len(a) != len(b) or len(a) < 2:
                continue
            diffs = [x - y for x, y in zip(a, b, strict=True)]
            family.append({"metric": metric, "variant": variant, "reference": reference, "diffs": diffs,
                           **paired_t(diffs)})  # fmt: skip
        for entry, p in zip(family, holm([e["p"] for e in family]), strict=True):
            entry["p_holm"] = p
        out += family
    return out


def verdict(entry: dict, alpha: float = 0.05) -> str:
    if entry["p_holm"] >= alpha:
        return "not supported at 5%"
    better = "lower (better)" if entry["mean"] < 0 else "higher (worse)"
    return f"supported at 5%: {entry['variant']} {better}"


def contrast_section(results: dict) -> list[str]:
    """Markdown: the pre-registered contrasts, one verdict line per contrast and metric, then their table."""
    cfg = results["config"]
    entries = contrast_stats(results)
    if not entries:
        return []
    n = str(max(cfg["eval_lengths"]))
    lines = [
        f"## Pre-registered contrasts at {n} tokens (paired over seeds {cfg['seeds']})",
        "",
        f"Primary metrics, lower is better: answer NLL (nats per answer token, mean over {', '.join(NEEDLE_TASKS)} "
        "and the needle depths below 1.0) and held-out perplexity. Difference = variant minus reference, per seed "
        "(same seed: same training documents in the same order and the same eval prompts); 95% t-interval; "
        "two-sided paired t-test, Holm-corrected within each metric over the contrasts.",
        "",
    ]
    for e in entries:
        lines.append(
            f"- **{e['variant']} vs {e['reference']}**, {e['metric']}: {e['mean']:+.3f} "
            f"[{e['low']:+.3f}, {e['high']:+.3f}], p = {e['p']:.3f}, Holm p = {e['p_holm']:.3f}: {verdict(e)}"
        )
    lines += ["", "| contrast | metric | per-seed differences |", "|---|---|---|"]
    for e in entries:
        diffs = " / ".join(f"{d:+.3f}" for d in e["diffs"])
        lines.append(f"| {e['variant']} - {e['reference']} | {e['metric']} | {diffs} |")
    return [*lines, ""]


def local_retrieval_section(results: dict) -> list[str]:
    """Answer NLL and accuracy at depth 1.0 (needle next to the question), apart from the primary metric."""
    cfg, rows = results["config"], results["rows"]
    n = str(max(cfg["eval_lengths"]))
    lines = [
        f"## Answer NLL at {n} tokens: far needles (depths < 1) and local retrieval (depth 1.0)",
        "",
        "| variant | depths < 1 | depth 1.0 (local) |",
        "|---|---:|---:|",
    ]
    found = False
    for name, row in rows.items():
        far = [answer_nll(e, n) for e in row["evals"]]
        near = [answer_nll(e, n, local=True) for e in row["evals"]]
        if None in far or None in near:
            continue
        found = True
        lines.append(f"| {name} | {sum(far) / len(far):.3f} | {sum(near) / len(near):.3f} |")
    return [*lines, ""] if found else []
