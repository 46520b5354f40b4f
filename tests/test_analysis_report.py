"""`cqd-port report` and the figures, on hand-made results.json / history.json files."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from cqd_port.analysis.figures import PanelRow, gradient_panel, results_bars, tau_scatter, training_curves
from cqd_port.analysis.report import read_history
from cqd_port.errors import CqdError


def _png_size(path: Path) -> tuple[int, int]:
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    # A real drawing, not a blank canvas.
    assert float(image[..., :3].std()) > 0.01
    return image.shape[0], image.shape[1]


def _results(tmp_path: Path, cells: list[dict], synthetic: bool = True, table: int = 1) -> Path:
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    (results_dir / "results.json").write_text(json.dumps({"table": table, "synthetic": synthetic, "cells": cells}))
    return results_dir


def _history(path: Path, epochs: int, offset: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "epoch": e,
            "train": {"objective": 5.0 / e + offset, "top1err": 0.9 / e + offset / 10},
            "test": {"objective": 5.5 / e + offset, "top1err": 0.95 / e + offset / 10},
        }
        for e in range(1, epochs + 1)
    ]
    path.write_text(json.dumps(rows))


CELLS = [
    {"task": "local_cub", "method": "upper_bound", "accuracy": 40.0, "paper": 67.0},
    {"task": "local_cub", "method": "fine_tuning", "accuracy": 31.5, "paper": 60.8},
    {"task": "local_cub", "method": "cqd", "accuracy": 35.25, "paper": 64.4},
    {"task": "res_cub", "method": "fine_tuning", "accuracy": 22.0, "paper": 61.0},
    {"task": "res_cub", "method": "cqd", "accuracy": None, "paper": 64.4},
]


def test_report_writes_bars_and_curves(tmp_path, cli):
    results_dir = _results(tmp_path, CELLS)
    _history(results_dir / "local_cub" / "fine_tuning" / "history.json", 4, 0.0)
    _history(results_dir / "local_cub" / "cqd" / "history.json", 4, 0.3)
    _history(results_dir / "res_cub" / "fine_tuning" / "history.json", 3, 0.1)
    result = cli("report", results_dir)
    assert result.exit_code == 0, result.stderr
    bars = results_dir / "figures" / "table1_bars.png"
    curves = results_dir / "figures" / "curves_local_cub.png"
    assert _png_size(bars)[1] >= 600
    assert _png_size(curves) == (420, 1100)  # figsize (11, 4.2) at 100 dpi
    assert (results_dir / "figures" / "curves_res_cub.png").is_file()
    assert "local_cub/upper_bound" in result.stdout  # no history for it: said, not an error
    assert not list((results_dir / "figures").glob(".*tmp*"))

    out = tmp_path / "only"
    result = cli("report", results_dir, "--task", "res_cub", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["curves_res_cub.png", "table1_bars.png"]


def test_report_errors_are_one_line(tmp_path, cli):
    missing = cli("report", tmp_path / "nowhere")
    assert missing.exit_code == 2
    assert missing.stderr.startswith("error: ") and missing.stderr.count("\n") == 1

    no_cells = tmp_path / "nocells"
    no_cells.mkdir()
    (no_cells / "results.json").write_text(json.dumps({"table": 1, "synthetic": False}))
    result = cli("report", no_cells)
    assert result.exit_code == 2 and "results.json" in result.stderr and result.stderr.count("\n") == 1

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.json").write_text(json.dumps({"table": 1, "synthetic": False, "cells": []}))
    result = cli("report", empty)
    assert result.exit_code == 2 and "no cells" in result.stderr

    results_dir = _results(tmp_path, CELLS)
    result = cli("report", results_dir, "--task", "edge_cars")
    assert result.exit_code == 2 and "--task edge_cars" in result.stderr
    result = cli("report", results_dir, "--task", "local_cub")
    assert result.exit_code == 2 and "history.json" in result.stderr

    (results_dir / "local_cub" / "cqd").mkdir(parents=True)
    (results_dir / "local_cub" / "cqd" / "history.json").write_text("{not json")
    result = cli("report", results_dir, "--task", "local_cub")
    assert result.exit_code == 2 and "history.json" in result.stderr and result.stderr.count("\n") == 1


def test_read_history_layouts(tmp_path):
    nested = tmp_path / "a.json"
    _history(nested, 3, 0.0)
    history = read_history(nested)
    assert history["train"]["objective"] == pytest.approx([5.0, 2.5, 5.0 / 3])
    assert history["test"]["top1err"] == pytest.approx([0.95, 0.475, 0.95 / 3])

    flat = tmp_path / "b.json"
    flat.write_text(json.dumps({"epochs": [{"epoch": 1, "train_objective": 2.0, "val_top1err": 0.5}]}))
    history = read_history(flat)
    assert history["train"]["objective"] == [2.0] and history["test"]["top1err"] == [0.5]

    stats = tmp_path / "c.json"  # MatConvNet's stats.train(epoch) / stats.val(epoch)
    stats.write_text(json.dumps({"train": [{"objective": 3.0, "top1err": 0.7}], "val": [{"objective": 3.5, "top1err": 0.8}]}))
    assert read_history(stats)["test"]["objective"] == [3.5]

    lists = tmp_path / "d.json"
    lists.write_text(json.dumps({"train": {"objective": [1, 2]}, "test": {"top1err": [0.1, 0.2]}}))
    assert read_history(lists)["train"]["objective"] == [1.0, 2.0]

    bad = tmp_path / "e.json"
    bad.write_text(json.dumps([{"epoch": 1}]))
    with pytest.raises(CqdError, match="no objective"):
        read_history(bad)


def test_figures_are_written_and_readable(tmp_path):
    rng = np.random.default_rng(0)
    tau_b = rng.random(200) * 0.8
    tau_c = np.clip(tau_b + rng.normal(0.1, 0.05, 200), 0, 1)
    scatter = tau_scatter(tau_b, tau_c, tmp_path / "scatter.png", synthetic=True)
    assert _png_size(scatter) == (550, 550)

    image = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    maps = rng.random((2, 32, 32))
    rows = [
        PanelRow(image, (10, 5, 50, 40), maps[0], (4, 2, 20, 21), 0.4, maps[1], (4, 2, 20, 21), 0.6, caption=f"img {i}")
        for i in range(3)
    ]
    panel = gradient_panel(rows, tmp_path / "panel.png")
    assert _png_size(panel) == (900, 900)  # 3 rows x 3 inches, 9 inches wide, 100 dpi

    bars = results_bars(CELLS, tmp_path / "bars.png", table=1, synthetic=False)
    assert _png_size(bars)[0] == 480
    curves = training_curves({"cqd": {"train": {"objective": [3, 2, 1]}, "test": {"top1err": [0.5, 0.4, 0.3]}}},
                             tmp_path / "curves.png", task="local_cub")
    assert _png_size(curves) == (420, 1100)


def test_report_table2(tmp_path, cli):
    cells = [
        {"task": "vggm_vggm", "method": "upper_bound", "accuracy": 50.0, "paper": 67.0},
        {"task": "vgg16_vggm", "method": "cqd", "accuracy": 45.0, "paper": 64.6},
        {"task": "vgg16_vgg16", "method": "fine_tuning", "accuracy": 41.0, "paper": 69.5},
    ]
    results_dir = _results(tmp_path, cells, synthetic=False, table=2)
    result = cli("report", results_dir)
    assert result.exit_code == 0, result.stderr
    assert (results_dir / "figures" / "table2_bars.png").is_file()
    assert not list((results_dir / "figures").glob("curves_*"))  # no histories: bars only


@pytest.fixture
def drawn(monkeypatch):
    """The figures as drawn (the Figure objects), besides the PNGs written."""
    from cqd_port.analysis import figures

    figs = []
    real = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path, dpi=100: figs.append(fig) or real(fig, path, dpi))
    return figs


def test_bar_legend_colours_are_the_methods_even_without_a_measured_bar(tmp_path, drawn):
    from matplotlib.colors import to_rgba

    from cqd_port.analysis.figures import METHOD_LABELS, method_colour

    cells = [
        {"task": "local_cub", "method": "upper_bound", "accuracy": 60.0, "paper": 67.0},
        {"task": "local_cub", "method": "fine_tuning", "accuracy": None, "paper": 55.0},
        {"task": "lowres_cub", "method": "staged", "accuracy": None, "paper": 45.0},
        {"task": "lowres_cub", "method": "cqd", "accuracy": 50.0, "paper": 52.0},
    ]
    results_bars(cells, tmp_path / "bars.png")
    legend = drawn[-1].axes[0].get_legend()
    entries = {text.get_text(): handle for text, handle in zip(legend.get_texts(), legend.legend_handles)}
    for method in ("upper_bound", "fine_tuning", "staged", "cqd"):
        (label, handle), = [(t, h) for t, h in entries.items() if t.startswith(METHOD_LABELS[method])]
        colour = handle.get_facecolor() if method in ("upper_bound", "cqd") else handle.get_edgecolor()
        assert colour == pytest.approx(to_rgba(method_colour(method))), method
        assert ("not measured" in label) == (method in ("fine_tuning", "staged"))


def test_one_epoch_curves_have_whole_epoch_ticks_and_axes_from_zero(tmp_path, drawn):
    training_curves({"cqd": {"train": {"objective": [1.3], "top1err": [0.6]}, "test": {"objective": [1.35], "top1err": [0.65]}}},
                    tmp_path / "curves.png", task="local_cub")
    fig = drawn[-1]
    fig.canvas.draw()
    objective, error = fig.axes
    for ax in (objective, error):
        assert ax.get_xlim() == (0.5, 1.5)
        assert [t for t in ax.get_xticks() if 0.5 <= t <= 1.5] == [1.0]
    assert objective.get_ylim()[0] == 0 and objective.get_ylim()[1] > 1.35  # the highest point is inside, not on the edge
    assert error.get_ylim() == (0, 1)


def test_gradient_panel_titles_stay_inside_the_figure(tmp_path, drawn):
    rng = np.random.default_rng(0)
    image = (rng.random((300, 500, 3)) * 255).astype(np.uint8)
    maps = rng.random((2, 32, 32))
    caption = "Black_Footed_Albatross_0046_18_a_long_file_name.jpg (Black footed Albatross)"
    rows = [PanelRow(image, (10, 5, 300, 200), maps[0], (4, 2, 20, 21), 0.4, maps[1], (4, 2, 20, 21), 0.6, caption=caption)] * 2
    gradient_panel(rows, tmp_path / "panel.png", synthetic=True)
    fig = drawn[-1]
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    for ax in fig.axes:
        extent = ax.title.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and extent.y1 <= box.y1, ax.title.get_text()


def test_a_test_set_scored_after_the_last_epoch_only_is_drawn_at_that_epoch(tmp_path, drawn):
    # The demo scores its test set after the last epoch only: history.json has one test row, epoch 3's.
    path = tmp_path / "history.json"
    path.write_text(json.dumps([
        {"epoch": e, "train": {"objective": 3.0 / e, "top1err": 0.9 / e}, **({"test": {"objective": 1.5, "top1err": 0.4}} if e == 3 else {})}
        for e in (1, 2, 3)
    ]))
    history = read_history(path)
    assert history["test"]["top1err"] == [0.4] and history["test"]["epoch"] == [3.0]
    assert history["train"]["epoch"] == [1.0, 2.0, 3.0]
    training_curves({"cqd": history}, tmp_path / "curves.png", task="local_cub")
    error = drawn[-1].axes[1]
    test_line, = [line for line in error.get_lines() if "(test)" in line.get_label()]
    assert list(test_line.get_xdata()) == [3.0] and list(test_line.get_ydata()) == [0.4]
    assert error.get_xlim() == (0.5, 3.5)
