"""Every distillation method through `train()`: f and g of different widths and input sizes, the connector
trained with g, exact resume after a crash, no host sync in a step, and the per-epoch metrics files."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from cqd_port.data.store import ImageStore
from cqd_port.errors import CqdError
from cqd_port.models.features import LOGITS
from cqd_port.models.network import SimpleNetwork
from cqd_port.train.checkpoint import load_training_checkpoint
from cqd_port.train.distill_spec import DistillSpec
from cqd_port.train.objective import Objective
from cqd_port.train.teacher import teacher_targets
from cqd_port.train.trainer import train, train_step

from test_train_loop import K, Blobs, config, tiny_net, tiny_specs
from test_train_sync import host_reads  # noqa: F401 - the fixture

SPECS = {
    "fitnets": DistillSpec("fitnets", 0.05, teacher_layer="conv1", student_layer="conv1"),
    "at": DistillSpec("at", 50.0, teacher_layer="relu1", student_layer="relu1"),
    "sp": DistillSpec("sp", 20.0, teacher_layer="pool1", student_layer="pool1"),
    "rkd": DistillSpec("rkd", 0.5, teacher_layer=LOGITS, student_layer="pool1"),
    "dkd": DistillSpec("dkd", 1.0, temperature=4.0),
}


def teacher_net() -> SimpleNetwork:
    """f: 10 channels on 16 x 16 images (g: 6 channels on 8 x 8)."""
    g = torch.Generator().manual_seed(21)
    state = {
        "conv1.weight": 0.2 * torch.randn(10, 3, 3, 3, generator=g),
        "conv1.bias": 0.1 * torch.randn(10, generator=g),
        "fc8.weight": 0.1 * torch.randn(K, 10, 8, 8, generator=g),
        "fc8.bias": torch.zeros(K),
    }
    return SimpleNetwork(tiny_specs(), state)


def paired_a(student_data: Blobs) -> ImageStore:
    """f's images: g's at twice the size, plus detail g does not see; item i pairs with g's item i."""
    detail = 0.3 * torch.randn(len(student_data), 3, 16, 16, generator=torch.Generator().manual_seed(8))
    images = student_data.images.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) + detail
    return ImageStore(images.contiguous(), student_data.labels)


def _targets(spec: DistillSpec, data: Blobs, **kw):
    return teacher_targets(teacher_net(), paired_a(data), spec.teacher_layers, None, **kw)


def _strip(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


class Crash(Exception):
    pass


@pytest.mark.parametrize("method", sorted(SPECS))
def test_each_method_trains_and_resumes_bit_identically_after_a_crash(tmp_path, method):
    spec = SPECS[method]
    data = Blobs(20, 1)
    objective = Objective.for_method(spec)
    cfg = config(epochs=2, schedule=(0.01, 0.005))
    straight = tiny_net()
    ref = train(straight, data, None, cfg, objective, tmp_path / "a", progress=False, teacher_targets=_targets(spec, data))
    assert all(h["train"]["distill"] > 0 for h in ref.history)
    assert ref.history[0]["train"]["total"] == pytest.approx(ref.history[0]["train"]["objective"] + spec.weight * ref.history[0]["train"]["distill"])

    steps = []

    def crash(epoch, step, _tensors):
        steps.append((epoch, step))
        if (epoch, step) == (2, 2):
            raise Crash

    with pytest.raises(Crash):
        train(tiny_net(), data, None, cfg, objective, tmp_path / "b", progress=False, on_step=crash, teacher_targets=_targets(spec, data))
    assert load_training_checkpoint(tmp_path / "b" / "checkpoint.pt").epoch == 1
    resumed_model = tiny_net()
    resumed = train(resumed_model, data, None, cfg, objective, tmp_path / "b", progress=False, teacher_targets=_targets(spec, data))
    assert resumed.resumed_from == 1
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
    assert _strip(resumed.history) == _strip(ref.history)
    a, b = load_training_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_training_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a.distiller.keys() == b.distiller.keys() and all(torch.equal(a.distiller[k], b.distiller[k]) for k in a.distiller)
    assert all(torch.equal(a.optimizer["buffers"][k], b.optimizer["buffers"][k]) for k in a.optimizer["buffers"])
    assert not straight._forward_hooks and not any(m._forward_hooks for m in straight.modules())  # hooks taken off
    if method == "fitnets":  # the connector is trained with g: in the optimizer, the checkpoint, changed from its start
        assert set(a.distiller) == {"connector.weight", "connector.bias"} and a.distiller["connector.weight"].shape == (10, 6, 1, 1)
        assert {"distill.connector.weight", "distill.connector.bias"} <= set(a.optimizer["buffers"])
        assert a.distiller["connector.bias"].abs().sum() > 0
    else:
        assert a.distiller == {}


def test_a_distill_objective_changes_the_student_and_needs_its_targets(tmp_path):
    data = Blobs(20, 1)
    cfg = config(epochs=1, schedule=(0.01,))
    plain, distilled = tiny_net(), tiny_net()
    train(plain, data, None, cfg, Objective(), tmp_path / "plain", progress=False)
    train(distilled, data, None, cfg, Objective.for_method(SPECS["at"]), tmp_path / "at", progress=False, teacher_targets=_targets(SPECS["at"], data))
    assert not torch.equal(plain.conv1.weight, distilled.conv1.weight)
    with pytest.raises(CqdError, match="needs teacher_targets"):
        train(tiny_net(), data, None, cfg, Objective.for_method(SPECS["sp"]), tmp_path / "x", progress=False)
    with pytest.raises(CqdError, match="cover 12 images, the training set 20"):
        train(tiny_net(), data, None, cfg, Objective.for_method(SPECS["sp"]), tmp_path / "y", progress=False,
              teacher_targets=_targets(SPECS["sp"], Blobs(12, 1)))
    with pytest.raises(CqdError, match="was made with objective"):  # another method cannot continue this run folder
        train(tiny_net(), data, None, config(epochs=2, schedule=(0.01,)), Objective.for_method(SPECS["sp"]), tmp_path / "at",
              progress=False, teacher_targets=_targets(SPECS["sp"], data))


def test_recomputed_targets_train_as_the_cached_ones(tmp_path):
    spec, data = SPECS["fitnets"], Blobs(20, 1)
    cfg = config(epochs=1, schedule=(0.01,))
    cached, live = tiny_net(), tiny_net()
    targets = _targets(spec, data)
    live_targets = _targets(spec, data, budget=0)
    assert targets.cached and not live_targets.cached
    train(cached, data, None, cfg, Objective.for_method(spec), tmp_path / "c", progress=False, teacher_targets=targets)
    train(live, data, None, cfg, Objective.for_method(spec), tmp_path / "l", progress=False, teacher_targets=live_targets)
    for key, value in cached.state_dict().items():
        assert torch.allclose(value, live.state_dict()[key], rtol=1e-4, atol=1e-6), key


@pytest.mark.parametrize("method,budget", [(m, None) for m in sorted(SPECS)] + [("fitnets", 0)])
def test_a_distillation_step_reads_nothing_back_from_the_device(host_reads, tmp_path, method, budget):  # noqa: F811
    from cqd_port.train.distillers import PARAMETER_PREFIX, build_distiller
    from cqd_port.train.sgd import MatConvNetSGD

    counting, calls = host_reads
    spec, data = SPECS[method], Blobs(7, 1)
    model = tiny_net()
    targets = _targets(spec, data, **({} if budget is None else {"budget": budget}))
    distiller = build_distiller(spec, model, data.images[:1], targets.item_shapes, seed=0)
    optimizer = MatConvNetSGD([*model.named_parameters(), *distiller.named_parameters(prefix=PARAMETER_PREFIX)])
    index = torch.arange(7)
    counting[0] = True
    batch = targets.batch(index)
    out = train_step(model, optimizer, Objective.for_method(spec), data.images, data.labels, None, 0.01, distiller, batch)
    counting[0] = False
    assert calls == []
    assert out.distill.dim() == 0


def test_metrics_csv_holds_the_history_values(tmp_path):
    data = Blobs(20, 1)
    result = train(tiny_net(), data, Blobs(10, 2), config(epochs=3), Objective.for_method(SPECS["dkd"]), tmp_path, progress=False,
                   teacher_targets=_targets(SPECS["dkd"], data))
    history = json.loads((tmp_path / "history.json").read_text())
    assert history == result.history
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    assert list(rows[0]) == [
        "epoch", "learning_rate", "train_objective", "train_distill", "train_total", "train_top1err", "train_num_images",
        "test_objective", "test_top1err", "test_accuracy", "test_num_images", "seconds",
    ]
    for row, record in zip(rows, history):
        assert int(row["epoch"]) == record["epoch"] and float(row["learning_rate"]) == record["learning_rate"]
        for split in ("train", "test"):
            for key, value in record[split].items():
                assert float(row[f"{split}_{key}"]) == value, (split, key)  # exact: repr round-trips
        assert float(row["seconds"]) == record["seconds"]


def test_metrics_csv_after_a_resume_equals_the_uninterrupted_one_and_marks_epochs_without_a_test(tmp_path):
    data = Blobs(20, 1)
    cfg = config(epochs=2, schedule=(0.01, 0.005), evaluate_every_epoch=False)
    train(tiny_net(), data, Blobs(10, 2), cfg, Objective(), tmp_path / "a", progress=False)

    def crash(epoch, _step, _tensors):
        if epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        train(tiny_net(), data, Blobs(10, 2), cfg, Objective(), tmp_path / "b", progress=False, on_step=crash)
    (tmp_path / "b" / "metrics.csv").unlink()  # as if the crash came right after the checkpoint: the next run writes it
    train(tiny_net(), data, Blobs(10, 2), cfg, Objective(), tmp_path / "b", progress=False)

    def table(run):
        rows = list(csv.DictReader(open(tmp_path / run / "metrics.csv", newline="")))
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert table("a") == table("b")
    assert table("a")[0]["test_accuracy"] == "" and table("a")[1]["test_accuracy"] != ""


def test_tensorboard_events_hold_the_history_values(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = Blobs(20, 1)
    result = train(tiny_net(), data, Blobs(10, 2), config(epochs=2, schedule=(0.01, 0.005)), Objective.for_method(SPECS["sp"]), tmp_path,
                   progress=False, teacher_targets=_targets(SPECS["sp"], data))
    files = list((tmp_path / "tensorboard").iterdir())
    assert [f.name for f in files] == ["events.out.tfevents.cqd-port"]  # one file, no temporary left
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for tag, path in (("train/distill", ("train", "distill")), ("test/accuracy", ("test", "accuracy")), ("learning_rate", ("learning_rate",))):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        for scalar, record in zip(scalars, result.history):
            value = record
            for key in path:
                value = value[key]
            assert scalar.value == pytest.approx(value, rel=1e-6)  # TensorBoard stores float32


def test_a_torchvision_student_learns_from_a_matconvnet_teacher_of_another_size(tmp_path):
    from cqd_port.models.torchvision_nets import build_torchvision

    data = Blobs(12, 1)
    student, _ = build_torchvision("resnet18", K, None, input_size=32, seed=0)  # g: layer3 is 256 x 2 x 2 at 32 px
    spec = DistillSpec("fitnets", 0.01, teacher_layer="relu1", student_layer="layer3")  # f: relu1 is 10 x 16 x 16
    result = train(student, data, None, config(epochs=1, batch_size=6, schedule=(0.001,), optimizer="torch"), Objective.for_method(spec),
                   tmp_path, progress=False, teacher_targets=_targets(spec, data))
    assert result.history[0]["train"]["distill"] > 0
    ckpt = load_training_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt.distiller["connector.weight"].shape == (10, 256, 1, 1)
