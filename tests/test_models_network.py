"""SimpleNetwork: runs the layer list as vl_simplenn does; parameters and errors."""

from __future__ import annotations

import pytest
import torch

import cqd_port.nn as N
from cqd_port.errors import CqdError
from cqd_port.models import LayerSpec, SimpleNetwork, init_state, vgg_m_specs


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    """FORMAT.md's relative error: max |got - want| / max |want|."""
    return float((got.detach() - want.detach()).abs().max() / want.detach().abs().max())


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 99, 99, generator=torch.Generator().manual_seed(seed)) * 50


@pytest.fixture(scope="module")
def small_net() -> SimpleNetwork:
    specs = vgg_m_specs(num_classes=7, width=1 / 16, input_size=99, dropout=0.5)
    return SimpleNetwork(specs, init_state(specs, seed=4, method="xavierimproved"), meta={"classes": list("abcdefg")})


def hand_composition(net: SimpleNetwork, x: torch.Tensor, lrn_mode: str = "exact") -> torch.Tensor:
    s = net.state_dict()

    def conv(name, pad=0, stride=1):
        return lambda t: N.conv(t, s[f"{name}.weight"], s[f"{name}.bias"], pad, stride)

    lrn = lambda t: N.lrn(t, [5, 2, 1e-4, 0.75], lrn_mode)  # noqa: E731
    steps = [
        conv("conv1", 0, 2), N.relu, lrn, lambda t: N.pool(t, "max", 3, 2),
        conv("conv2", 1, 2), N.relu, lrn, lambda t: N.pool(t, "max", 3, 2, (0, 1, 0, 1)),
        conv("conv3", 1), N.relu, conv("conv4", 1), N.relu, conv("conv5", 1), N.relu, lambda t: N.pool(t, "max", 3, 2),
        conv("fc6"), N.relu, conv("fc7"), N.relu, conv("fc8"), N.softmax,
    ]
    for step in steps:
        x = step(x)
    return x


def test_forward_equals_hand_composition(small_net: SimpleNetwork) -> None:
    x = images(2)
    want = hand_composition(small_net, x)
    assert small_net.layer("fc6").weight.shape[2:] == (2, 2)  # fc6 covers pool5's map at 99x99
    got = small_net(x)
    assert got.shape == (2, 7, 1, 1)
    assert rel(got, want) < 1e-5
    small_net.lrn_mode = "matconvnet-cpu"
    try:
        cpu = small_net(x)
    finally:
        small_net.lrn_mode = "exact"
    assert rel(cpu, hand_composition(small_net, x, "matconvnet-cpu")) < 1e-5


def test_return_all_gives_every_layer_in_order(small_net: SimpleNetwork) -> None:
    x = images(1)
    outs = small_net(x, return_all=True)
    assert list(outs) == small_net.layer_names
    # relu outputs are separate tensors: the conv output before it keeps its negatives
    assert float(outs["conv1"].detach().min()) < 0 and float(outs["relu1"].detach().min()) == 0
    assert torch.equal(outs["prob"], small_net(x))


def test_gradients_flow_to_every_parameter(small_net: SimpleNetwork) -> None:
    x = images(2)
    small_net.zero_grad()
    (small_net(x) * torch.randn(2, 7, 1, 1)).sum().backward()
    for name, p in small_net.named_parameters():
        assert p.grad is not None and float(p.grad.abs().max()) > 0, name


def test_dropout_only_in_train_mode(small_net: SimpleNetwork) -> None:
    x = images(2)
    assert not small_net.training  # starts in test mode, as vl_simplenn
    a, b = small_net(x), small_net(x)
    assert torch.equal(a, b)
    small_net.train()
    try:
        c = small_net(x)
    finally:
        small_net.eval()
    assert not torch.allclose(a, c)


def test_state_dict_keys_and_truncation(small_net: SimpleNetwork) -> None:
    keys = set(small_net.state_dict())
    assert {"conv1.weight", "conv1.bias", "fc8.weight", "fc8.bias"} <= keys
    head = small_net.truncated("pool5")
    assert head.layer_names[-1] == "pool5" and "fc6.weight" not in head.state_dict()
    x = images(1)
    assert torch.equal(head(x), small_net(x, return_all=True)["pool5"])
    with torch.no_grad():
        head.layer("conv1").weight.zero_()
    assert float(small_net.layer("conv1").weight.detach().abs().max()) > 0  # nothing shared
    head.meta["classes"].append("z")
    assert len(small_net.meta["classes"]) == 7


def test_with_layers_appended(small_net: SimpleNetwork) -> None:
    head = small_net.truncated("relu7")
    extra = [LayerSpec("fc8new", "conv", {"pad": [0, 0, 0, 0], "stride": [1, 1]})]
    state = {"fc8new.weight": torch.randn(3, head.layer("fc7").weight.shape[0], 1, 1), "fc8new.bias": torch.zeros(3)}
    net = head.with_layers_appended(extra, state)
    x = images(2)
    want = N.conv(head(x), state["fc8new.weight"], state["fc8new.bias"])
    assert rel(net(x), want) < 1e-5
    with pytest.raises(CqdError, match="parameter .fc8new.bias. already exists"):
        net.with_layers_appended(extra, state)


def test_bnorm_layer_uses_moments() -> None:
    specs = [LayerSpec("bn", "bnorm", {"epsilon": 1e-4})]
    state = {"bn.weight": torch.tensor([2.0, 1.0]), "bn.bias": torch.tensor([0.0, 1.0]), "bn.moments": torch.tensor([[1.0, 2.0], [0.0, 1.0]])}
    net = SimpleNetwork(specs, state)
    y = net(torch.ones(1, 2, 1, 1))
    assert y.flatten().tolist() == [0.0, 2.0]
    assert "bn.moments" in net.state_dict()


@pytest.mark.parametrize(
    "mutate,fragment",
    [
        (lambda s: s.pop("conv2.weight"), "layer 'conv2' (conv): parameter 'conv2.weight'"),
        (lambda s: s.__setitem__("conv3.bias", torch.zeros(5)), "'conv3.bias' has shape [5], expected"),
        (lambda s: s.__setitem__("conv9.weight", torch.zeros(1)), "'conv9.weight' belongs to no layer"),
    ],
)
def test_bad_state_names_layer_and_parameter(mutate, fragment: str) -> None:
    specs = vgg_m_specs(num_classes=3, width=1 / 32, input_size=99)
    state = init_state(specs, 0)
    mutate(state)
    with pytest.raises(CqdError) as info:
        SimpleNetwork(specs, state)
    assert fragment in str(info.value)


def test_runtime_shape_error_names_layer() -> None:
    specs = [LayerSpec("c1", "conv", {"size": [3, 3, 3, 4]}), LayerSpec("c2", "conv", {"size": [1, 1, 5, 2]})]
    net = SimpleNetwork(specs)
    with pytest.raises(CqdError, match="layer 'c2' \\(conv\\).*filter depth"):
        net(torch.zeros(1, 3, 8, 8))
    with pytest.raises(CqdError, match="unknown LRN mode"):
        net.lrn_mode = "fast"
    with pytest.raises(CqdError, match="appears twice"):
        SimpleNetwork([LayerSpec("r", "relu"), LayerSpec("r", "relu")])


def test_speed_options_do_not_change_results(small_net: SimpleNetwork) -> None:
    x = images(2)
    g = torch.randn(2, 7, 1, 1, generator=torch.Generator().manual_seed(1))
    results = []
    for channels_last, inplace in ((True, True), (False, False)):
        small_net.channels_last, small_net.inplace_relu = channels_last, inplace
        xg = x.clone().requires_grad_()
        small_net.zero_grad()
        y = small_net(xg)
        (y * g).sum().backward()
        results.append((y.detach(), xg.grad, small_net.layer("conv1").weight.grad.clone()))
    small_net.channels_last, small_net.inplace_relu = True, True
    (y1, dx1, dw1), (y2, dx2, dw2) = results
    # FORMAT.md's tolerances: outputs 1e-5, whole-network gradients 1e-4 (float32 rounding differs by layout)
    assert rel(y1, y2) < 1e-5 and rel(dx1, dx2) < 1e-4 and rel(dw1, dw2) < 1e-4
    assert small_net.truncated("fc7").channels_last


def test_no_state_needs_sizes() -> None:
    with pytest.raises(CqdError, match="layer 'c' \\(conv\\): no state given and no 'size'"):
        SimpleNetwork([LayerSpec("c", "conv", {"pad": [0, 0, 0, 0]})])
    net = SimpleNetwork([LayerSpec("c", "conv", {"size": [3, 3, 2, 4]})])
    assert net.state_dict()["c.weight"].shape == (4, 2, 3, 3) and net.state_dict()["c.bias"].shape == (4,)
