"""PNG plots: a length x depth heatmap per needle task, score and perplexity against context length.

Every function takes `runs`, a mapping label -> results dict, so one call can compare base and extended models.
matplotlib is imported lazily with the Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def depth_heatmap(results: Mapping, task: str, path: str | Path, title: str | None = None) -> Path:
    """Score (0-100) for every (depth, length) cell of one needle task."""
    plt = _pyplot()
    detail = results["depth_detail"][task]
    lengths = [str(n) for n in results["config"]["lengths"] if str(n) in detail]
    depths = sorted({d for by_depth in detail.values() for d in by_depth if d != "all"}, key=float)
    grid = [[detail[n].get(d, float("nan")) for n in lengths] for d in depths]
    fig, ax = plt.subplots(figsize=(2.8 + 0.9 * len(lengths), 1.6 + 0.45 * len(depths)))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), lengths)
    ax.set_yticks(range(len(depths)), [f"{float(d):.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8)
    ax.set_title(title or task)
    fig.colorbar(image, ax=ax, label="score")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def perplexity_plot(runs: Mapping[str, Mapping], path: str | Path) -> Path | None:
    """Perplexity against context length, one line per run; None when no run measured perplexity."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    drawn = False
    for label, results in runs.items():
        rows = [
            (int(n), v["ppl"]) for n, v in (results.get("perplexity") or {}).items() if v["ppl"] is not None
        ]
        if rows:
            ax.plot(*zip(*sorted(rows), strict=True), marker="o", label=label)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def score_plot(runs: Mapping[str, Mapping], path: str | Path, task: str | None = None) -> Path | None:
    """Score of one task (or the average, task=None) against context length, one line per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    drawn = False
    for label, results in runs.items():
        row = results["average"] if task is None else results["results"].get(task, {})
        if row:
            ax.plot(*zip(*sorted((int(n), v) for n, v in row.items()), strict=True), marker="o", label=label)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log", base=2)
    ax.set_ylim(-5, 105)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(f"{task or 'average'} score")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def write_plots(results: Mapping, out_dir: str | Path, label: str = "model") -> list[Path]:
    """All plots of one run into out_dir: heatmaps per needle task, average score, perplexity."""
    out_dir = Path(out_dir)
    written = []
    for task, detail in results["depth_detail"].items():
        if any(d != "all" for by_depth in detail.values() for d in by_depth):
            written.append(depth_heatmap(results, task, out_dir / f"heatmap_{task}.png"))
    for made in (score_plot({label: results}, out_dir / "score_vs_length.png"),
                 perplexity_plot({label: results}, out_dir / "perplexity_vs_length.png")):  # fmt: skip
        if made is not None:
            written.append(made)
    return written
