"""Markdown tables from results dicts (one model, or several side by side)."""

from __future__ import annotations

from collections.abc import Mapping


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _lengths(results: Mapping) -> list[str]:
    return [str(n) for n in results["config"]["lengths"]]


def score_table(results: Mapping) -> str:
    """Tasks as rows, lengths as columns, plus the per-length average."""
    lengths = _lengths(results)
    lines = ["| task | " + " | ".join(lengths) + " |", "|---|" + "---:|" * len(lengths)]
    for task, by_len in results["results"].items():
        lines.append(f"| {task} | " + " | ".join(_fmt(by_len.get(n)) for n in lengths) + " |")
    if results["results"]:
        lines.append("| **average** | " + " | ".join(_fmt(results["average"].get(n)) for n in lengths) + " |")
    return "\n".join(lines)


def depth_table(results: Mapping, task: str) -> str:
    """Depths as rows, lengths as columns, for one needle task."""
    lengths = _lengths(results)
    detail = results["depth_detail"][task]
    depths = sorted({d for by_depth in detail.values() for d in by_depth}, key=lambda d: (d == "all", d))
    lines = ["| depth | " + " | ".join(lengths) + " |", "|---|" + "---:|" * len(lengths)]
    for depth in depths:
        lines.append(f"| {depth} | " + " | ".join(_fmt(detail.get(n, {}).get(depth)) for n in lengths) + " |")
    return "\n".join(lines)


def perplexity_table(results: Mapping) -> str:
    """Perplexity (whole window and last quarter) per length."""
    ppl = results.get("perplexity") or {}
    lines = ["| length | ppl | tail ppl (last 25%) | windows |", "|---:|---:|---:|---:|"]
    for n, row in ppl.items():
        lines.append(f"| {n} | {_fmt(row['ppl'], 2)} | {_fmt(row['tail_ppl'], 2)} | {row['windows']} |")
    return "\n".join(lines)


def markdown_report(results: Mapping, title: str = "Long-context evaluation") -> str:
    """The full report of one run: scores, per-depth tables, perplexity, configuration."""
    cfg = results["config"]
    parts = [f"# {title}", "", f"Model: `{cfg['backend']}`; tokenizer: `{cfg['tokenizer']}`; "
             f"samples per cell: {cfg['samples']}; seed: {cfg['seed']}. Scores are RULER string match (0-100).", ""]  # fmt: skip
    if results["results"]:
        parts += ["## Scores by context length", "", score_table(results), ""]
    for task, detail in results["depth_detail"].items():
        if any(d != "all" for by_depth in detail.values() for d in by_depth):
            parts += [f"## {task}: score by needle depth", "", depth_table(results, task), ""]
    if results.get("perplexity"):
        parts += ["## Perplexity by context length", "", perplexity_table(results), ""]
    return "\n".join(parts)


def comparison_table(runs: Mapping[str, Mapping], task: str | None = None) -> str:
    """Models as rows, lengths as columns: one task's score, the average (task=None), or `perplexity`."""
    lengths = sorted({n for r in runs.values() for n in _lengths(r)}, key=int)
    lines = ["| model | " + " | ".join(lengths) + " |", "|---|" + "---:|" * len(lengths)]
    for label, r in runs.items():
        if task == "perplexity":
            row = {n: v["ppl"] for n, v in (r.get("perplexity") or {}).items()}
            cells = [_fmt(row.get(n), 2) for n in lengths]
        else:
            row = r["average"] if task is None else r["results"].get(task, {})
            cells = [_fmt(row.get(n)) for n in lengths]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
