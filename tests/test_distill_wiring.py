"""The distillers after CQD (FitNets, AT, SP, RKD, DKD) wired into `cqd-port train`, `reproduce` and `demo`:
every one runs end to end, adds rows with paired intervals, its settings are part of the job's identity,
resume is bit-identical, and the paper's rows are untouched by them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cqd_port.errors import CqdError
from cqd_port.experiments.custom import parse_config, run_custom
from cqd_port.experiments.grid import run_grid
from cqd_port.experiments.job import identity
from cqd_port.experiments.methods import DISTILLERS, default_distill_spec
from cqd_port.experiments.plan import JobResolver, parse_select, plan_grid, schedule_grid
from cqd_port.experiments.results import load_results
from test_custom_train import folder, tiny as tiny_yaml  # noqa: F401  (fixture)
from test_experiments_methods import _config, tiny  # noqa: F401  (fixture)

NEW = ("fitnets", "at", "sp", "rkd", "dkd")
# MobileNet-V3 has no `layer4`: the tiny `cqd-port train` configs name its layers by module path
MOBILENET_LAYERS = {"teacher_layer": "features", "student_layer": "features"}


def _train_yaml(folder, out, name: str, **distill) -> dict:
    data = tiny_yaml(folder, out, name)
    method = name
    if DISTILLERS[method].layers:
        distill = {**MOBILENET_LAYERS, **distill}
    return {**data, "distill": distill} if distill else data


# --------------------------------------------------------------------------- cqd-port train


def test_every_distiller_trains_under_cqd_port_train_after_f_on_a(folder, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    weights = {m: DISTILLERS[m].weight for m in NEW} | {"sp": 30.0}  # SP's 3000 diverges on these random-weight MobileNets
    for method in NEW:
        extra = {"weight": weights[method]} if weights[method] != DISTILLERS[method].weight else {}
        outcome = run_custom(parse_config(_train_yaml(folder, out, method, **extra)), progress=False)
        record = outcome.record
        assert record["status"] == "finished" and record["method"] == method, method
        assert record["objective"]["kind"] == "distill" and record["objective"]["method"] == method
        assert record["objective"]["weight"] == weights[method]
        assert "teacher_targets" in record and record["teacher"] == "pets/upper_bound"
        saved = json.loads((out / "pets" / method / "identity.json").read_text())
        saved = saved["job"]
        assert dict(map(tuple, saved["distill"]))["method"] == method and saved["lambda_"] == weights[method]
    assert json.loads((out / "pets" / "upper_bound" / "run.json").read_text())["status"] == "finished"  # f trained on A first, once
    assert "distillation: {'method': 'dkd'" in (out / "description.txt").read_text()


def test_distill_section_errors_are_one_line(folder, tmp_path):  # noqa: F811
    cases = [
        (_train_yaml(folder, tmp_path / "a", "fitnets", hint_layer="conv5"), r"distill: fitnets: unknown setting 'hint_layer'"),
        (_train_yaml(folder, tmp_path / "b", "dkd", teacher_layer="features"), r"distill: dkd: unknown setting 'teacher_layer'"),
        ({**tiny_yaml(folder, tmp_path / "c", "CQD"), "distill": {"weight": 1}}, r"distill: method CQD takes no distill section"),
        (_train_yaml(folder, tmp_path / "d", "at", **{"method": "sp"}), r"distill.method: 'sp' differs from method 'at'"),
        (_train_yaml(folder, tmp_path / "e", "rkd", weight="x"), r"distill: rkd: weight must be a number"),
    ]
    for data, message in cases:
        with pytest.raises(CqdError, match=message) as info:
            parse_config(data)
        assert "\n" not in str(info.value)
        assert not (tmp_path / "a").exists()


def test_a_changed_distiller_setting_is_another_job_never_reused(folder, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    run_custom(parse_config(_train_yaml(folder, out, "at")), progress=False)
    changed = parse_config(_train_yaml(folder, out, "at", attention="code"))
    with pytest.raises(CqdError, match=r"pets/at holds a run made with other settings \(distill\)"):
        run_custom(changed, progress=False)
    heavier = parse_config(_train_yaml(folder, out, "at", weight=5))
    with pytest.raises(CqdError, match=r"other settings \(lambda\)"):
        run_custom(heavier, progress=False)
    again = run_custom(changed, progress=False, rerun=True)
    assert again.record["objective"]["attention"] == "code" and again.record["resumed_from_epoch"] == 0


def test_an_interrupted_fitnets_run_resumes_bit_identical(folder, tmp_path, monkeypatch):  # noqa: F811
    import cqd_port.train.trainer as trainer

    def config(out):
        data = _train_yaml(folder, out, "fitnets")
        data["train"].update(epochs=2, checkpoint_every=0)  # a checkpoint after every epoch
        return parse_config(data)

    whole = run_custom(config(tmp_path / "whole"), progress=False)
    real = trainer.save_training_checkpoint

    class Interrupted(KeyboardInterrupt):
        pass

    def save_then_stop(path, checkpoint):
        real(path, checkpoint)
        if checkpoint.epoch == 1 and Path(path).parent.name == "fitnets":
            raise Interrupted()

    monkeypatch.setattr(trainer, "save_training_checkpoint", save_then_stop)
    with pytest.raises(Interrupted):
        run_custom(config(tmp_path / "broken"), progress=False)
    monkeypatch.undo()
    resumed = run_custom(config(tmp_path / "broken"), progress=False)
    assert resumed.record["resumed_from_epoch"] == 1 and whole.record["resumed_from_epoch"] == 0
    a = torch.load(tmp_path / "whole" / "pets" / "fitnets" / "final.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "broken" / "pets" / "fitnets" / "final.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = torch.load(tmp_path / "whole" / "pets" / "fitnets" / "checkpoint.pt", weights_only=False)
    cb = torch.load(tmp_path / "broken" / "pets" / "fitnets" / "checkpoint.pt", weights_only=False)
    da, db = ca["distiller"], cb["distiller"]  # the FitNets connector, trained with g, resumed too
    assert da.keys() == db.keys() and da and all(torch.equal(da[k], db[k]) for k in da)


# --------------------------------------------------------------------------- reproduce (the grid)


def test_plan_adds_distiller_rows_with_their_comparisons_and_leaves_the_paper_rows(tiny, tmp_path):  # noqa: F811
    plain = plan_grid(1, ["res_cub"], None, epochs=1)
    extended = plan_grid(1, ["res_cub"], ["fitnets"], epochs=1)
    assert [c.method for c in extended.cells] == ["fine_tuning", "cqd", "fitnets"]
    assert "distillers" not in plain.options and extended.options["distillers"] == ["fitnets"]
    for key, run in plain.runs.items():  # the paper's runs are the same runs, with the same identities
        assert extended.runs.get(key, run) == run and run.distiller is None
    config = _config(tiny, tmp_path / "runs")
    schedule = schedule_grid(extended, config.catalog(), (0,), {"lambda": (20.0,)})
    resolver = JobResolver(schedule, config)
    jobs = {n.key: resolver.job(n) for n in schedule.runs()}
    assert "distill" not in identity(jobs["res_cub/fine_tuning"]) and "distill" not in identity(jobs["select/res_cub/cqd/lambda20_T10"])
    assert sorted(k for k in jobs if k.startswith("select/res_cub/fitnets/")) == [
        f"select/res_cub/fitnets/weight{w:g}" for w in sorted(DISTILLERS["fitnets"].candidates, key=lambda w: f"{w:g}")
    ]
    # the layer names are part of the job: another layer is another identity
    spec = default_distill_spec("fitnets", "vgg-m", "vgg-m")
    assert (spec.teacher_layer, spec.student_layer) == ("conv5", "conv5")
    other = schedule_grid(extended, config.catalog(), (0,), None)
    node = other.nodes["res_cub/fitnets"]
    moved = replace(node, run=replace(node.run, distiller=default_distill_spec("fitnets", "vgg-m", "vgg-m", teacher_layer="conv4")))
    first = JobResolver(other, config).job(node)
    second = JobResolver(other, config).job(moved)
    assert identity(first) != identity(second) and dict(first.distill)["teacher_layer"] == "conv5"
    with pytest.raises(CqdError, match=r"--methods: unknown method\(s\) hint .*fitnets, at, sp, rkd, dkd"):
        plan_grid(1, ["res_cub"], ["hint"])
    assert parse_select(["fitnets=0.1,1", "lambda=20"]) == {"fitnets": (0.1, 1.0), "lambda": (20.0,)}


def test_reproduce_runs_every_distiller_with_paired_intervals(tiny, tmp_path):  # noqa: F811
    config = _config(tiny, tmp_path / "runs")
    plan = plan_grid(1, ["res_cub"], list(NEW), epochs=1)
    outcome = run_grid(plan, config, seeds=(0, 1))
    results = load_results(outcome.results_json)
    filled = {c["method"]: c for c in results["cells"] if c["task"] == "res_cub" and c["accuracy"] is not None}
    assert set(filled) == {"upper_bound", "fine_tuning", "cqd", *NEW}
    for method in NEW:
        assert sorted(filled[method]["values"]) == ["0", "1"]
    rows = {(d["method"], d["versus"]): d for d in results["method_differences"] if d["task"] == "res_cub"}
    assert all(d["n"] == 0 for d in results["method_differences"] if d["task"] != "res_cub")  # columns not run: no pairs
    assert set(rows) == {(m, v) for m in NEW for v in ("fine_tuning", "cqd")}
    for (method, versus), row in rows.items():
        values, reference = filled[method]["values"], filled[versus]["values"]
        assert row["n"] == 2 and row["mean"] == pytest.approx(sum(values[s] - reference[s] for s in "01") / 2)
        assert row["low"] <= row["mean"] <= row["high"] and row["tie"] == (row["low"] <= 0 <= row["high"])
    assert "Distillers vs fine-tuning and vs CQD" in outcome.markdown and "| FitNets hint |" in outcome.markdown
    assert [d["task"] for d in results["differences"] if d["n"]] == ["res_cub"]  # CQD - fine-tuning as before


def test_reproduce_cli_takes_distillers_and_their_select(cli, tiny, tmp_path):  # noqa: F811
    root, birds, models = tiny
    result = cli("reproduce", "--tasks", "res_cub", "--methods", "dkd", "--select", "dkd=0.5,2", "--models", models,
                 "--prepared", tmp_path / "prepared", "--cub-root", birds, "--out", tmp_path / "o", "--dry-run")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "select/res_cub/dkd/weight0.5" in result.stdout and "select/res_cub/dkd/weight2" in result.stdout
    assert "res_cub/fine_tuning" in result.stdout and "res_cub/cqd" in result.stdout
    bad = cli("reproduce", "--tasks", "res_cub", "--methods", "dkd", "--select", "dkx=1", "--out", tmp_path / "o2", "--dry-run")
    assert bad.exit_code == 2 and "dkx=1" in bad.stderr and "fitnets=" in bad.stderr


# --------------------------------------------------------------------------- demo


def test_demo_distiller_rows_leave_the_default_table_unchanged(tmp_path):
    from cqd_port.experiments.demo import DemoConfig, run_demo

    def config(out, methods):
        select = {"lambda": (20.0,), **{m: (DISTILLERS[m].weight,) for m in NEW}}
        return DemoConfig(
            out=out, classes=2, train_per_class=3, test_per_class=2, draw_size=64, pretrain_classes=2, pretrain_per_class=3,
            pretrain_epochs=1, epochs=1, batch_size=4, tasks=["edge_cars"], methods=methods, progress=False, workers=0,
            select=select, seeds=(0, 1),
        )  # fmt: skip

    default = run_demo(config(tmp_path / "demo", ["fine_tuning", "cqd"]))
    before = load_results(default.results_json)
    extended = run_demo(config(tmp_path / "demo", ["cqd", *NEW]))
    after = load_results(extended.results_json)
    assert "method_differences" not in before
    paper_cells = {(c["task"], c["method"]): c for c in after["cells"] if c["method"] not in DISTILLERS}
    assert paper_cells == {(c["task"], c["method"]): c for c in before["cells"]}  # every number as before
    assert after["differences"] == before["differences"]
    assert [e for e in after["selection"] if e["method"] == "cqd"] == before["selection"]
    rows = [c for c in after["cells"] if c["method"] in DISTILLERS and c["task"] == "edge_cars"]
    assert [c["method"] for c in rows] == list(NEW) and all(sorted(c["values"]) == ["0", "1"] for c in rows)
    paired = [d for d in after["method_differences"] if d["n"]]
    assert len(paired) == 2 * len(NEW) and {d["task"] for d in paired} == {"edge_cars"} and all(d["n"] == 2 for d in paired)
    assert "Distillers vs fine-tuning and vs CQD" in extended.report and "edge_cars: dkd - cqd" in extended.report
