"""Plot axes: real lengths as tick labels, training window and target marked, series told apart; the demo's
figure says when its numbers are meaningless and its report how many prompts a cell averages."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from megatron_endprompt import demo  # noqa: E402
from megatron_endprompt.eval.plots import depth_heatmap, length_axis, series_style  # noqa: E402

LENGTHS = [256, 1024, 2032]


def test_length_axis_labels_real_lengths_and_marks_window_and_target() -> None:
    fig, ax = plt.subplots()
    ax.plot(LENGTHS, [1, 2, 3])
    length_axis(ax, LENGTHS, window=256, target=2048)
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["256", "1024", "2032"]
    assert list(ax.get_xticks()) == LENGTHS
    assert not list(ax.xaxis.get_minorticklocs())  # no 2^k minor ticks
    lines = {line.get_label(): line.get_xdata()[0] for line in ax.get_lines()}
    assert lines["training window (256)"] == 256 and lines["target T (2048)"] == 2048
    plt.close(fig)


def test_series_differ_in_marker_dash_and_size() -> None:
    styles = [series_style(i, 3) for i in range(3)]
    assert len({s["marker"] for s in styles}) == 3 and len({s["linestyle"] for s in styles}) == 3
    assert (
        styles[0]["markersize"] > styles[1]["markersize"] > styles[2]["markersize"]
    )  # overlaps stay visible


def _runs() -> dict:
    def run(score: float, ppl: float) -> dict:
        row = {str(n): score for n in LENGTHS}
        return {
            "results": {task: row for task in demo.EVAL_TASKS},
            "perplexity": {str(n): {"ppl": ppl, "windows": 2} for n in LENGTHS},
        }

    return {"base": run(100.0, 5.0), "extended": run(100.0, 4.0)}


def test_demo_plot_caption_and_cell_sizes(tmp_path, monkeypatch) -> None:
    titles = []
    monkeypatch.setattr(plt.Figure, "suptitle", lambda self, t, **kw: titles.append(t))
    dc = {"base_length": 256, "factor": 8, "eval_samples": 8, "eval_depths": [0.0, 0.5, 1.0]}
    demo.plot_results(_runs(), tmp_path / "full.png", dc, fast=False)
    demo.plot_results(_runs(), tmp_path / "fast.png", dc, fast=True)
    assert "NOT meaningful" not in titles[0] and "NOT meaningful" in titles[1]
    assert all("drawn over each other" in t for t in titles)
    assert (tmp_path / "fast.png").read_bytes()[:4] == b"\x89PNG"
    sizes = demo._cell_sizes(_runs(), dc)
    assert "averages 24 prompts (8 per needle depth x 3 depths)" in sizes and "2 held-out windows" in sizes


def test_heatmap_title_gives_prompts_per_cell(tmp_path, monkeypatch) -> None:
    titles = []
    monkeypatch.setattr(plt.Axes, "set_title", lambda self, t, **kw: titles.append(t))
    results = {
        "config": {"lengths": LENGTHS, "samples": 8},
        "depth_detail": {"passkey": {str(n): {"0": 100.0, "1": 50.0} for n in LENGTHS}},
    }
    assert depth_heatmap(results, "passkey", tmp_path / "h.png").is_file()
    assert titles == ["passkey; 8 prompts per cell"]


def test_panel_grid_hides_unused_cells_and_series_points_skip_missing_values() -> None:
    from megatron_endprompt.eval.plots import panel_grid, perplexity_axis, series_points

    fig, axes = panel_grid(3, 2, 4.0, 3.0)
    assert len(axes) == 3 and [ax.get_visible() for ax in fig.axes] == [True, True, True, False]
    assert tuple(fig.get_size_inches()) == (8.0, 6.0)
    perplexity_axis(axes[0])
    assert axes[0].get_yscale() == "log"
    plt.close(fig)
    results = {"results": {"passkey": {"1024": 50.0, "256": 100.0}}, "perplexity": {"256": {"ppl": None}}}
    assert series_points(results, "passkey") == [(256, 100.0), (1024, 50.0)]
    assert series_points(results, "perplexity") == []
