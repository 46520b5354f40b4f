"""`cqd-port train CONFIG.yaml` / `cqd-port evaluate RUN`: schema errors, every method, resume, evaluation."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from cqd_port.errors import CqdError
from cqd_port.experiments.custom import (
    EXAMPLE_CONFIG,
    METHOD_ALIASES,
    DataSection,
    TrainSection,
    evaluate_run,
    load_config,
    parse_config,
    run_custom,
)
from test_custom_data import make_image_folder

BLUR = "cqd_port.plugins.blur:gaussian_blur"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # 3 classes x 4 images; the seeded split keeps 1 per class for testing: 9 training images
    return make_image_folder(tmp_path_factory.mktemp("imagefolder") / "pets", per_class=4, size=32)


def tiny(folder, out, method="CQD", **train) -> dict:
    """The smallest useful config: 32x32 images, MobileNet-V3-small f and g (batch norm included) from random weights, 1 epoch."""
    return {
        "method": method,
        "out": str(out),
        "data": {"root": str(folder), "size": 32, "prepared": str(out.parent / "prepared"), "degradation": BLUR, "parameters": {"sigma": 1.5}},
        "teacher": {"arch": "mobilenet_v3_small", "weights": "random", "input_size": 32},
        "student": {"arch": "mobilenet_v3_small", "weights": "random", "input_size": 32},
        "train": {"epochs": 1, "batch_size": 5, "schedule": [0.01], "device": "cpu", **train},
    }


# --------------------------------------------------------------------------- schema


def test_example_template_is_the_schema_defaults(tmp_path):
    data = yaml.safe_load(EXAMPLE_CONFIG)
    data["data"]["root"] = str(tmp_path)
    config = parse_config(data)
    assert config.train == TrainSection()  # every train default in the template is the schema's (the paper's)
    from cqd_port.experiments.settings import CHECKPOINT_INTERVAL

    assert TrainSection().checkpoint_every == CHECKPOINT_INTERVAL  # `train` and `reproduce` checkpoint alike
    template_data = {k: v for k, v in vars(config.data).items() if k not in ("root", "degradation", "parameters")}
    assert template_data == {k: v for k, v in vars(DataSection()).items() if k not in ("root", "degradation", "parameters")}
    assert config.method_name == "cqd" and config.student_net.arch == "resnet18" and config.data.parameters == {"sigma": 2.0}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {"rot": "x"}}, r"unknown key 'data.rot'; did you mean 'data.root'\?"),
        ({"trian": {}}, r"unknown key 'trian'; did you mean 'train'\?"),
        ({"train": {"epochs": "five"}}, r"train.epochs: expected an integer, got 'five'; e.g. epochs: 30"),
        ({"train": {"lambda": "big"}}, r"train.lambda: expected a number"),
        ({"train": {"tf32": "yes please"}}, r"train.tf32: expected true or false"),
        ({"train": {"schedule": "imagenet"}}, r"train.schedule: unknown schedule 'imagenet'"),
        ({"train": {"schedule": [0.1, -1]}}, r"train.schedule: .* non-negative"),
        ({"train": {"optimizer": "adam"}}, r"train.optimizer: unknown optimizer 'adam'"),
        ({"train": {"checkpoint_every": -1}}, r"train.checkpoint_every: -1 must be seconds >= 0"),
        ({"train": {"epochs": 0}}, r"train.epochs: 0 must be at least 1"),
        ({"train": {"batch_size": 0}}, r"train.batch_size: 0 must be at least 1"),  # was taken as 'default 128'
        ({"train": {"batch_size": -4}}, r"train.batch_size: -4 must be at least 1"),
        ({"method": "CDQ"}, r"method: unknown method 'CDQ'"),
        ({"data": {"root": ""}}, r"data.root missing"),
        ({"data": {"root": "/nonexistent/folder"}}, r"data.root: folder /nonexistent/folder does not exist"),
        ({"data": {"degradation": "blurry"}}, r"data.degradation: unknown degradation 'blurry'"),
        ({"data": {"degradation": "nosuchpkg.mod:fn"}}, r"data.degradation: degradation plugin 'nosuchpkg.mod:fn': cannot import"),
        ({"data": {"degradation": "lowres"}}, r"data.parameters: only a plugin"),
        ({"data": {"test_fraction": 1.5}}, r"data.test_fraction"),
        ({"teacher": {"arch": "resnet81"}}, r"teacher.arch: unknown network 'resnet81'; did you mean resnet18\?"),
        ({"teacher": {"arch": "resnet18", "weights": "/no/resnet18.pth"}}, r"teacher.weights: file /no/resnet18.pth missing; this project cannot download: download https://download.pytorch.org/models/resnet18"),
        ({"student": {"arch": "vgg-m", "weights": "random", "input_size": None}}, r"student.weights: random initialisation is offered for torchvision"),
        ({"student": {"arch": "vgg-m", "weights": None, "input_size": None}}, r"student.weights missing: vgg-m needs"),
        ({"method": "A-CQD", "student": {"arch": "resnet34"}}, r"student must equal teacher"),
        ({"data": "here"}, r"data: expected a mapping"),
    ],
)
def test_schema_errors_are_one_line_naming_key_and_fix(folder, tmp_path, change, message):
    data = tiny(folder, tmp_path / "run")
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    with pytest.raises(CqdError, match=message) as info:
        parse_config(data)
    assert "\n" not in str(info.value)


def test_set_overrides_and_yaml_errors(folder, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny(folder, tmp_path / "run")))
    config = load_config(path, ["train.epochs=3", "train.schedule=[0.1, 0.01]", "method=A,B", "data.parameters.sigma=2.5"])
    assert config.train.epochs == 3 and config.train.schedule == [0.1, 0.01]
    assert config.method_name == "staged" and config.data.parameters == {"sigma": 2.5}
    with pytest.raises(CqdError, match=r"--set train.epochs: write it as key=value"):
        load_config(path, ["train.epochs"])
    with pytest.raises(CqdError, match=r"unknown key 'train.epoch'; did you mean 'train.epochs'"):
        load_config(path, ["train.epoch=2"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: CQD\ndata:\n  root: [unclosed\n")
    with pytest.raises(CqdError, match=r"broken.yaml:\d+: .*fix the YAML syntax"):
        load_config(broken)
    with pytest.raises(CqdError, match="cqd-port train --example"):
        load_config(tmp_path / "missing.yaml")


def test_method_aliases_cover_the_paper():
    assert {METHOD_ALIASES[m.lower()] for m in ("A", "B", "A+B", "A,B", "CQD", "A-CQD")} == {
        "upper_bound", "fine_tuning", "data_augmentation", "staged", "cqd", "a_cqd"
    }


def test_cli_example_and_one_line_error(cli, tmp_path):
    result = cli("train", "--example")
    assert result.exit_code == 0 and yaml.safe_load(result.stdout)["method"] == "CQD"
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: CQD\ntrain:\n  epochs: -3\n")
    result = cli("train", str(bad))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "data.root missing" in result.stderr


# --------------------------------------------------------------------------- running


def test_every_method_runs_on_an_image_folder_with_the_plugin_and_a_torchvision_student(folder, tmp_path):
    out = tmp_path / "run"
    accuracies = {}
    for method in ("A", "B", "A+B", "A,B", "CQD", "A-CQD", "no_adaptation"):
        outcome = run_custom(parse_config(tiny(folder, out, method)), progress=False)
        record = outcome.record
        assert record["status"] == "finished", method
        accuracies[method] = record["accuracy"]
        assert 0.0 <= record["accuracy"] <= 100.0
    runs = sorted(p.parent.name for p in out.glob("pets/*/run.json"))
    assert runs == ["a_cqd", "cqd", "data_augmentation", "fine_tuning", "no_adaptation", "staged", "upper_bound"]
    cqd = json.loads((out / "pets" / "cqd" / "run.json").read_text())
    assert cqd["objective"]["kind"] == "cqd" and cqd["objective"]["lambda"] == 200.0 and cqd["train_images"] == 9
    assert cqd["test"] == f"pets/{BLUR}" and cqd["train"] == [f"pets/{BLUR}"]
    augmentation = json.loads((out / "pets" / "data_augmentation" / "run.json").read_text())
    assert augmentation["num_classes"] == 3 and augmentation["label_range"] == [0, 3] and augmentation["train_images"] == 18
    assert (out / "pets" / "cqd" / "net-train.pdf").is_file() and (out / "pets" / "upper_bound" / "teacher-logits").is_dir()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["name"] == "pets" and saved["student"]["arch"] == "mobilenet_v3_small" and saved["method"] == "no_adaptation"
    description = (out / "description.txt").read_text()
    assert "seeded stratified split: 0.3 of each class for testing, seed 0" in description
    assert "MatConvNet SGD" in description and "ImageNet mean and std" in description
    # evaluate: the CQD model on its own test domain, and on the unblurred images
    summary, path = evaluate_run(out, method="CQD", progress=False)
    assert summary["images"] == 3 and summary["accuracy"] == pytest.approx(accuracies["CQD"])
    summary, path = evaluate_run(out, method="CQD", degradation="original", split="all", progress=False)
    assert summary["images"] == 12 and path.is_file()


def _interrupt_after_first_epoch(monkeypatch):
    import cqd_port.train.trainer as trainer

    real = trainer.save_training_checkpoint

    class Interrupted(KeyboardInterrupt):  # as Ctrl-C or a kill: the run stays 'running' and resumes
        pass

    def save_then_stop(path, checkpoint):
        real(path, checkpoint)
        if checkpoint.epoch == 1 and "cqd" in str(path):
            raise Interrupted()

    monkeypatch.setattr(trainer, "save_training_checkpoint", save_then_stop)
    return Interrupted


def test_interrupted_run_resumes_to_the_same_weights(folder, tmp_path, monkeypatch, capsys):
    whole = run_custom(parse_config(tiny(folder, tmp_path / "whole", epochs=2, optimizer="torch")), progress=False)
    assert whole.record["resumed_from_epoch"] == 0 and whole.record["optimizer"] == "torch"

    config = parse_config(tiny(folder, tmp_path / "broken", epochs=2, optimizer="torch", checkpoint_every=0))  # after every epoch
    interrupted = _interrupt_after_first_epoch(monkeypatch)
    with pytest.raises(interrupted):
        run_custom(config, progress=False)
    monkeypatch.undo()
    # Ctrl-C is recorded (it used to stay 'running'); the same command resumes and says where
    assert json.loads((tmp_path / "broken" / "pets" / "cqd" / "run.json").read_text())["status"] == "interrupted"
    capsys.readouterr()
    resumed = run_custom(config, progress=False)
    assert resumed.record["resumed_from_epoch"] == 1
    said = capsys.readouterr().out
    assert "pets/cqd: resuming at epoch 2" in said and "pets/cqd: epoch 2/2 done" in said  # --no-progress: a line per epoch
    a = torch.load(tmp_path / "whole" / "pets" / "cqd" / "final.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "broken" / "pets" / "cqd" / "final.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    changed = parse_config(tiny(folder, tmp_path / "broken", epochs=2, optimizer="torch", **{"lambda": 1}))
    with pytest.raises(CqdError, match=r"pets/cqd holds a run made with other settings \(lambda\); use a new --out, or --rerun") as info:
        run_custom(changed, progress=False)
    assert "\n" not in str(info.value)


def test_custom_demo_end_to_end_tiny(tmp_path):
    from cqd_port.experiments.custom_demo import CustomDemoConfig, run_custom_demo

    config = CustomDemoConfig(
        out=tmp_path / "demo", arch="mobilenet_v3_small", image_size=32, classes=2, train_per_class=3, test_per_class=2,
        epochs=1, batch_size=4, progress=False,
    )
    outcome = run_custom_demo(config)
    assert set(outcome.accuracies) == {"A", "no_adaptation", "B", "CQD"}
    assert "| CQD (g on B, distilled from f) |" in outcome.report and "SYNTHETIC" in outcome.report
    saved = yaml.safe_load((tmp_path / "demo" / "demo-custom.yaml").read_text())
    assert parse_config(saved).method_name == "cqd"  # the written config is a valid `cqd-port train` file
    assert (tmp_path / "demo" / "data" / "birds" / "images" / "train.txt").read_text().count("\n") == 6


def test_evaluate_refuses_other_classes_and_unfinished_runs(folder, tmp_path):
    config = parse_config(tiny(folder, tmp_path / "run", "B"))
    with pytest.raises(CqdError, match="config.yaml missing"):
        evaluate_run(tmp_path / "run", progress=False)
    run_custom(config, progress=False)
    other = make_image_folder(tmp_path / "zoo", classes=("ant", "bee", "cow"), per_class=2, size=32)
    with pytest.raises(CqdError, match=r"other classes than the training data \('ant' vs 'cat'\)"):
        evaluate_run(tmp_path / "run", data_root=other, progress=False)
    with pytest.raises(CqdError, match=r"holds no CQD run \(pets/cqd\); it has B"):  # issue 17: it said 'has not finished'
        evaluate_run(tmp_path / "run", method="CQD", progress=False)


def test_the_out_folder_is_locked_while_training_and_a_stale_lock_is_taken_over(folder, tmp_path, monkeypatch, capsys):
    import cqd_port.experiments.run as runner

    out = tmp_path / "locked"
    out.mkdir()
    # a lock left by a process that is gone (this host, a pid that cannot be alive)
    import socket

    (out / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 12345, "time": "then"}))
    real, seen = runner.execute_run, []

    def execute_run_checking_the_lock(node, job, space, data, *args, **kwargs):
        holder = json.loads((out / ".lock").read_text())
        seen.append(holder["pid"])
        return real(node, job, space, data, *args, **kwargs)

    monkeypatch.setattr(runner, "execute_run", execute_run_checking_the_lock)
    outcome = run_custom(parse_config(tiny(folder, out, method="fine_tuning")), progress=False)
    import os

    assert seen and set(seen) == {os.getpid()}  # every run trained under this process's lock
    assert "taking over a stale lock" in capsys.readouterr().out
    assert not (out / ".lock").exists() and outcome.record["status"] == "finished"


# --------------------------------------------------------------------------- issue 16: runs never reused, started or finished wrongly


def _copy_folder(folder, target):
    import shutil

    shutil.copytree(folder, target)
    return target


def test_train_never_reuses_a_run_after_images_were_added_and_evaluate_checks_the_split(folder, tmp_path):
    import shutil

    data = _copy_folder(folder, tmp_path / "pets")
    config = parse_config(tiny(data, tmp_path / "run", method="B"))
    first = run_custom(config, progress=False)
    assert first.record["status"] == "finished"
    evaluate_run(tmp_path / "run", progress=False)  # the data it was trained on: fine
    shutil.copy(data / "cat" / "000.png", data / "cat" / "100.png")  # an image added: the seeded split moves
    shutil.copy(data / "dog" / "000.png", data / "dog" / "100.png")
    with pytest.raises(CqdError, match=r"evaluate|images or split of data.root .* changed since .* retrain") as info:
        evaluate_run(tmp_path / "run", progress=False)  # its test set could now hold training images
    assert "\n" not in str(info.value)
    with pytest.raises(CqdError, match=r"pets/fine_tuning holds a run made with other settings \(data pets/.*split\).*--rerun"):
        run_custom(config, progress=False)  # never "reused" with the old numbers
    again = run_custom(config, progress=False, rerun=True)
    assert again.record["status"] == "finished"
    assert again.record["train_images"] + again.record["test_images"] == first.record["train_images"] + first.record["test_images"] + 2
    identity = json.loads((tmp_path / "run" / "pets" / "fine_tuning" / "identity.json").read_text())["job"]
    summary, _ = evaluate_run(tmp_path / "run", progress=False)  # retrained on the current split: evaluates
    assert summary["images"] >= 3 and identity["split"]


def test_a_diverged_teacher_is_not_finished_and_cqd_is_not_started(folder, tmp_path):
    out = tmp_path / "run"
    config = parse_config(tiny(folder, out, schedule=[1.0e6]))  # f's learning rate blows it up
    with pytest.raises(CqdError, match=r"pets/cqd not started: its teacher f \(pets/upper_bound\) ended 'diverged at epoch 1'.*lr_scale") as info:
        run_custom(config, progress=False)
    assert "\n" not in str(info.value)
    record = json.loads((out / "pets" / "upper_bound" / "run.json").read_text())
    assert record["status"] == "diverged at epoch 1" and "accuracy" not in record
    assert not (out / "pets" / "upper_bound" / "final.pt").exists()
    assert not (out / "pets" / "cqd").exists()  # the student was never started
    fixed = run_custom(parse_config(tiny(folder, out)), progress=False)  # the corrected rate is accepted in the same folder
    assert {r["status"] for r in fixed.records.values()} == {"finished"}


def test_divergence_is_a_huge_or_non_finite_objective():
    from cqd_port.experiments.run import divergence

    assert divergence([{"epoch": 1, "train": {"objective": 3.4}, "test": {"objective": 2.9}}]) is None
    # the VGG-M teacher: 343 then 6.8e24, test objective NaN
    history = [{"epoch": 1, "train": {"objective": 343.0}}, {"epoch": 2, "train": {"objective": 6.8e24}, "test": {"objective": float("nan")}}]
    assert divergence(history)[0] == 2
    assert divergence([{"epoch": 1, "train": {"objective": 2.0}, "test": {"objective": float("nan")}}])[0] == 1


@pytest.mark.parametrize(
    "body, message",
    [
        ("    raise ValueError('boom')", r"plugin 'badplug_{n}:degrade' failed on .*ValueError: boom"),
        ("    return image.astype('float32')", r"plugin 'badplug_{n}:degrade' returned dtype float32"),
        ("    return image[:8]", r"plugin 'badplug_{n}:degrade' returned .*shape"),
    ],
)
def test_a_broken_plugin_is_refused_before_anything_is_trained_or_written(folder, tmp_path, monkeypatch, body, message):
    import sys

    n = abs(hash(body)) % 10**6
    (tmp_path / f"badplug_{n}.py").write_text(f"def degrade(image, seed, sigma=1.0):\n{body}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tiny(folder, tmp_path / "run")
    data["data"].update(degradation=f"badplug_{n}:degrade", parameters={"sigma": 1.0})
    with pytest.raises(CqdError, match=message.format(n=n)) as info:
        run_custom(parse_config(data), progress=False)
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "run").rglob("*.pt")) and not list((tmp_path / "run").rglob("run.json"))
    sys.modules.pop(f"badplug_{n}", None)


def test_a_misspelt_plugin_parameter_is_refused_before_training(folder, tmp_path):
    data = tiny(folder, tmp_path / "run")
    data["data"]["parameters"] = {"sigmaa": 1.5}
    with pytest.raises(CqdError, match=r"gaussian_blur"):
        run_custom(parse_config(data), progress=False)
    assert not list((tmp_path / "run").rglob("*.pt")) and not list((tmp_path / "run").rglob("run.json"))


def test_a_corrected_failed_start_is_accepted_in_the_same_folder(folder, tmp_path):
    wrong = parse_config(tiny(folder, tmp_path / "run", method="A") | {"data": {**tiny(folder, tmp_path / "run")["data"], "high_quality": "localized"}})
    with pytest.raises(CqdError, match=r"bounding box"):
        run_custom(wrong, progress=False)  # this image folder has no boxes.txt
    fixed = run_custom(parse_config(tiny(folder, tmp_path / "run", method="A")), progress=False)
    assert fixed.record["status"] == "finished"
