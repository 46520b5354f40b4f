"""The plan of Tables 1 and 2 (cells, shared runs, dependencies) and `reproduce --dry-run`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cqd_port.errors import CqdError
from cqd_port.experiments.plan import plan_grid
from cqd_port.experiments.methods import IMAGENET
from cqd_port.experiments.paper import paper_table
from cqd_port.experiments.tasks import TABLE1_TASKS

TABLE1_METHODS = ["upper_bound", "no_adaptation", "fine_tuning", "data_augmentation", "staged", "cqd", "a_cqd"]


def _order_respects_dependencies(plan):
    seen = set()
    for key, run in plan.runs.items():
        assert set(run.depends) <= seen, f"{key} runs before {run.depends}"
        seen.add(key)


def test_table1_full_grid():
    plan = plan_grid(1)
    assert len(plan.cells) == 7 * 7
    assert {(c.task, c.method) for c in plan.cells} == {(t.name, m) for t in TABLE1_TASKS for m in TABLE1_METHODS}
    _order_respects_dependencies(plan)
    cell = {(c.task, c.method): c.run for c in plan.cells}
    # one A model per (dataset, A domain): CUB localized for five columns, CARS full image for two
    cub_a = {cell[(t, "upper_bound")] for t in ("local_cub", "res_cub", "edge_cub", "dist_cub", "local_res_cub")}
    cars_a = {cell[(t, "upper_bound")] for t in ("res_cars", "edge_cars")}
    assert cub_a == {"local_cub/upper_bound"} and cars_a == {"res_cars/upper_bound"}
    assert len(plan.runs) == 2 + 7 * 6  # the two A models, then six runs per task
    for task in TABLE1_TASKS:
        a_key = cell[(task.name, "upper_bound")]
        runs = {m: plan.runs[cell[(task.name, m)]] for m in TABLE1_METHODS}
        assert runs["upper_bound"].train == (task.a,) and runs["upper_bound"].test == task.a
        assert not runs["no_adaptation"].trains and runs["no_adaptation"].init == a_key and runs["no_adaptation"].test == task.b
        assert runs["fine_tuning"].train == (task.b,) and runs["fine_tuning"].init == IMAGENET
        assert runs["data_augmentation"].train == (task.a, task.b) and runs["data_augmentation"].class_factor == 2
        assert runs["staged"].init == a_key and runs["staged"].teacher is None
        assert runs["cqd"].init == IMAGENET and runs["cqd"].teacher == a_key and runs["cqd"].teacher_data == task.a
        assert runs["a_cqd"].init == a_key and runs["a_cqd"].teacher == a_key
        expected_lambda = 200.0 if task.dataset == "cub" else 50.0
        assert runs["cqd"].hyper.lambda_ == expected_lambda and runs["cqd"].hyper.temperature == 10.0
        assert all(r.hyper.epochs == 30 and r.batch_size == 128 for r in runs.values())
    assert plan.runs["local_res_cub/fine_tuning"].train[0].folder == "lowres-full"


def test_augmentation_classes_option():
    plan = plan_grid(1, ["res_cub"], ["data_augmentation"], augmentation_classes="k")
    assert plan.runs["res_cub/data_augmentation"].class_factor == 1
    with pytest.raises(CqdError, match="augmentation-classes"):
        plan_grid(1, augmentation_classes="3k")


def test_table2_grid():
    plan = plan_grid(2)
    assert len(plan.cells) == 9
    _order_respects_dependencies(plan)
    cell = {(c.task, c.method): plan.runs[c.run] for c in plan.cells}
    vd_a = cell[("vgg16_vgg16", "upper_bound")]
    assert vd_a.arch == "vgg-vd-16" and vd_a.batch_size == 32
    distilled = cell[("vgg16_vggm", "cqd")]
    assert distilled.arch == "vgg-m" and distilled.teacher == vd_a.key and distilled.teacher_arch == "vgg-vd-16"
    assert distilled.hyper.lambda_ == 50.0 and distilled.batch_size == 128
    assert cell[("vggm_vggm", "cqd")].hyper.lambda_ == 200.0
    # vgg-vd -> vgg-vd: lambda from the dataset as the release's run_CQD.m (CUB: 200); --vd-vd-lambda 50 for the paper's
    assert cell[("vgg16_vgg16", "cqd")].hyper.lambda_ == 200.0 and cell[("vgg16_vgg16", "cqd")].batch_size == 32
    assert cell[("vgg16_vggm", "fine_tuning")].key == cell[("vggm_vggm", "fine_tuning")].key  # g = vgg-m on B, shared


def test_subset_keeps_folders_and_pulls_dependencies():
    plan = plan_grid(1, ["dist_cub"], ["staged"], epochs=3)
    assert list(plan.runs) == ["local_cub/upper_bound", "dist_cub/staged"]
    assert all(r.hyper.epochs == 3 for r in plan.runs.values())
    with pytest.raises(CqdError, match="unknown task"):
        plan_grid(1, ["nope"])
    with pytest.raises(CqdError, match="unknown method"):
        plan_grid(2, None, ["staged"])  # Table 2 has no staged training


def test_dry_run_lists_table1(cli, tmp_path):
    out = tmp_path / "runs"
    result = cli("reproduce", "--table", "1", "--dry-run", "--out", out, "--models", tmp_path / "m", "--prepared", tmp_path / "p")
    assert result.exit_code == 0, result.stderr
    cells = re.findall(r"^  (\w+) / (\w+) -> (\S+)", result.stdout, re.M)
    assert len(cells) == 49
    assert {(t, m) for t, m, _ in cells} == {(t.name, m) for t in TABLE1_TASKS for m in TABLE1_METHODS}
    runs = re.findall(r"^  (\S+/\w+) \[pending\]: ", result.stdout, re.M)
    assert len(runs) == 44
    for folder in ("localized", "original", "lowres", "edges", "distorted", "lowres-full"):
        assert f"cub/{folder}: " in result.stdout
    assert "missing; needs --cub-root" in result.stdout
    assert "convert-weights" in result.stdout
    assert not out.exists()  # a dry run touches nothing


def test_dry_run_lists_table2(cli, tmp_path):
    result = cli("reproduce", "--table", "2", "--dry-run", "--out", tmp_path / "o", "--models", tmp_path / "m", "--prepared", tmp_path / "p")
    assert result.exit_code == 0, result.stderr
    cells = re.findall(r"^  (\w+) / (\w+) -> (\S+)", result.stdout, re.M)
    assert {(t, m) for t, m, _ in cells} == {(t, m) for t in paper_table(2).tasks for m in paper_table(2).methods}
    assert "imagenet-vgg-verydeep-16" in result.stdout
    assert not (tmp_path / "o").exists()


def test_bad_table_is_a_user_error(cli):
    result = cli("reproduce", "--table", "3", "--dry-run")
    assert result.exit_code == 2 and "--table 3" in result.stderr and "Traceback" not in result.stderr


def test_a_cqd_start_and_vd_vd_lambda_options():
    paper = {(c.task, c.method): c.run for c in plan_grid(1, ["res_cub"]).cells}
    assert paper[("res_cub", "a_cqd")] == "res_cub/a_cqd"
    release = plan_grid(1, ["res_cub"], a_cqd_start="imagenet")
    cells = {(c.task, c.method): c.run for c in release.cells}
    assert cells[("res_cub", "a_cqd")] == cells[("res_cub", "cqd")] == "res_cub/cqd"  # from ImageNet it IS CQD
    assert "res_cub/a_cqd" not in release.runs and release.a_cqd_start == "imagenet"
    with pytest.raises(CqdError, match="a-cqd-start"):
        plan_grid(1, a_cqd_start="scratch")
    table2 = {(c.task, c.method): c.run for c in plan_grid(2, vd_vd_lambda=50.0).cells}
    plan2 = plan_grid(2, vd_vd_lambda=50.0)
    assert plan2.runs[table2[("vgg16_vgg16", "cqd")]].hyper.lambda_ == 50.0
    assert plan2.runs[table2[("vggm_vggm", "cqd")]].hyper.lambda_ == 200.0  # only vgg-vd -> vgg-vd changes


def test_every_interpretive_setting_is_noted_on_its_cells(tmp_path):
    from cqd_port.experiments.settings import GridConfig
    from cqd_port.experiments.notes import A_CQD_FROM_A, A_CQD_FROM_IMAGENET, AUGMENTATION_2K, DISTORTION_SEED, LOWRES_BILINEAR, cell_notes

    config = GridConfig(out=tmp_path, edges_method="edges_sobel")
    plan = plan_grid(1)
    notes = {(c.task, c.method): cell_notes(c.method, plan.runs[c.run], config.catalog()) for c in plan.cells}
    assert notes[("local_cub", "upper_bound")] == ()  # nothing interpretive about it
    for task in ("res_cub", "res_cars", "local_res_cub"):
        assert LOWRES_BILINEAR in notes[(task, "cqd")] and LOWRES_BILINEAR in notes[(task, "no_adaptation")]
    assert LOWRES_BILINEAR not in notes[("edge_cub", "cqd")]
    assert any("edges_sobel" in n and "not the paper's" in n for n in notes[("edge_cars", "fine_tuning")])
    assert DISTORTION_SEED in notes[("dist_cub", "staged")]
    assert AUGMENTATION_2K in notes[("local_cub", "data_augmentation")]
    assert A_CQD_FROM_A in notes[("local_cub", "a_cqd")] and A_CQD_FROM_A not in notes[("local_cub", "cqd")]
    release = plan_grid(1, ["local_cub"], a_cqd_start="imagenet")
    cell = next(c for c in release.cells if c.method == "a_cqd")
    assert A_CQD_FROM_IMAGENET in cell_notes("a_cqd", release.runs[cell.run], config.catalog())
    table2 = plan_grid(2)
    notes2 = {(c.task, c.method): cell_notes(c.method, table2.runs[c.run], config.catalog()) for c in table2.cells}
    assert any("lambda = 200" in n and "run_CQD.m" in n for n in notes2[("vgg16_vgg16", "cqd")])
    assert any("lambda = 50" in n and "Section 4.2" in n for n in notes2[("vgg16_vggm", "cqd")])
    assert not any("lambda" in n for n in notes2[("vggm_vggm", "cqd")])  # the paper's and the release's 200 agree


def test_a_batch_size_below_one_is_refused():
    from cqd_port.experiments.settings import GridConfig

    with pytest.raises(CqdError, match="batch size 0: must be at least 1"):
        GridConfig(out=Path("runs"), batch_size=0)  # `config.batch_size or ...` took 0 as 'the paper's'
