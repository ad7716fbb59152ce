"""The report of examples/real_model/run.py: tables with each cell's precision, and one plot."""

from __future__ import annotations

import math
from pathlib import Path

MODEL_NOTES = {
    "base": "the converted model, RoPE unchanged (evaluated past its window as it is)",
    "scaling_only": "RoPE scaling T / window, no fine-tuning",
    "contiguous_short": "scaling + fine-tuning on contiguous P-token samples (positions 0..P-1)",
    "endprompt": "scaling + EndPrompt fine-tuning on P-token samples whose positions span up to T",
}


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% by default) of a binomial proportion, in percent."""
    if n == 0:
        return 0.0, 100.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def accuracy_cell(cell: dict | None) -> str:
    """`k/n (lo-hi)`: prompts retrieved out of prompts run, with the Wilson 95% interval in percent."""
    if not cell:
        return "not run"
    if cell.get("unplanned"):
        return "-"
    scores = [r["score"] for r in cell["samples"]]
    k, n = sum(s >= 100 for s in scores), len(scores)
    lo, hi = wilson(k, n)
    return f"{k}/{n} ({lo:.0f}-{hi:.0f}%)"


def ppl_cell(cell: dict | None) -> str:
    if not cell or cell.get("ppl") is None:
        return "not run"
    per_window = cell["tokens"] // max(1, cell["windows"])
    return f"{cell['ppl']:.2f} / {cell['tail_ppl']:.2f} (n={cell['windows']}x{per_window})"


def table(rows: dict[str, dict], lengths: list[int], render) -> list[str]:
    head = "| model | " + " | ".join(f"{n:,}" for n in lengths) + " |"
    lines = [head, "|---|" + "---|" * len(lengths)]
    for model, cells in rows.items():
        lines.append(f"| {model} | " + " | ".join(render(cells.get(str(n))) for n in lengths) + " |")
    return lines


def plot(path: Path, results: dict, cfg, tasks: list[str]) -> None:
    """Accuracy per task and held-out perplexity against the real prompt lengths; base window, P and T marked.
    Panels, axes and saving from `megatron_endprompt.eval.plots`; the K tick labels and the small offset
    between models are this report's."""
    from megatron_endprompt.eval import plots

    fig, axes = plots.panel_grid(len(tasks) + 1, len(tasks) + 1, 5, 4)
    markers = dict(zip(MODEL_NOTES, "osD^", strict=True))
    for ax, task in zip(axes, [*tasks, "perplexity"], strict=True):
        ticks = set()
        for i, (model, by_task) in enumerate(results.items()):
            cells = by_task.get(task, {})
            pts = sorted((int(n), c) for n, c in cells.items() if c)
            if task == "perplexity":
                pts = [(n, c["ppl"]) for n, c in pts if c.get("ppl") is not None]
            else:
                pts = [
                    (n, sum(r["score"] >= 100 for r in c["samples"]) / len(c["samples"]) * 100)
                    for n, c in pts
                ]
            ticks |= {n for n, _ in pts}
            # a small horizontal offset per model keeps overlapping lines apart
            xs = [n * (1 + 0.02 * (i - 1.5)) for n, _ in pts]
            ax.plot(xs, [v for _, v in pts], marker=markers.get(model, "o"), label=model, alpha=0.85)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ticks), [f"{n / 1024:g}K" if n % 1024 == 0 else str(n) for n in sorted(ticks)])
        ax.minorticks_off()
        if task != "perplexity":
            plots.accuracy_axis(ax)
        else:
            plots.perplexity_axis(ax)
        for x, label, style in ((cfg.base_window, "base window", "--"), (cfg.physical_length, "P", ":")):
            ax.axvline(x, color="grey", linestyle=style, linewidth=1)
            ax.text(x, ax.get_ylim()[1], f" {label}", fontsize=8, va="top", color="grey")
        ax.set_title(
            f"{task} (T = {cfg.target_length // 1024}K)" if task != "perplexity" else "held-out perplexity"
        )
        ax.set_xlabel("prompt / window length (tokens)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    plots.save_figure(fig, path)
