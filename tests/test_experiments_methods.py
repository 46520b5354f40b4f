"""Every method's plumbing on a tiny synthetic task, resume, `reproduce` and `demo` end to end.

Images are 64 px (the smallest VGG-M takes), networks 1/8 wide, 2 epochs:
these tests check what each method trains on, where it starts from and what
it is distilled towards, not how well it does.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import cqd_port.train.trainer as trainer_module
from cqd_port.data.batches import ImageFolderDataset
from cqd_port.data.degrade import crop_to_box
from cqd_port.data.images import read_image_rgb
from cqd_port.data.prepare import read_dataset, read_prepared
from cqd_port.imresize import imresize
from cqd_port.layout import image_to_nchw
from cqd_port.data.synth import make_synthetic_dataset
from cqd_port.experiments.grid import run_grid
from cqd_port.experiments.plan import plan_grid
from cqd_port.experiments.settings import GridConfig
from cqd_port.experiments.networks import input_normalization
from cqd_port.experiments.results import load_results
from cqd_port.experiments.tasks import CUB_A, DataVariant
from cqd_port.models.vgg import init_state, vgg_m_specs
from matconvnet_weights.convert import load_model, save_checkpoint

CLASSES = 3
TRAIN_PER_CLASS = 4
TEST_PER_CLASS = 2
PREPARE_64 = {"out_size": 64, "lowres_size": 14, "distortion_grid_start": 2, "distortion_grid_step": 5, "distortion_sigma": 1.0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A synthetic CUB-layout dataset and a random 'ImageNet' VGG-M (1/8 wide, 64 px) saved as imagenet-vgg-m.pt."""
    root = tmp_path_factory.mktemp("tiny")
    birds = make_synthetic_dataset(root / "birds", classes=CLASSES, train_per_class=TRAIN_PER_CLASS, test_per_class=TEST_PER_CLASS, size=64, seed=3, style="birds")
    specs = vgg_m_specs(num_classes=10, width=0.125, input_size=64, softmax=True)
    state = init_state(specs, seed=1, method="xavierimproved")
    meta = {"normalization": {"imageSize": [64, 64, 3], "averageImage": np.array([120.0, 115.0, 100.0], dtype=np.float32).reshape(1, 1, 3)}}
    models = root / "models"
    save_checkpoint(models / "imagenet-vgg-m.pt", specs, state, meta)
    return root, birds, models


def _config(tiny, out: Path) -> GridConfig:
    root, birds, models = tiny
    return GridConfig(
        out=out,
        prepared=root / "prepared",
        models=models,
        cub_root=birds,
        device="cpu",
        workers=0,
        progress=False,
        prepare_config=PREPARE_64,
        batch_size=4,
    )


class _Recorder:
    """Wraps the trainer's `train` to record what each run starts from and trains on."""

    def __init__(self, monkeypatch, fail_at=None):
        self.calls: dict[str, dict] = {}
        self.real = trainer_module.train
        self.fail_at = fail_at
        monkeypatch.setattr(trainer_module, "train", self)

    def __call__(self, model, train_set, test_set, config, objective, run_dir, teacher_logits=None, multipliers=None, progress=True, on_step=None, **callbacks):
        key = f"{Path(run_dir).parent.name}/{Path(run_dir).name}"
        self.calls[key] = {
            "initial": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "train_len": len(train_set),
            "train_labels": [int(train_set[i][1]) for i in range(len(train_set))],
            "teacher_logits": None if teacher_logits is None else teacher_logits.clone(),
            "label_range": config.label_range,
            "objective": objective.to_dict(),
            "multipliers": dict(multipliers or {}),
        }
        if self.fail_at is not None:
            def on_step(epoch, step, stats, _fail=self.fail_at):
                if (epoch, step) == _fail:
                    raise KeyboardInterrupt("simulated interruption")
        return self.real(model, train_set, test_set, config, objective, run_dir, teacher_logits, multipliers, progress, on_step, **callbacks)


@pytest.fixture(scope="module")
def grid_run(tiny, tmp_path_factory):
    """Table 1's local_cub column, every method, 2 epochs; the trainer calls recorded."""
    monkeypatch = pytest.MonkeyPatch()
    recorder = _Recorder(monkeypatch)
    config = _config(tiny, tmp_path_factory.mktemp("grid") / "runs")
    plan = plan_grid(1, ["local_cub"], None, epochs=2)
    try:
        outcome = run_grid(plan, config)
    finally:
        monkeypatch.undo()
    return config, plan, outcome, recorder.calls


def test_every_cell_filled_and_results_valid(grid_run):
    config, plan, outcome, calls = grid_run
    results = load_results(outcome.results_json)
    assert results["table"] == 1 and results["synthetic"] is True  # prepared from a synthetic dataset
    assert len(results["cells"]) == 49  # the whole table, whatever subset ran
    ours = [c for c in results["cells"] if c["task"] == "local_cub"]
    assert [c["method"] for c in ours] == ["upper_bound", "no_adaptation", "fine_tuning", "data_augmentation", "staged", "cqd", "a_cqd"]
    for cell in ours:
        assert cell["accuracy"] is not None and 0.0 <= cell["accuracy"] <= 100.0
    run_of = {(c.task, c.method): c.run for c in plan_grid(1, epochs=2).cells}
    for cell in results["cells"]:  # another task's cell is filled only where it shares a run of this one (the CUB A model)
        assert (cell["accuracy"] is not None) == (run_of[(cell["task"], cell["method"])] in plan.runs), cell
    assert "pending" in outcome.markdown
    assert set(calls) == {f"local_cub/{m}" for m in ("upper_bound", "fine_tuning", "data_augmentation", "staged", "cqd", "a_cqd")}
    for key in calls:
        folder = Path(config.out) / key
        for name in ("run.json", "checkpoint.pt", "final.pt", "history.json", "net-train.pdf", "evaluation.json"):
            assert (folder / name).is_file(), f"{key}/{name}"
    no_adapt = json.loads((Path(config.out) / "local_cub/no_adaptation/run.json").read_text())
    evaluation = json.loads((Path(config.out) / "local_cub/no_adaptation/evaluation.json").read_text())
    assert no_adapt["status"] == "finished" and no_adapt["accuracy"] == pytest.approx(evaluation["accuracy"])
    assert "local_cub/no_adaptation" not in calls  # evaluation only, no training


def test_a_plus_b_label_range_and_training_set(grid_run):
    config, _, _, calls = grid_run
    call = calls["local_cub/data_augmentation"]
    n_train = CLASSES * TRAIN_PER_CLASS
    assert call["train_len"] == 2 * n_train  # A and B training images
    assert call["initial"]["fc8.weight"].shape[0] == 2 * CLASSES  # released code: 2k-way fc8
    assert max(call["train_labels"]) == CLASSES - 1  # labels 1..k in both domains
    assert call["label_range"] == (0, CLASSES)  # test argmax over the first k outputs
    final = load_model(Path(config.out) / "local_cub/data_augmentation/final.pt")
    assert final.state_dict()["fc8.weight"].shape[0] == 2 * CLASSES
    assert calls["local_cub/fine_tuning"]["train_len"] == n_train


def test_staged_and_a_cqd_start_from_whole_a_model(grid_run):
    config, _, _, calls = grid_run
    a_state = load_model(Path(config.out) / "local_cub/upper_bound/final.pt").state_dict()
    for key in ("local_cub/staged", "local_cub/a_cqd"):
        initial = calls[key]["initial"]
        assert set(initial) == set(a_state)
        for name, value in a_state.items():
            assert torch.equal(initial[name], value), f"{key}: {name} differs from the A model"
        assert calls[key]["multipliers"]["fc8.weight"] == (10.0, 1.0)
        assert calls[key]["multipliers"]["fc8.bias"] == (20.0, 0.0)
    assert calls["local_cub/staged"]["teacher_logits"] is None


def test_fresh_starts_from_imagenet_model(grid_run, tiny):
    _, _, models = tiny
    imagenet = load_model(models / "imagenet-vgg-m.pt").state_dict()
    for key in ("local_cub/upper_bound", "local_cub/fine_tuning", "local_cub/cqd"):
        initial = grid_run[3][key]["initial"]
        assert torch.equal(initial["conv1.weight"], imagenet["conv1.weight"])
        assert torch.equal(initial["fc7.bias"], imagenet["fc7.bias"])
        assert initial["fc8.weight"].shape[0] == CLASSES


def test_cqd_teacher_logits_aligned_by_index(grid_run):
    config, _, _, calls = grid_run
    call = calls["local_cub/cqd"]
    assert call["objective"] == {"kind": "cqd", "lambda": 200.0, "temperature": 10.0}
    logits = call["teacher_logits"]
    teacher = load_model(Path(config.out) / "local_cub/upper_bound/final.pt")
    size, average = input_normalization(teacher.meta)
    index_a = read_prepared(config.catalog().variant_dir(CUB_A))
    index_b = read_prepared(config.catalog().variant_dir(DataVariant("cub", "original")))
    b_train = index_b.train_records()
    assert logits.shape == (len(b_train), CLASSES)
    raw = read_dataset("cub", config.cub_root)
    raw_by_path = {r.path: r for r in raw.records}
    assert {r.path for r in index_a.train_records()} == {r.path for r in b_train}
    with torch.no_grad():
        for i, record in enumerate(b_train):  # row i: the teacher on the A (localized) view of B's image i
            # domain A as the release fed it: the NATIVE image cropped to the box, resized in single precision
            original = raw_by_path[record.path]
            crop = crop_to_box(read_image_rgb(raw.resolve(original)), original.box).astype(np.float32)
            image = image_to_nchw(imresize(crop, size=size, method="bicubic").astype(np.float32) - average)
            expected = teacher(image).reshape(-1)
            assert torch.allclose(logits[i], expected, atol=1e-4), f"row {i} ({record.path})"
            prepared = ImageFolderDataset(index_a, [r for r in index_a.train_records() if r.path == record.path], size, average)[0][0]
            assert not torch.equal(prepared[None], image)  # not the re-encoded 64 px JPEG of domain A
    assert torch.equal(calls["local_cub/a_cqd"]["teacher_logits"], logits)  # cached once, reused
    assert list((Path(config.out) / "local_cub/upper_bound/teacher-logits").glob("*.pt"))


def test_rerun_skips_finished_runs(grid_run, monkeypatch):
    config, plan, outcome, _ = grid_run
    before = outcome.results_json.read_text()
    recorder = _Recorder(monkeypatch)
    again = run_grid(plan, config)
    assert recorder.calls == {}
    assert again.results_json.read_text() == before


def test_interrupted_run_continues_from_checkpoint(tiny, tmp_path, monkeypatch):
    config = replace(_config(tiny, tmp_path / "runs"), checkpoint_interval=0.0)  # a checkpoint after every epoch
    plan = plan_grid(1, ["local_cub"], ["fine_tuning"], epochs=2)
    _Recorder(monkeypatch, fail_at=(2, 1))
    with pytest.raises(KeyboardInterrupt):
        run_grid(plan, config)
    folder = tmp_path / "runs/local_cub/fine_tuning"
    assert json.loads((folder / "run.json").read_text())["status"] == "interrupted"  # issue 17: Ctrl-C is recorded (it stayed "running")
    assert not (folder / "final.pt").exists()
    first_epoch = json.loads((folder / "history.json").read_text())
    assert [h["epoch"] for h in first_epoch] == [1]
    monkeypatch.undo()
    run_grid(plan, config)
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "finished" and record["resumed_from_epoch"] == 1
    history = json.loads((folder / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and history[0] == first_epoch[0]


def test_reproduce_cli_on_synthetic_then_resume(cli, tiny, grid_run, tmp_path):
    root, birds, models = tiny
    prepared = grid_run[0].prepared  # prepared at 64 px by the grid fixture
    out = tmp_path / "table1"
    args = ("reproduce", "--table", "1", "--tasks", "local_cub", "--methods", "upper_bound,no_adaptation,cqd", "--epochs", "1",
            "--models", models, "--prepared", prepared, "--out", out, "--device", "cpu", "--workers", "0")  # fmt: skip
    first = cli(*args)
    assert first.exit_code == 0, first.stderr
    results = load_results(out / "results.json")
    assert results["synthetic"] is True
    filled = [(c["task"], c["method"]) for c in results["cells"] if c["task"] == "local_cub" and c["accuracy"] is not None]
    assert filled == [("local_cub", m) for m in ("upper_bound", "no_adaptation", "cqd")]
    assert results["cells"][0]["paper"] == 67.0
    assert "Upper bound" in (out / "results.md").read_text()
    second = cli(*args)
    assert second.exit_code == 0, second.stderr
    assert second.stdout.count("done, reused") == 3  # every run of the grid
    assert "local_cub/no_adaptation: done, reused" in second.stdout
    assert load_results(out / "results.json") == results


def test_reproduce_missing_weights_and_data(cli, tiny, grid_run, tmp_path):
    root, birds, models = tiny
    no_models = cli("reproduce", "--tasks", "local_cub", "--methods", "upper_bound", "--models", tmp_path / "empty",
                    "--prepared", grid_run[0].prepared, "--out", tmp_path / "o1")  # fmt: skip
    assert no_models.exit_code == 2
    assert "imagenet-vgg-m" in no_models.stderr and "cqd-port convert-weights" in no_models.stderr
    assert "Traceback" not in no_models.stderr
    no_data = cli("reproduce", "--tasks", "res_cub", "--methods", "fine_tuning", "--models", models,
                  "--prepared", tmp_path / "nothing", "--out", tmp_path / "o2")  # fmt: skip
    assert no_data.exit_code == 2
    assert "--cub-root" in no_data.stderr and "cqd-port prepare" in no_data.stderr
    assert not (tmp_path / "o2").exists()


def test_demo_wiring_on_minimal_sizes(tmp_path, capsys):
    from cqd_port.experiments.demo import DemoConfig, run_demo

    config = DemoConfig(
        out=tmp_path / "demo", classes=2, train_per_class=3, test_per_class=2, draw_size=64, pretrain_classes=2,
        pretrain_per_class=3, pretrain_epochs=1, epochs=1, batch_size=4, tasks=["edge_cars"],
        methods=["fine_tuning", "cqd"], progress=True, workers=0, select={"lambda": (20.0, 200.0)},
    )  # fmt: skip
    outcome = run_demo(config)
    printed = capsys.readouterr().out  # not a terminal: one line per finished run, no bars
    assert re.search(r"^\[5/5\] edge_cars/cqd: \d+\.\d% \(\d+ m \d\d s\)$", printed, re.M), printed
    results = load_results(outcome.results_json)
    assert results["synthetic"] is True
    filled = [(c["task"], c["method"]) for c in results["cells"] if c["accuracy"] is not None]
    assert filled == [("res_cars", "upper_bound"), ("edge_cars", "upper_bound"), ("edge_cars", "fine_tuning"), ("edge_cars", "cqd")]  # + the CARS A model
    (selection,) = results["selection"]  # lambda chosen on validation for the one distilling run
    assert [c["lambda"] for c in selection["candidates"]] == [20.0, 200.0]
    best = max(selection["candidates"], key=lambda c: c["val_accuracy"])
    assert selection["chosen"]["lambda"] == best["lambda"]
    record = json.loads((tmp_path / "demo/edge_cars/cqd/run.json").read_text())
    assert record["objective"]["lambda"] == best["lambda"]  # the final run trained with the chosen lambda
    assert "lambda chosen on a validation" in outcome.report
    assert (tmp_path / "demo/prepared/cars/edges_sobel/manifest.json").is_file()  # Sobel edges without an SED model
    assert json.loads((tmp_path / "demo/data/cars/synthetic.json").read_text())["config"]["style"] == "cars"
    assert (tmp_path / "demo/pretrain/final.pt").is_file()
    assert "SYNTHETIC" in outcome.report and "Sobel" in outcome.report
    assert "edge_cars: CQD" in outcome.report
    # where the wall time went, phase by phase, printed on the report's last line
    assert list(outcome.phases) == ["data", "stand-in", "data variants", "5 runs"]
    assert all(v >= 0 for v in outcome.phases.values()) and sum(outcome.phases.values()) <= outcome.seconds + 1e-6
    assert re.search(r"wall time \d+\.\d min \(data \d+ s, stand-in \d+ s, data variants \d+ s, 5 runs \d+ s\)$", outcome.report)


def test_parallel_workers_match_the_sequential_grid(grid_run, tiny, tmp_path):
    """`--gpus 0,1` schedules runs over two worker processes (CPU slots here), dependencies first,
    and ends with the same models as the sequential grid."""
    sequential_config, _, _, _ = grid_run
    plan = plan_grid(1, ["local_cub"], ["upper_bound", "fine_tuning", "cqd"], epochs=2)
    config = replace(_config(tiny, tmp_path / "runs"), gpus=(0, 1))
    started: list[str] = []
    outcome = run_grid(plan, config, on_run=lambda key, record: started.append(key))
    assert set(started) == set(plan.runs)
    assert started.index("local_cub/upper_bound") < started.index("local_cub/cqd")  # the teacher finished first
    results = load_results(outcome.results_json)
    assert {c["method"] for c in results["cells"] if c["task"] == "local_cub" and c["accuracy"] is not None} == {"upper_bound", "fine_tuning", "cqd"}
    for key in plan.runs:
        ours = torch.load(Path(config.out) / key / "final.pt", weights_only=True)["state_dict"]
        reference = torch.load(Path(sequential_config.out) / key / "final.pt", weights_only=True)["state_dict"]
        assert ours.keys() == reference.keys()
        for name in ours:
            torch.testing.assert_close(ours[name], reference[name], rtol=1e-5, atol=1e-6, msg=f"{key}: {name}")


def test_test_set_scored_after_the_last_epoch_only_leaves_every_number(grid_run, tiny, tmp_path):
    """`evaluate_every_epoch=False` (the demo's setting) drops the per-epoch test rows, nothing else."""
    sequential_config, _, _, _ = grid_run
    plan = plan_grid(1, ["local_cub"], ["upper_bound", "fine_tuning"], epochs=2)
    config = replace(_config(tiny, tmp_path / "runs"), evaluate_every_epoch=False)
    run_grid(plan, config)
    for key in plan.runs:
        ours, reference = (json.loads((Path(c.out) / key / "run.json").read_text()) for c in (config, sequential_config))
        assert ours["accuracy"] == reference["accuracy"], key
        history = json.loads((Path(config.out) / key / "history.json").read_text())
        assert ["test" in row for row in history] == [False, True], key  # the grid_run's runs were scored after each epoch
        weights = torch.load(Path(config.out) / key / "final.pt", weights_only=True)["state_dict"]
        expected = torch.load(Path(sequential_config.out) / key / "final.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(weights[name], expected[name]) for name in expected), key


def test_demo_standin_is_the_same_on_every_run(tmp_path):
    """The stand-in's dropout is seeded: two pretrainings agree whatever the global RNG state."""
    from cqd_port.experiments.demo import DemoConfig, pretrain_standin

    weights = []
    for name, global_seed in (("a", 1), ("b", 2)):
        torch.manual_seed(global_seed)
        config = DemoConfig(out=tmp_path / name, draw_size=64, pretrain_classes=2, pretrain_per_class=3, pretrain_epochs=2, batch_size=4, progress=False, workers=0)
        weights.append(torch.load(pretrain_standin(config, progress=False), weights_only=True)["state_dict"])
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_demo_verdict_within_one_image_is_a_tie():
    from cqd_port.experiments.demo import verdict

    one_image = 100 / 360
    percent = lambda images: 100 * images / 360  # noqa: E731
    assert verdict(percent(197), percent(196), one_image).startswith("ties")  # 54.7 vs 54.4: "+0.3" is one image
    assert verdict(percent(196), percent(197), one_image).startswith("ties")
    assert verdict(percent(198), percent(196), one_image) == "beats"
    assert verdict(percent(194), percent(196), one_image) == "does NOT beat"
def test_bicubic_lowres_kernel_has_its_own_folder_and_is_recorded(tiny, tmp_path):
    from cqd_port.errors import CqdError
    from cqd_port.experiments.notes import LOWRES_BICUBIC

    config = replace(_config(tiny, tmp_path / "runs"), prepared=tmp_path / "prepared", lowres_kernel="bicubic")
    plan = plan_grid(1, ["res_cub"], ["fine_tuning"], epochs=1)
    outcome = run_grid(plan, config)
    manifest = json.loads((tmp_path / "prepared/cub/lowres-bicubic/manifest.json").read_text())
    assert manifest["parameters"]["lowres_kernel"] == "bicubic"
    assert not (tmp_path / "prepared/cub/lowres").exists()  # the bilinear default's folder is never touched
    record = json.loads((tmp_path / "runs/res_cub/fine_tuning/run.json").read_text())
    assert record["lowres_kernel"] == "bicubic" and record["test"] == "cub/lowres-bicubic"
    assert record["notes"] == [LOWRES_BICUBIC]
    results = load_results(outcome.results_json)
    assert results["settings"]["lowres_kernel"] == "bicubic"
    cell = next(c for c in results["cells"] if (c["task"], c["method"]) == ("res_cub", "fine_tuning"))  # results cover the whole table
    assert cell["notes"] == [LOWRES_BICUBIC]
    assert "[1] " + LOWRES_BICUBIC in outcome.markdown
    # The same --out with the default kernel is refused: a bicubic run is never reused as a bilinear one.
    with pytest.raises(CqdError, match="other settings"):
        run_grid(plan, replace(config, lowres_kernel="bilinear"))


def test_reproduce_dry_run_threads_the_release_options(cli, tiny, tmp_path):
    _, _, models = tiny
    common = ("reproduce", "--tasks", "res_cub", "--models", models, "--prepared", tmp_path / "p", "--out", tmp_path / "o", "--dry-run")
    release = cli(*common, "--lowres-kernel", "bicubic", "--a-cqd-start", "imagenet")
    assert release.exit_code == 0, release.stderr
    assert "cub/lowres-bicubic" in release.stdout and str(tmp_path / "p/cub/lowres-bicubic") in release.stdout
    assert "res_cub / a_cqd -> res_cub/cqd  (shared run)" in release.stdout  # the release's A-CQD is CQD
    default = cli(*common)
    assert "cub/lowres-bicubic" not in default.stdout and "res_cub / a_cqd -> res_cub/a_cqd" in default.stdout
    for option, value in (("--lowres-kernel", "lanczos3"), ("--a-cqd-start", "staged"), ("--checkpoint-every", "-5")):
        bad = cli(*common, option, value)
        assert bad.exit_code == 2 and option in bad.stderr and "Traceback" not in bad.stderr
