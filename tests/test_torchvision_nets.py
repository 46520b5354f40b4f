"""torchvision networks as f and g: builders, local weights, preprocessing, saved models, torch.optim.SGD."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision import models, transforms

from cqd_port.errors import CqdError
from cqd_port.models.torchvision_nets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_torchvision,
    load_torchvision,
    save_torchvision,
    weights_url,
)
from cqd_port.train.sgd import MatConvNetSGD, TorchSGD, make_optimizer


def test_resnet18_random_init_new_head_seeded():
    model, head = build_torchvision("resnet18", 5, None, input_size=32, seed=1)
    assert head == "backbone.fc"
    out = model(torch.rand(2, 3, 40, 48) * 255)  # any input size: resized inside
    assert out.shape == (2, 5)
    fc = model.backbone.fc
    assert fc.weight.shape == (5, 512) and torch.all(fc.bias == 0)
    assert 0.005 < float(fc.weight.detach().std()) < 0.015  # fc8's N(0, 0.01^2)
    same, _ = build_torchvision("resnet18", 5, None, input_size=32, seed=1)
    other, _ = build_torchvision("resnet18", 5, None, input_size=32, seed=2)
    assert torch.equal(same.backbone.conv1.weight, model.backbone.conv1.weight)
    assert not torch.equal(other.backbone.conv1.weight, model.backbone.conv1.weight)


def test_preprocessing_is_torchvisions():
    model, _ = build_torchvision("resnet18", 3, None, input_size=24, seed=0)
    model.eval()
    x = torch.rand(2, 3, 37, 37) * 255
    reference = transforms.Compose(
        [transforms.Resize((24, 24), antialias=True), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )((x / 255.0))
    with torch.no_grad():
        assert torch.allclose(model(x), model.backbone(reference), atol=1e-5)


def test_weights_from_a_local_file_and_the_errors(tmp_path):
    source = models.get_model("squeezenet1_1", weights=None)  # small; its classifier is a 1x1 conv
    path = tmp_path / "squeezenet1_1.pth"
    torch.save(source.state_dict(), path)
    model, head = build_torchvision("squeezenet1_1", 4, path, input_size=64, seed=0)
    assert head == "backbone.classifier.1"
    assert torch.equal(model.backbone.features[0].weight, source.features[0].weight)
    assert model(torch.rand(1, 3, 64, 64) * 255).shape == (1, 4)

    with pytest.raises(CqdError, match="cannot download") as info:
        build_torchvision("resnet18", 4, tmp_path / "missing.pth")
    assert weights_url("resnet18") in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CqdError, match="does not fit torchvision's resnet18"):
        build_torchvision("resnet18", 4, path)
    with pytest.raises(CqdError, match="unknown network 'resnet19'"):
        build_torchvision("resnet19", 4)


def test_saved_model_round_trip(tmp_path):
    model, _ = build_torchvision("mobilenet_v3_small", 3, None, input_size=32, seed=3)
    save_torchvision(tmp_path / "final.pt", model)
    again = load_torchvision(tmp_path / "final.pt")
    model.eval(), again.eval()
    x = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert again.meta["normalization"]["imageSize"] == [32, 32]


def test_torch_sgd_is_torch_optim_sgd_on_the_mean_loss():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    reference = copy.deepcopy(net)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    ours = TorchSGD(net.named_parameters(), momentum=0.9, weight_decay=5e-4)
    theirs = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        ours.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y, reduction="sum").backward()
        ours.step(0.1, 5)
        theirs.zero_grad()
        torch.nn.functional.cross_entropy(reference(x), y).backward()
        theirs.step()
    for a, b in zip(net.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    restored = TorchSGD(copy.deepcopy(net).named_parameters())
    restored.load_state_dict(ours.state_dict())
    with pytest.raises(CqdError, match="MatConvNet SGD state"):
        restored.load_state_dict(MatConvNetSGD(net.named_parameters()).state_dict())
    with pytest.raises(CqdError, match="unknown optimizer 'adam'"):
        make_optimizer("adam", net.named_parameters(), 0.9, 5e-4)
