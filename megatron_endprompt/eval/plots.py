"""PNG plots: a length x depth heatmap per needle task, score and perplexity against context length.

Every function takes `runs`, a mapping label -> results dict, so one call can compare base and extended models.
matplotlib is imported lazily with the Agg backend (no display needed). The pieces (`panel_grid`,
`length_axis`, `series_style`, `length_series`, `accuracy_axis`, `perplexity_axis`, `save_figure`) are what
the demo's figure (`comparison_plot`) and the examples' figures are made of.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_LINESTYLES = ("-", "--", "-.", ":")

OVERLAP_NOTE = "Coinciding lines are drawn over each other (hollow markers of decreasing size)."
"""A caption for figures whose series use `series_style`."""


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panel_grid(count: int, ncols: int, width: float, height: float):
    """A figure of `count` panels, `ncols` to a row, each `width` x `height` inches, the unused cells of the
    last row hidden: (figure, the `count` axes in reading order)."""
    nrows = -(-count // ncols)
    fig, axes = pyplot().subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


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


def accuracy_axis(ax, ylabel: str = "accuracy (%)") -> None:
    """A y axis for scores in percent (a margin around 0 and 100)."""
    ax.set_ylim(-5, 105)
    ax.set_ylabel(ylabel)


def perplexity_axis(ax, ylabel: str = "perplexity") -> None:
    """A log y axis labelled with plain numbers (6, not 6 x 10^0)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter("{x:g}")
    ax.yaxis.set_minor_formatter("{x:g}")
    ax.set_ylabel(ylabel)


def series_points(results: Mapping, task: str | None) -> list[tuple[int, float]]:
    """(length, value) of one run's results, by length: a task's score, the average score (task=None) or, for
    `perplexity`, the perplexity of every length that has one."""
    if task == "perplexity":
        by_length = {n: v["ppl"] for n, v in (results.get("perplexity") or {}).items()}
    else:
        by_length = results["average"] if task is None else results["results"].get(task, {})
    return sorted((int(n), v) for n, v in by_length.items() if v is not None)


def length_series(ax, runs: Mapping[str, Mapping], task: str | None) -> set[int]:
    """One line per run of `series_points(results, task)` against length, each in its `series_style`;
    returns the lengths drawn."""
    lengths: set[int] = set()
    for i, (label, results) in enumerate(runs.items()):
        points = series_points(results, task)
        if points:
            ax.plot(*zip(*points, strict=True), label=label, **series_style(i, len(runs)))
            lengths.update(n for n, _ in points)
    return lengths


def depth_heatmap(results: Mapping, task: str, path: str | Path, title: str | None = None) -> Path:
    """Score (0-100) for every (depth, length) cell of one needle task."""
    plt = pyplot()
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
    return save_figure(fig, path)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay the figure out, write it to `path` (folders made) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def perplexity_plot(
    runs: Mapping[str, Mapping], path: str | Path, window: int | None = None, target: int | None = None
) -> Path | None:
    """Perplexity against context length, one line per run; None when no run measured perplexity. window /
    target: the training window and the target length, marked when given."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    lengths = length_series(ax, runs, "perplexity")
    if not lengths:
        plt.close(fig)
        return None
    length_axis(ax, lengths, window, target)
    ax.set_ylabel("perplexity")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def score_plot(
    runs: Mapping[str, Mapping],
    path: str | Path,
    task: str | None = None,
    window: int | None = None,
    target: int | None = None,
) -> Path | None:
    """Score of one task (or the average, task=None) against context length, one line per run; window / target
    as in `perplexity_plot`."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    lengths = length_series(ax, runs, task)
    if not lengths:
        plt.close(fig)
        return None
    length_axis(ax, lengths, window, target)
    accuracy_axis(ax, f"{task or 'average'} score")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def comparison_plot(
    runs: Mapping[str, Mapping],
    path: str | Path,
    tasks: list[str] | tuple[str, ...],
    window: int | None = None,
    target: int | None = None,
    caption: str = OVERLAP_NOTE,
    caption_color: str = "black",
    dpi: int = 120,
) -> Path:
    """One panel per task (accuracy) and one for held-out perplexity, side by side, against length; one line
    per run; window / target marked as in `length_axis`; `caption` over the panels."""
    panels = [*tasks, "perplexity"]
    fig, axes = panel_grid(len(panels), len(panels), 4.8, 4.2)
    for ax, task in zip(axes, panels, strict=True):
        lengths = length_series(ax, runs, task)
        if task == "perplexity":
            length_axis(ax, lengths, window, target, "window (tokens)")
            perplexity_axis(ax, "held-out perplexity")
        else:
            length_axis(ax, lengths, window, target)
            accuracy_axis(ax)
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(caption, fontsize=10, color=caption_color)
    return save_figure(fig, path, dpi=dpi)


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
