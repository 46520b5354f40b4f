"""Layers by the networks' own names through forward hooks (SimpleNetwork, torchvision resnet18), the connector
between f's and g's maps, the method settings (`DistillSpec`), and f's targets: cached or recomputed."""

from __future__ import annotations

import pytest
import torch

from cqd_port.errors import CqdError
from cqd_port.models.features import LOGITS, FeatureHooks, extract_features, find_layer
from cqd_port.models.torchvision_nets import build_torchvision
from cqd_port.nn.distill import match_spatial_size
from cqd_port.train.distill_spec import METHODS, DistillSpec
from cqd_port.train.distillers import Distiller
from cqd_port.train.objective import Objective
from cqd_port.train.teacher import teacher_targets

from test_train_loop import Blobs, tiny_net


def test_simple_network_layers_by_name_are_the_outputs_before_the_in_place_relu():
    model = tiny_net()
    x = Blobs(4, 1).images
    assert model.inplace_relu  # relu1 overwrites conv1's output in place when only the output is asked for
    reference = model(x, return_all=True)
    got = extract_features(model, x, ["conv1", "relu1", "pool1", LOGITS])
    assert torch.equal(got["conv1"], reference["conv1"]) and (got["conv1"] < 0).any()  # pre-ReLU values kept
    assert torch.equal(got["relu1"], reference["relu1"]) and torch.equal(got["pool1"], reference["pool1"])
    assert torch.equal(got[LOGITS], reference["fc8"])
    assert not model._forward_hooks and not any(m._forward_hooks for m in model.modules())  # hooks removed


def test_hooked_features_carry_the_gradient_to_the_layers_below():
    model = tiny_net()
    model.train()
    hooks = FeatureHooks(model, ["conv1"])
    with hooks.capture():
        model(Blobs(3, 1).images)
    hooks.get("conv1").pow(2).sum().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    assert model.fc8.weight.grad is None  # nothing above conv1 takes part
    hooks.remove()


def test_torchvision_module_paths_name_resnet18_layers():
    model, _ = build_torchvision("resnet18", 5, None, input_size=32, seed=1)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255
    got = extract_features(model, x, ["layer4", "backbone.layer2", "layer3.1.conv2", LOGITS])
    net = model.backbone
    with torch.no_grad():  # resnet18's forward, written out
        h = net.maxpool(net.relu(net.bn1(net.conv1(x * model.scale + model.shift))))
        l2 = net.layer2(net.layer1(h))
        l4 = net.layer4(net.layer3(l2))
        logits = net.fc(torch.flatten(net.avgpool(l4), 1))
    assert torch.equal(got["layer4"], l4) and got["layer4"].shape == (2, 512, 1, 1)
    assert torch.equal(got["backbone.layer2"], l2)
    assert got["layer3.1.conv2"].shape == (2, 256, 2, 2)
    assert torch.equal(got[LOGITS], logits)


def test_an_unknown_layer_name_is_one_line_naming_it_and_the_layers_there_are():
    with pytest.raises(CqdError, match=r"no layer named 'conv9'.*conv1, relu1, pool1, drop1, fc8"):
        find_layer(tiny_net(), "conv9")
    model, _ = build_torchvision("resnet18", 3, None, input_size=32)
    with pytest.raises(CqdError, match=r"no layer named 'conv5'.*layer4"):
        find_layer(model, "conv5")


def test_connector_matches_f_maps_of_another_size_and_width_to_g():
    teacher = torch.arange(2 * 10 * 8 * 8, dtype=torch.float32).reshape(2, 10, 8, 8)
    assert match_spatial_size(teacher, (8, 8)) is teacher  # same size: untouched
    small = match_spatial_size(teacher, (4, 4))
    assert small.shape == (2, 10, 4, 4)
    # a linear ramp (8 y + x) stays one away from the border: output pixel (i, j) is f's value at (2i + 0.5, 2j + 0.5)
    assert torch.allclose(small[0, 0, 1:3, 1:3], torch.tensor([[22.5, 24.5], [38.5, 40.5]]))
    distiller = Distiller(DistillSpec("fitnets", teacher_layer="conv5", student_layer="conv1"), (6, 4, 4), (10, 8, 8), torch.Generator().manual_seed(0))
    assert distiller.connector.weight.shape == (10, 6, 1, 1)
    student = torch.randn(2, 6, 4, 4)
    regressed = distiller.connector(student)
    expected = 0.5 * (regressed - small).pow(2).sum()
    assert torch.allclose(distiller.term(student, teacher, torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)), expected)
    # AT needs no channel match: f's 10 channels, g's 6
    at = Distiller(DistillSpec("at", teacher_layer="conv5", student_layer="conv1"), (6, 4, 4), (10, 8, 8))
    assert at.connector is None and list(at.parameters()) == []
    assert torch.isfinite(at.term(student, teacher, torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)))


def test_distill_spec_yaml_form_round_trips_and_names_a_wrong_key():
    spec = DistillSpec.from_dict({"method": "rkd", "weight": 2, "teacher_layer": "fc7", "student_layer": "layer4", "angle_weight": 0})
    assert spec.to_dict() == {"method": "rkd", "weight": 2.0, "teacher_layer": "fc7", "student_layer": "layer4", "distance_weight": 25.0, "angle_weight": 0.0}
    assert DistillSpec.from_dict(spec.to_dict()) == spec
    assert DistillSpec("dkd").temperature == 4.0 and DistillSpec("kd").temperature == 10.0
    with pytest.raises(CqdError, match="unknown setting 'alpha'.*settings of sp"):
        DistillSpec.from_dict({"method": "sp", "alpha": 1})
    with pytest.raises(CqdError, match="dkd distils logits"):
        DistillSpec("dkd", teacher_layer="conv5")
    with pytest.raises(CqdError, match="unknown distillation method 'crd'"):
        DistillSpec("crd")
    assert set(METHODS) == {"kd", "fitnets", "at", "sp", "rkd", "dkd"}


def test_kd_is_the_cqd_objective_and_the_others_carry_their_spec():
    assert Objective.for_method(DistillSpec("kd", 200.0, temperature=10.0)) == Objective("cqd", 200.0, 10.0)
    objective = Objective.for_method(DistillSpec("sp", 3000.0, teacher_layer="conv1", student_layer="conv1"))
    assert objective.kind == "distill" and objective.lambda_ == 3000.0 and objective.needs_teacher_targets
    assert objective.to_dict() == {"kind": "distill", "method": "sp", "weight": 3000.0, "teacher_layer": "conv1", "student_layer": "conv1"}
    scores, labels = torch.randn(3, 5), torch.tensor([0, 1, 2])
    value = objective(scores, labels, distill_term=torch.tensor(0.5))
    assert torch.allclose(value.total, value.softmaxlog + 3000.0 * 0.5)
    with pytest.raises(CqdError, match="needs its term"):
        objective(scores, labels)


def test_teacher_targets_cached_on_disk_or_recomputed_above_the_budget(tmp_path):
    teacher, data = tiny_net(seed=4), Blobs(9, 3)
    cached = teacher_targets(teacher, data, ("conv1", LOGITS), tmp_path, batch_size=4)
    assert cached.cached and cached.item_shapes == {"conv1": (6, 8, 8), LOGITS: (5,)}
    assert cached.nbytes == 9 * 4 * (6 * 8 * 8 + 5)
    assert "cached" in cached.describe() and "conv1 6x8x8" in cached.describe()
    files = list(tmp_path.glob("teacher-targets-*.pt"))
    assert len(files) == 1
    reference = teacher(data.images, return_all=True)
    index = torch.tensor([7, 2])
    batch = cached.batch(index)
    assert torch.allclose(batch["conv1"], reference["conv1"][index], atol=1e-5)
    assert torch.allclose(batch[LOGITS], reference["fc8"][index].flatten(1), atol=1e-5)
    # the second call reads the file (a poisoned file with the right key would be believed: prove it is read)
    data_on_disk = torch.load(files[0], weights_only=True)
    data_on_disk["tables"]["conv1"] = data_on_disk["tables"]["conv1"] + 1.0
    torch.save(data_on_disk, files[0])
    again = teacher_targets(teacher, data, ("conv1", LOGITS), tmp_path, batch_size=4)
    assert torch.allclose(again.batch(index)["conv1"], batch["conv1"] + 1.0)
    # over the budget: f runs per batch, with the same numbers
    live = teacher_targets(teacher, data, ("conv1", LOGITS), tmp_path, budget=1000)
    assert not live.cached and "recomputed per batch" in live.describe() and "> cache budget" in live.describe()
    assert torch.allclose(live.batch(index)["conv1"], batch["conv1"], atol=1e-5)
    with pytest.raises(CqdError, match="no layer named 'conv7'"):
        teacher_targets(teacher, data, ("conv7",), None)


def test_graph_network_layers_by_name_are_their_output_variables():
    from test_models_graph import _recursive_net

    net = _recursive_net()
    x = torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(2))
    everything = net(x, return_all=True)
    got = extract_features(net, x, ["conv_a", "relu_a", "conv_b", LOGITS])  # conv_b shares conv_a's filters
    assert torch.equal(got["conv_a"], everything["h1"]) and torch.equal(got["relu_a"], everything["r1"])
    assert torch.equal(got["conv_b"], everything["h2"]) and torch.equal(got[LOGITS], everything["output"])
