"""PNG plots: a length x depth heatmap per needle task, score and perplexity against context length.

Every function takes `runs`, a mapping label -> results dict, so one call can compare base and extended models.
matplotlib is imported lazily with the Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_LINESTYLES = ("-", "--", "-.", ":")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def series_style(index: int, count: int) -> dict:
    """Line style of series `index` of `count`: its own marker and dash pattern, and hollow markers that shrink
    with the index, so lines lying on top of each other (e.g. several models at 100%) stay visible as
    concentric markers."""
    return {
        "marker": _MARKERS[index % len(_MARKERS)],
        "linestyle": _LINESTYLES[index % len(_LINESTYLES)],
        "markersize": 4 + 2.0 * (count - 1 - index) if count <= 6 else 5,
        "markerfacecolor": "none",
        "markeredgewidth": 1.3,
        "linewidth": 1.4,
    }


def length_axis(ax, lengths, window: int | None = None, target: int | None = None, label: str | None = None):
    """A log2 x axis whose ticks are the measured lengths labelled with their real values (not 2^k), with the
    training window and the target length marked by vertical lines that the legend names."""
    from matplotlib.ticker import NullLocator

    lengths = sorted({int(n) for n in lengths})
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths], rotation=45 if len(lengths) > 5 else 0)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(label or "context length (tokens)")
    if window is not None:
        ax.axvline(
            window, color="tab:gray", linestyle=":", linewidth=1.2, label=f"training window ({window})"
        )
    if target is not None:
        ax.axvline(target, color="black", linestyle="--", linewidth=1.0, label=f"target T ({target})")


def depth_heatmap(results: Mapping, task: str, path: str | Path, title: str | None = None) -> Path:
    """Score (0-100) for every (depth, length) cell of one needle task."""
    plt = _pyplot()
    detail = results["depth_detail"][task]
    lengths = [str(n) for n in results["config"]["lengths"] if str(n) in detail]
    depths = sorted({d for by_depth in detail.values() for d in by_depth if d != "all"}, key=float)
    grid = [[detail[n].get(d, float("nan")) for n in lengths] for d in depths]
    fig, ax = plt.subplots(figsize=(3.4 + 1.0 * len(lengths), 2.0 + 0.55 * len(depths)))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), lengths, fontsize=10)
    ax.set_yticks(range(len(depths)), [f"{float(d):.0%}" for d in depths], fontsize=10)
    ax.set_xlabel("context length (tokens)", fontsize=10)
    ax.set_ylabel("needle depth (fraction of the context)", fontsize=10)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            text = "n/a" if value != value else f"{value:.0f}"  # NaN: no prompt at this cell
            ax.text(j, i, text, ha="center", va="center", fontsize=10, fontweight="bold")
    samples = results["config"].get("samples")
    per_cell = f"; {samples} prompts per cell" if samples else ""
    ax.set_title((title or task) + per_cell, fontsize=11)
    fig.colorbar(image, ax=ax, label="score")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def perplexity_plot(
    runs: Mapping[str, Mapping], path: str | Path, window: int | None = None, target: int | None = None
) -> Path | None:
    """Perplexity against context length, one line per run; None when no run measured perplexity. window /
    target: the training window and the target length, marked when given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    lengths: set[int] = set()
    for i, (label, results) in enumerate(runs.items()):
        rows = [
            (int(n), v["ppl"]) for n, v in (results.get("perplexity") or {}).items() if v["ppl"] is not None
        ]
        if rows:
            ax.plot(*zip(*sorted(rows), strict=True), label=label, **series_style(i, len(runs)))
            lengths.update(n for n, _ in rows)
    if not lengths:
        plt.close(fig)
        return None
    length_axis(ax, lengths, window, target)
    ax.set_ylabel("perplexity")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def score_plot(
    runs: Mapping[str, Mapping],
    path: str | Path,
    task: str | None = None,
    window: int | None = None,
    target: int | None = None,
) -> Path | None:
    """Score of one task (or the average, task=None) against context length, one line per run; window / target
    as in `perplexity_plot`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    lengths: set[int] = set()
    for i, (label, results) in enumerate(runs.items()):
        row = results["average"] if task is None else results["results"].get(task, {})
        if row:
            points = sorted((int(n), v) for n, v in row.items())
            ax.plot(*zip(*points, strict=True), label=label, **series_style(i, len(runs)))
            lengths.update(n for n, _ in points)
    if not lengths:
        plt.close(fig)
        return None
    length_axis(ax, lengths, window, target)
    ax.set_ylim(-5, 105)
    ax.set_ylabel(f"{task or 'average'} score")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def write_plots(
    results: Mapping,
    out_dir: str | Path,
    label: str = "model",
    window: int | None = None,
    target: int | None = None,
) -> list[Path]:
    """All plots of one run into out_dir: heatmaps per needle task, average score, perplexity (window / target
    marked when given)."""
    out_dir = Path(out_dir)
    written = []
    for task, detail in results["depth_detail"].items():
        if any(d != "all" for by_depth in detail.values() for d in by_depth):
            written.append(depth_heatmap(results, task, out_dir / f"heatmap_{task}.png"))
    runs = {label: results}
    for made in (
        score_plot(runs, out_dir / "score_vs_length.png", window=window, target=target),
        perplexity_plot(runs, out_dir / "perplexity_vs_length.png", window, target),
    ):
        if made is not None:
            written.append(made)
    return written
