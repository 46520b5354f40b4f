"""A run's outputs: net-train.pdf says which run it is and plots CQD's distillation term; a full disk stops a
run with one line and a run.json that says so (issue 12, items 4 and 13)."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from test_experiments_methods import _config, tiny  # noqa: F401 - the tiny synthetic dataset and VGG-M fixture

import cqd_port.train.trainer as trainer_module
from cqd_port.errors import DiskFullError
from cqd_port.experiments.grid import run_grid
from cqd_port.experiments.plan import plan_grid
from cqd_port.train.trainer import history_figure


def _epoch(epoch, distill):
    return {"epoch": epoch, "train": {"objective": 1.0 / epoch, "distill": distill, "total": 1.0, "top1err": 0.5},
            "test": {"objective": 1.2, "top1err": 0.6, "accuracy": 40.0}}


def test_history_figure_names_the_terms_and_the_run():
    cqd = history_figure([_epoch(1, 0.7), _epoch(2, 0.4)], "local_cub/cqd: task local_cub, method cqd - SYNTHETIC DATA")
    titles = [ax.get_title() for ax in cqd.axes]
    assert titles[0] == "softmax-log loss" and titles[1].startswith("distillation term") and titles[2] == "top-1 error"
    assert "objective" not in " ".join(titles)
    assert list(cqd.axes[1].lines[0].get_ydata()) == [0.7, 0.4]  # the distillation term, train only
    assert "SYNTHETIC" in cqd._suptitle.get_text() and "local_cub/cqd" in cqd._suptitle.get_text()
    plain = history_figure([_epoch(1, 0.0)])
    assert [ax.get_title() for ax in plain.axes] == ["softmax-log loss", "top-1 error"]


@pytest.mark.parametrize("distill, title, loss", [(0.7, "res_cub/data_augmentation: task res_cub, method data_augmentation - SYNTHETIC DATA", 12.345),
                                                   (0.0, "", 0.001234)])
def test_history_figure_fixed_margins_fit_every_text(distill, title, loss):
    """The fixed margins (no tight_layout): every label, tick and title lies inside the page and no two panels' texts overlap."""
    history = [{**_epoch(e, distill / e), "train": {**_epoch(e, distill / e)["train"], "objective": loss / e}} for e in range(1, 31)]
    fig = history_figure(history, title)
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes]
    for box in boxes + ([fig._suptitle.get_window_extent(renderer)] if title else []):
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, (box, page)
    for first, second in zip(boxes, boxes[1:]):
        assert first.x1 <= second.x0, (first, second)
    if title:
        assert fig._suptitle.get_window_extent(renderer).y0 >= max(box.y1 for box in boxes)


def test_net_train_title_names_run_task_and_synthetic(tiny, tmp_path, monkeypatch):  # noqa: F811
    titles = []
    real = trainer_module.history_figure
    monkeypatch.setattr(trainer_module, "history_figure", lambda history, title="": titles.append(title) or real(history, title))
    run_grid(plan_grid(1, ["local_cub"], ["fine_tuning"], epochs=1), _config(tiny, tmp_path / "runs"))
    assert titles and titles[-1] == "local_cub/fine_tuning: task local_cub, method fine_tuning - SYNTHETIC DATA"
    assert (tmp_path / "runs/local_cub/fine_tuning/net-train.pdf").is_file()


def test_full_disk_during_a_checkpoint_stops_the_run_and_says_so(tiny, tmp_path, monkeypatch):  # noqa: F811
    def no_space(obj, handle, *args, **kwargs):
        handle.write(b"PK partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(DiskFullError) as info:
        run_grid(plan_grid(1, ["local_cub"], ["fine_tuning"], epochs=1), _config(tiny, tmp_path / "runs"))
    folder = tmp_path / "runs/local_cub/fine_tuning"
    message = str(info.value)
    assert "\n" not in message and str(folder / "checkpoint.pt") in message and "needs about" in message
    assert json.loads((folder / "run.json").read_text())["status"] == "stopped: disk full"
    assert not [p.name for p in folder.iterdir() if ".tmp" in p.name or p.name == "checkpoint.pt"]


def test_gallery_on_a_full_disk_is_one_line(tmp_path, cli, monkeypatch, tiny):  # noqa: F811
    from matplotlib.figure import Figure

    def no_space(self, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", no_space)
    out = tmp_path / "full" / "gallery.png"
    result = cli("gallery", "--data-root", tiny[1], "--out", out, "--n", "1")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "disk full" in result.stderr and str(out) in result.stderr
    assert list((tmp_path / "full").iterdir()) == []
