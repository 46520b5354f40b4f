"""The epoch loop: run-folder files, NaN stop, exact resume after a crash, evaluation, teacher cache."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset

from cqd_port.errors import CqdError
from cqd_port.models.layers import LayerSpec
from cqd_port.models.network import SimpleNetwork
from cqd_port.train.checkpoint import load_training_checkpoint
from cqd_port.train.device import configure_determinism, select_device
from cqd_port.train.evaluate import evaluate, summarize
from cqd_port.train.objective import CQD_LAMBDA, Objective
from cqd_port.train.teacher import cache_path, teacher_logits
from cqd_port.train.trainer import TrainConfig, TrainingDiverged, epoch_batches, train

K = 5


def tiny_specs() -> list[LayerSpec]:
    return [
        LayerSpec("conv1", "conv", {"pad": [1, 1, 1, 1], "stride": [1, 1], "dilate": [1, 1], "has_bias": True}),
        LayerSpec("relu1", "relu", {"leak": 0.0}),
        LayerSpec("pool1", "pool", {"method": "max", "pool": [2, 2], "pad": [0, 0, 0, 0], "stride": [2, 2]}),
        LayerSpec("drop1", "dropout", {"rate": 0.5}),
        LayerSpec("fc8", "conv", {"pad": [0, 0, 0, 0], "stride": [1, 1], "dilate": [1, 1], "has_bias": True}),
    ]


def tiny_net(seed: int = 0) -> SimpleNetwork:
    g = torch.Generator().manual_seed(seed)
    state = {
        "conv1.weight": 0.3 * torch.randn(6, 3, 3, 3, generator=g),
        "conv1.bias": 0.1 * torch.randn(6, generator=g),
        "fc8.weight": 0.3 * torch.randn(K, 6, 4, 4, generator=g),
        "fc8.bias": torch.zeros(K),
    }
    return SimpleNetwork(tiny_specs(), state)


class Blobs(Dataset):
    """Images whose class shows as a brighter channel/quadrant pattern, with (image, label, index)."""

    def __init__(self, n: int, seed: int, nan_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % K
        self.images = torch.randn(n, 3, 8, 8, generator=g)
        for i, y in enumerate(self.labels.tolist()):
            self.images[i, y % 3, (y // 3) * 4 : (y // 3) * 4 + 4] += 2.0
        self.records = [f"img{seed}_{i}.jpg" for i in range(n)]
        self.image_size = [8, 8]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i]), i


def config(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=7, schedule=(0.05, 0.03, 0.01), seed=11, device="cpu", plot=False)
    base.update(kw)
    return TrainConfig(**base)


def test_run_writes_its_folder_and_learns(tmp_path):
    model = tiny_net()
    result = train(model, Blobs(20, 1), Blobs(10, 2), config(plot=True), Objective(), tmp_path, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert [h["learning_rate"] for h in result.history] == [0.05, 0.03, 0.01]
    assert result.history[0]["train"]["num_images"] == 20  # last partial batch used (7 + 7 + 6)
    for name in ("checkpoint.pt", "history.json", "net-train.pdf", "evaluation.json"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "net-train.pdf").read_bytes()[:4] == b"%PDF"
    assert json.loads((tmp_path / "history.json").read_text()) == result.history
    assert load_training_checkpoint(tmp_path / "checkpoint.pt").epoch == 3
    assert result.history[-1]["train"]["objective"] < result.history[0]["train"]["objective"]
    assert result.evaluation is not None and result.evaluation.num_images == 10
    # A finished run returns at once, with the same history and no training step.
    calls = []
    again = train(tiny_net(), Blobs(20, 1), Blobs(10, 2), config(), Objective(), tmp_path, progress=False,
                  on_step=lambda *a: calls.append(a))
    assert calls == [] and again.history == result.history and again.accuracy == result.accuracy
    # A crash after the last checkpoint but before the other files: they are rewritten, no training.
    (tmp_path / "evaluation.json").unlink()
    (tmp_path / "history.json").unlink()
    third = train(tiny_net(), Blobs(20, 1), Blobs(10, 2), config(), Objective(), tmp_path, progress=False,
                  on_step=lambda *a: calls.append(a))
    assert calls == [] and third.accuracy == result.accuracy
    assert json.loads((tmp_path / "history.json").read_text()) == result.history


def test_epoch_batches_reshuffle_per_epoch_and_keep_the_partial_batch():
    b1, b2 = epoch_batches(20, 7, 11, 1), epoch_batches(20, 7, 11, 2)
    assert [len(b) for b in b1] == [7, 7, 6]
    assert sorted(sum(b1, [])) == list(range(20)) and b1 != b2
    assert b1 == epoch_batches(20, 7, 11, 1) and b1 != epoch_batches(20, 7, 12, 1)


class Crash(Exception):
    pass


@pytest.mark.parametrize("crash_after", [5])
def test_resume_after_a_crash_mid_epoch_gives_identical_weights(tmp_path, crash_after):
    teacher = torch.randn(20, K, generator=torch.Generator().manual_seed(5))
    objective = Objective(kind="cqd", lambda_=3.0, temperature=2.0)
    mults = {"fc8.weight": (10.0, 1.0), "fc8.bias": (20.0, 0.0)}
    cfg = config(schedule=(0.01, 0.005, 0.002))

    straight = tiny_net()
    ref = train(straight, Blobs(20, 1), None, cfg, objective, tmp_path / "a", teacher, mults, progress=False)

    steps = []

    def crash(epoch, step, stats):
        steps.append((epoch, step))
        if len(steps) == crash_after:  # epoch 2, step 2: mid-epoch
            raise Crash

    with pytest.raises(Crash):
        train(tiny_net(), Blobs(20, 1), None, cfg, objective, tmp_path / "b", teacher, mults, progress=False, on_step=crash)
    assert load_training_checkpoint(tmp_path / "b" / "checkpoint.pt").epoch == 1
    resumed_model = tiny_net()
    resumed = train(resumed_model, Blobs(20, 1), None, cfg, objective, tmp_path / "b", teacher, mults, progress=False)
    assert resumed.resumed_from == 1
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
    strip = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert strip(resumed.history) == strip(ref.history)
    # dropout is really on in training: a different seed gives different weights
    other = tiny_net()
    train(other, Blobs(20, 1), None, config(schedule=cfg.schedule, seed=12), objective, tmp_path / "c", teacher, mults, progress=False)
    assert not torch.equal(other.state_dict()["conv1.weight"], straight.state_dict()["conv1.weight"])


def test_checkpoint_interval_skips_epoch_checkpoints_and_a_crash_resumes_from_the_last_one(tmp_path):
    """A long interval: only the last epoch's checkpoint; a crash in epoch 3 resumes from the start, same weights."""
    objective = Objective()
    cfg_every, cfg_rare = config(epochs=4, schedule=(0.05, 0.03, 0.02, 0.01)), config(
        epochs=4, schedule=(0.05, 0.03, 0.02, 0.01), checkpoint_interval=3600.0
    )
    saved: dict[str, list[int]] = {"every": [], "rare": []}
    for name, cfg in (("every", cfg_every), ("rare", cfg_rare)):
        watch = lambda epoch, record, name=name: saved[name].append(  # noqa: E731
            load_training_checkpoint(tmp_path / name / "checkpoint.pt").epoch if (tmp_path / name / "checkpoint.pt").exists() else 0
        )
        train(tiny_net(), Blobs(20, 1), None, cfg, objective, tmp_path / name, progress=False, on_epoch=watch)
    assert saved == {"every": [1, 2, 3, 4], "rare": [0, 0, 0, 4]}
    # history.json still follows every epoch; the checkpoint's own history is what a resume continues
    steps = []

    def crash(epoch, step, stats):
        steps.append(epoch)
        if epoch == 3:
            raise Crash

    with pytest.raises(Crash):
        train(tiny_net(), Blobs(20, 1), None, cfg_rare, objective, tmp_path / "crash", progress=False, on_step=crash)
    assert not (tmp_path / "crash" / "checkpoint.pt").exists()
    assert [h["epoch"] for h in json.loads((tmp_path / "crash" / "history.json").read_text())] == [1, 2]
    resumed_model, straight = tiny_net(), tiny_net()
    resumed = train(resumed_model, Blobs(20, 1), None, cfg_rare, objective, tmp_path / "crash", progress=False)
    reference = train(straight, Blobs(20, 1), None, cfg_every, objective, tmp_path / "straight", progress=False)
    assert resumed.resumed_from == 0  # nothing was checkpointed: it starts again
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key  # the interval changes no number
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4] == [h["epoch"] for h in reference.history]
    with pytest.raises(CqdError, match="checkpoint interval"):
        config(checkpoint_interval=-1.0)


@pytest.mark.parametrize("reset", [True, False])
def test_momentum_reset_each_epoch_as_cnn_train_dag_and_resume_stays_exact(tmp_path, reset):
    from cqd_port.train.checkpoint import save_training_checkpoint

    teacher = torch.randn(20, K, generator=torch.Generator().manual_seed(5))
    objective = Objective(kind="cqd", lambda_=3.0, temperature=2.0)
    cfg = config(epochs=2, schedule=(0.01, 0.005), momentum_reset_each_epoch=reset)
    straight = tiny_net()
    train(straight, Blobs(20, 1), None, cfg, objective, tmp_path / "a", teacher, progress=False)

    # epoch 1, then the momentum stored in its checkpoint is tampered with before epoch 2
    train(tiny_net(), Blobs(20, 1), None, config(epochs=1, schedule=cfg.schedule, momentum_reset_each_epoch=reset),
          objective, tmp_path / "b", teacher, progress=False)
    ckpt_path = tmp_path / "b" / "checkpoint.pt"
    ckpt = load_training_checkpoint(ckpt_path)
    assert any(buf.abs().sum() > 0 for buf in ckpt.optimizer["buffers"].values())  # momentum at the end of epoch 1
    untouched = tiny_net()
    train(untouched, Blobs(20, 1), None, cfg, objective, tmp_path / "b", teacher, progress=False)  # resumes
    for key, value in straight.state_dict().items():
        assert torch.equal(value, untouched.state_dict()[key]), key  # resume is exact either way

    ckpt.optimizer["buffers"] = {k: torch.full_like(v, 0.5) for k, v in ckpt.optimizer["buffers"].items()}
    (tmp_path / "c").mkdir()
    save_training_checkpoint(tmp_path / "c" / "checkpoint.pt", ckpt)
    tampered = tiny_net()
    train(tampered, Blobs(20, 1), None, cfg, objective, tmp_path / "c", teacher, progress=False)
    same = all(torch.equal(v, tampered.state_dict()[k]) for k, v in straight.state_dict().items())
    # reset: epoch 2 starts from zero momentum whatever the checkpoint held; carried: it starts from it
    assert same == reset


def test_momentum_carried_over_differs_from_reset_after_the_first_epoch(tmp_path):
    teacher = torch.randn(20, K, generator=torch.Generator().manual_seed(5))
    objective = Objective(kind="cqd", lambda_=3.0, temperature=2.0)
    nets = {}
    for reset in (True, False):
        for epochs in (1, 2):
            net = tiny_net()
            cfg = config(epochs=epochs, schedule=(0.01, 0.005), momentum_reset_each_epoch=reset)
            train(net, Blobs(20, 1), None, cfg, objective, tmp_path / f"{reset}{epochs}", teacher, progress=False)
            nets[reset, epochs] = net.state_dict()
    assert all(torch.equal(nets[True, 1][k], nets[False, 1][k]) for k in nets[True, 1])  # epoch 1 starts at zero anyway
    assert not torch.equal(nets[True, 2]["conv1.weight"], nets[False, 2]["conv1.weight"])
    with pytest.raises(CqdError, match="momentum_reset_each_epoch"):  # a run cannot switch half-way
        train(tiny_net(), Blobs(20, 1), None, config(epochs=2, schedule=(0.01, 0.005), momentum_reset_each_epoch=False),
              objective, tmp_path / "True1", teacher, progress=False)


def test_resume_with_other_options_is_refused(tmp_path):
    train(tiny_net(), Blobs(14, 1), None, config(epochs=1), Objective(), tmp_path, progress=False)
    with pytest.raises(CqdError, match="batch_size"):
        train(tiny_net(), Blobs(14, 1), None, config(epochs=2, batch_size=4), Objective(), tmp_path, progress=False)
    for key, value in (("lrn_mode", "matconvnet-cpu"), ("tf32", True), ("momentum_reset_each_epoch", False)):
        with pytest.raises(CqdError, match=key):
            train(tiny_net(), Blobs(14, 1), None, config(epochs=2, **{key: value}), Objective(), tmp_path, progress=False)


def test_nan_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = config(schedule=(0.01, 1e30), epochs=2)
    model = tiny_net()
    with pytest.raises(TrainingDiverged) as info:
        train(model, Blobs(21, 1), None, cfg, Objective(), tmp_path, progress=False)
    message = str(info.value)
    assert "epoch 2, step" in message and "lower the learning rate" in message and "epoch 1" in message
    assert isinstance(info.value, CqdError) and "\n" not in message
    ckpt = load_training_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt.epoch == 1 and all(torch.isfinite(v).all() for v in ckpt.model.values())
    one_epoch = tiny_net()
    train(one_epoch, Blobs(21, 1), None, config(schedule=(0.01, 1e30), epochs=1), Objective(), tmp_path / "one", progress=False)
    for key, value in one_epoch.state_dict().items():
        assert torch.equal(ckpt.model[key], value)


def test_cqd_objective_is_softmaxlog_plus_lambda_distill_and_its_gradient():
    obj = Objective.cqd("cub")
    assert obj.lambda_ == CQD_LAMBDA["cub"] == 200 and obj.temperature == 10
    assert Objective.cqd("cars").lambda_ == 50 and Objective.cqd("vgg16_vggm").lambda_ == 50
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, K, 1, 1, generator=g, requires_grad=True)
    teacher = torch.randn(4, K, generator=g)
    labels = torch.tensor([0, 3, 1, 4])
    value = obj(scores, labels, teacher)
    s = scores.detach().reshape(4, K)
    sm = torch.nn.functional.cross_entropy(s, labels, reduction="sum")
    p_t = torch.softmax(teacher / 10, 1)
    d = -(p_t * torch.log_softmax(s / 10, 1)).sum()
    torch.testing.assert_close(value.softmaxlog.detach(), sm)
    torch.testing.assert_close(value.distill.detach(), d)
    torch.testing.assert_close(value.total.detach(), sm + 200 * d)
    value.total.backward()
    expected = torch.softmax(s, 1) - torch.nn.functional.one_hot(labels, K) + 200 * (torch.softmax(s / 10, 1) - p_t) / 10
    torch.testing.assert_close(scores.grad.reshape(4, K), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(CqdError):
        obj(scores, labels, None)
    with pytest.raises(CqdError):
        Objective(kind="mse")


def test_evaluation_with_label_range_takes_argmax_over_the_first_k_outputs(tmp_path):
    scores = torch.tensor([[1.0, 2.0, 0.0, 9.0], [3.0, 1.0, 8.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    labels = torch.tensor([1, 1, 1])
    full = summarize(scores, labels)
    assert full.predictions == [3, 2, 1] and full.accuracy == pytest.approx(100 / 3)
    half = summarize(scores, labels, label_range=2)
    assert half.predictions == [1, 0, 1] and half.accuracy == pytest.approx(200 / 3)
    assert half.confusion == [[0, 0], [1, 2]] and half.per_class_accuracy == [None, pytest.approx(200 / 3)]
    assert half.label_range == [0, 2]
    with pytest.raises(CqdError, match="label_range"):
        summarize(scores, torch.tensor([3, 1, 1]), label_range=(0, 2))
    # through a network, in test mode (dropout off: two runs agree)
    model = tiny_net()
    data = Blobs(9, 3)
    data.labels = data.labels % 3  # the A+B case: labels within the first k outputs
    ev1 = evaluate(model, data, label_range=(0, 3), batch_size=4)
    ev2 = evaluate(model, data, label_range=(0, 3), batch_size=9)
    assert ev1.predictions == ev2.predictions and all(0 <= p < 3 for p in ev1.predictions)
    manual = model(data.images)[:, :3].reshape(9, 3).argmax(1).tolist()
    assert ev1.predictions == manual
    ev1.save(tmp_path / "evaluation.json")
    assert json.loads((tmp_path / "evaluation.json").read_text())["accuracy"] == ev1.accuracy


def test_teacher_cache_hit_miss_and_invalidation(tmp_path):
    teacher = tiny_net(seed=4)
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    data = Blobs(11, 1)
    first = teacher_logits(teacher, data, tmp_path, batch_size=4)
    assert first.shape == (11, K) and sum(calls) == 11
    teacher.eval()
    torch.testing.assert_close(first, teacher(data.images).reshape(11, K))
    calls.clear()
    again = teacher_logits(teacher, data, tmp_path, batch_size=4)
    assert calls == [] and torch.equal(again, first)  # hit
    files = list(tmp_path.glob("teacher-logits-*.pt"))
    assert len(files) == 1
    files[0].write_bytes(b"not a torch file")  # corrupt: recomputed and rewritten
    calls.clear()
    assert torch.equal(teacher_logits(teacher, data, tmp_path, batch_size=4), first) and sum(calls) == 11
    calls.clear()
    teacher_logits(teacher, data, tmp_path, batch_size=4)
    assert calls == []
    other_data = Blobs(11, 2)  # other records: miss
    teacher_logits(teacher, other_data, tmp_path, batch_size=4)
    assert sum(calls) == 11
    calls.clear()
    with torch.no_grad():
        teacher.fc8.bias.add_(1.0)  # other weights: miss, new values
    changed = teacher_logits(teacher, data, tmp_path, batch_size=4)
    assert sum(calls) == 11 and torch.allclose(changed, first + 1.0, atol=1e-5)
    assert len(list(tmp_path.glob("teacher-logits-*.pt"))) == 3


def test_device_selection_and_strict_fp32():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in ("cpu", "cuda")
    with pytest.raises(CqdError, match="device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(CqdError, match="no CUDA"):
            select_device("cuda:0")
    configure_determinism(tf32=False, device="cpu")
    assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic is True


class InMemory(Dataset):
    """No `records`: the cache key comes from the image tensor (or, with `images` hidden, every item)."""

    def __init__(self, images: torch.Tensor, expose_tensor: bool) -> None:
        self._images = images
        if expose_tensor:
            self.images = images

    def __len__(self) -> int:
        return self._images.shape[0]

    def __getitem__(self, i: int):
        return self._images[i], i % K, i


@pytest.mark.parametrize("expose_tensor", [True, False])
def test_teacher_cache_key_follows_image_content_without_records(tmp_path, expose_tensor):
    teacher = tiny_net(seed=4)
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    images = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    first = teacher_logits(teacher, InMemory(images, expose_tensor), tmp_path, batch_size=6)
    teacher_logits(teacher, InMemory(images.clone(), expose_tensor), tmp_path, batch_size=6)
    assert sum(calls) == 6  # same content: hit
    changed = images.clone()
    changed[2, 0, 0, 0] += 1.0
    second = teacher_logits(teacher, InMemory(changed, expose_tensor), tmp_path, batch_size=6)
    assert sum(calls) == 12 and not torch.equal(first, second)


def test_softmax_ended_networks_teacher_gives_logits_and_training_is_refused(tmp_path):
    teacher = tiny_net(seed=4)
    with_prob = SimpleNetwork([*tiny_specs(), LayerSpec("prob", "softmax", {})], teacher.state_dict())
    data = Blobs(6, 1)
    logits = teacher_logits(with_prob, data, None, batch_size=6)
    torch.testing.assert_close(logits, teacher_logits(teacher, data, None, batch_size=6))
    with pytest.raises(CqdError, match="softmax layer 'prob'"):
        train(with_prob, data, None, config(epochs=1), Objective(), tmp_path, progress=False)


def test_progress_display_runs_and_can_be_silenced(tmp_path, capsys):
    train(tiny_net(), Blobs(8, 1), Blobs(4, 2), config(epochs=1), Objective(), tmp_path / "on", progress=True)
    assert "epochs" in capsys.readouterr().out
    train(tiny_net(), Blobs(8, 1), Blobs(4, 2), config(epochs=1), Objective(), tmp_path / "off", progress=False)
    assert capsys.readouterr().out == ""


def test_checkpoint_writes_the_model_as_it_was_and_only_a_views_own_elements(tmp_path):
    # the checkpoint no longer copies every tensor before writing: it must still hold the values at save time
    from cqd_port.train.checkpoint import TrainingCheckpoint, save_training_checkpoint

    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    big = torch.arange(1000, dtype=torch.float32)
    view = big[10:14]
    save_training_checkpoint(tmp_path / "c.pt", TrainingCheckpoint(1, {"w": weight, "v": view}, {"buffers": {}}))
    weight.add_(1.0)  # later training steps change the model in place
    loaded = load_training_checkpoint(tmp_path / "c.pt")
    assert torch.equal(loaded.model["w"], torch.arange(12, dtype=torch.float32).reshape(3, 4))
    assert torch.equal(loaded.model["v"], torch.arange(10, 14, dtype=torch.float32))
    assert loaded.model["v"].untyped_storage().nbytes() == 4 * 4  # not the whole 1000-element storage


def test_evaluating_only_after_the_last_epoch_changes_no_trained_number(tmp_path):
    # the per-epoch test pass (evaluate_every_epoch) is bookkeeping: dropping it leaves weights and final evaluation as they were
    objective = Objective(kind="softmaxlog")
    every, last = tiny_net(), tiny_net()
    a = train(every, Blobs(20, 1), Blobs(10, 2), config(), objective, tmp_path / "a", progress=False)
    b = train(last, Blobs(20, 1), Blobs(10, 2), config(evaluate_every_epoch=False), objective, tmp_path / "b", progress=False)
    for key, value in every.state_dict().items():
        assert torch.equal(value, last.state_dict()[key]), key
    assert a.evaluation.predictions == b.evaluation.predictions and a.evaluation.objective == b.evaluation.objective
    assert [("test" in h) for h in a.history] == [True, True, True] and [("test" in h) for h in b.history] == [False, False, True]
