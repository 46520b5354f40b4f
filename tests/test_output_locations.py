"""Where analyses write without --out, and what their figures say (issue 12, items 11 and 13)."""

from __future__ import annotations

import pytest
from test_analysis_tau_study import _checkpoint  # the tiny trained-format network of the tau study tests

from cqd_port.analysis import default_output
from cqd_port.data.synth import make_synthetic_dataset


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    base = tmp_path_factory.mktemp("where")
    root = make_synthetic_dataset(base / "cub", classes=3, train_per_class=1, test_per_class=2, size=40, seed=3)
    run_b = base / "runs" / "loc_cub" / "b"
    run_cqd = base / "runs" / "loc_cub" / "cqd"
    _checkpoint(run_b / "final.pt", seed=0, softmax=False)
    _checkpoint(run_cqd / "final.pt", seed=1, softmax=False)
    return base, root, run_b, run_cqd


def test_gradients_default_output_goes_with_the_cqd_run_not_the_current_folder(study, cli, tmp_path, monkeypatch):
    import cqd_port.analysis.figures as figures

    base, root, run_b, run_cqd = study
    captions = []
    real_panel = figures.gradient_panel

    def spy(rows, path, **kwargs):
        captions.extend(r.caption for r in rows)
        return real_panel(rows, path, **kwargs)

    monkeypatch.setattr(figures, "gradient_panel", spy)
    monkeypatch.chdir(tmp_path)
    result = cli("analyze", "gradients", "--model-b", run_b, "--model-cqd", run_cqd, "--data-root", root, "--n", "3", "--panel", "2")
    assert result.exit_code == 0, result.stderr
    assert _files(tmp_path) == []  # nothing in the current folder
    assert {"tau.csv", "gradient_maps.png"} <= set(_files(run_cqd / "analysis-gradients"))
    assert str(run_cqd / "analysis-gradients" / "tau.csv") in result.stdout
    # gradient maps name the class, not its number
    assert captions and all("Synth" in c and "class " not in c for c in captions), captions
    help_text = cli("analyze", "gradients", "--help").stdout
    assert "inside the --model-cqd run folder" in " ".join(help_text.split())


def test_one_rule_for_report_and_gradients(tmp_path):
    (tmp_path / "results").mkdir()
    assert default_output(tmp_path / "results", "figures") == tmp_path / "results" / "figures"
    (tmp_path / "cqd.pt").write_bytes(b"x")  # a checkpoint file: beside it
    assert default_output(tmp_path / "cqd.pt", "analysis-gradients") == tmp_path / "analysis-gradients"


def test_gallery_panels_and_row_labels():
    from cqd_port.data.gallery import CARS_PANELS, CUB_PANELS, row_label

    for panels in (CUB_PANELS, CARS_PANELS):
        assert [p.title[:3] for p in panels] == [f"({chr(ord('a') + i)})" for i in range(len(panels))]
    localized = CUB_PANELS[0]
    labels = [row_label(row, *view, "cub") for row, view in (("A", localized.a), ("B", localized.b))]
    assert labels == ["A: localized (box crop)", "B: original (full image)"]  # no "localized (full)"
    assert row_label("B", "lowres", "box", "cub") == "B: lowres (box crop)"
    assert row_label("A", "original", "full", "cars") == "A: original"
