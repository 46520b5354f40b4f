"""DagNN blocks in cqd_port.nn (convt, crop, sum, concat, scale) and GraphNetwork."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cqd_port.errors import CqdError
from cqd_port.layout import filters_to_oihw, mcn_to_nchw
from cqd_port.models.graph import GraphNetwork, execution_order
from cqd_port.models.layers import LayerSpec
from cqd_port.nn import functional as MF


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape)).to(torch.float64)


# ----------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("upsample, groups", [((2, 2), 1), ((3, 2), 1), ((2, 2), 2)])
def test_conv_transpose_is_the_adjoint_of_conv(upsample: tuple[int, int], groups: int) -> None:
    # vl_nnconvt: Y(:) = M' X(:) where U(:) = M V(:) is vl_nnconv with the same filter bank
    filters = _rand(3, 4, 2, 6, seed=1)  # FH x FW x K x FD (FD = depth of X = 6)
    weight = filters_to_oihw(filters)  # FD x K x FH x FW: conv's OIHW and convt's layout alike
    v = _rand(1, 2 * groups, 11, 9, seed=2)
    u = MF.conv(v, weight, None, stride=upsample)
    x = _rand(*u.shape, seed=3)
    y = MF.conv_transpose(x, weight, None, upsample=upsample, groups=groups)
    assert y.shape[2:] == (upsample[0] * (x.shape[2] - 1) + 3, upsample[1] * (x.shape[3] - 1) + 4)
    v_same = v[:, :, : y.shape[2], : y.shape[3]]
    u_same = MF.conv(v_same, weight, None, stride=upsample)
    assert torch.allclose((u_same * x).sum(), (v_same * y).sum(), rtol=1e-10)


def test_conv_transpose_asymmetric_crop_slices_the_full_output() -> None:
    # LapSRN's upsampling: 3x3 filters, upsample 2, crop [0 1 0 1] -> exactly twice the size
    weight, bias, x = _rand(4, 3, 3, 3, seed=4), _rand(3, seed=5), _rand(2, 4, 5, 7, seed=6)
    full = MF.conv_transpose(x, weight, bias, upsample=2)
    cropped = MF.conv_transpose(x, weight, bias, upsample=2, crop=[0, 1, 0, 1])
    assert cropped.shape == (2, 3, 10, 14)
    assert torch.equal(cropped, full[:, :, :10, :14])
    symmetric = MF.conv_transpose(x, weight, bias, upsample=2, crop=1)
    assert torch.allclose(symmetric, full[:, :, 1:-1, 1:-1])
    with pytest.raises(CqdError, match="filter bank depth is 4"):
        MF.conv_transpose(_rand(1, 3, 5, 5), weight, bias, upsample=2)


def test_crop_to_uses_matconvnets_adapted_crops() -> None:
    x = torch.arange(10 * 12, dtype=torch.float64).reshape(1, 1, 10, 12)
    # difference 4 x 4; offset [1 3]: top 1 (bottom 3), left 3 (right 1)
    assert torch.equal(MF.crop_to(x, (6, 8), [1, 3]), x[:, :, 1:7, 3:11])
    # an offset beyond the difference is capped at the difference
    assert torch.equal(MF.crop_to(x, (6, 8), [9, 9]), x[:, :, 4:10, 4:12])
    with pytest.raises(CqdError, match="smaller than the reference"):
        MF.crop_to(x, (11, 8))


def test_concat_uses_matlab_dimensions_and_sum_refuses_broadcasting() -> None:
    a, b = _rand(2, 3, 4, 5, seed=1), _rand(2, 1, 4, 5, seed=2)
    assert MF.concat([a, b]).shape == (2, 4, 4, 5)  # dim 3: channels
    assert MF.concat([a, a], dim=4).shape == (4, 3, 4, 5)  # dim 4: images
    assert MF.concat([a, a], dim=1).shape == (2, 3, 8, 5)  # dim 1: height
    assert torch.equal(MF.sum_inputs([a, a, a]), a + a + a)
    with pytest.raises(CqdError, match="must match"):
        MF.sum_inputs([a, b])


def test_scale_broadcasts_as_bsxfun_on_matconvnet_shapes() -> None:
    x = _rand(1, 3, 4, 5, seed=7)
    gain = mcn_to_nchw(np.array([2.0, 3.0, 4.0]).reshape(1, 1, 3))  # 1 x 1 x C: per channel
    bias = mcn_to_nchw(np.array([1.0, 2.0, 3.0, 4.0]).reshape(4, 1))  # C x 1 in MATLAB broadcasts over H
    y = MF.scale(x, gain, bias)
    expected = x * torch.tensor([2.0, 3.0, 4.0]).reshape(1, 3, 1, 1) + torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 4, 1)
    assert torch.allclose(y, expected)


# ----------------------------------------------------------------------------- GraphNetwork


def _layer(name: str, kind: str, inputs: list[str], output: str, **attrs) -> LayerSpec:
    return LayerSpec(name, kind, {"inputs": inputs, "outputs": [output], **attrs})


def test_execution_order_is_matconvnets_height_order() -> None:
    # DagNN.rebuild: height = 1 + max height of the readers; run by decreasing height, ties in file order
    specs = [
        _layer("C", "relu", ["x"], "c"),
        _layer("A", "relu", ["x"], "a"),
        _layer("B", "relu", ["a"], "b"),
        _layer("D", "sum", ["b", "c"], "d"),
    ]
    # heights A 3, B 2, C 2, D 1: C (file index 0) runs before B (index 2), though B is on the longer branch
    assert [specs[i].name for i in execution_order(specs)] == ["A", "C", "B", "D"]
    cyclic = [_layer("P", "relu", ["q"], "p"), _layer("Q", "relu", ["p"], "q")]
    with pytest.raises(CqdError, match="cycle"):
        execution_order(cyclic)


def _recursive_net() -> GraphNetwork:
    conv = {"pad": [1, 1, 1, 1], "stride": [1, 1], "dilate": [1, 1], "has_bias": True}
    specs = [
        _layer("conv_a", "conv", ["input"], "h1", **conv),
        _layer("relu_a", "relu", ["h1"], "r1", leak=0.0),
        _layer("conv_b", "conv", ["r1"], "h2", shared={"weight": "conv_a.weight", "bias": "conv_a.bias"}, **conv),
        _layer("skip", "sum", ["h2", "input"], "output"),
    ]
    state = {"conv_a.weight": _rand(2, 2, 3, 3, seed=8).float(), "conv_a.bias": _rand(2, seed=9).float()}
    return GraphNetwork(specs, state)


def test_shared_parameters_are_one_parameter() -> None:
    net = _recursive_net()
    assert net.layer("conv_b").weight is net.layer("conv_a").weight
    assert sorted(net.state_dict()) == ["conv_a.bias", "conv_a.weight"]
    x = _rand(1, 2, 6, 6, seed=10).float()
    y = net(x)
    w, b = net.layer("conv_a").weight, net.layer("conv_a").bias
    expected = MF.conv(MF.relu(MF.conv(x, w, b, 1)), w, b, 1) + x
    assert torch.allclose(y, expected)
    y.sum().backward()  # the derivative of a shared parameter accumulates both uses, as MatConvNet's
    assert w.grad is not None and net.layer("conv_b").weight.grad is w.grad
    state = {k: v + 1 for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    assert torch.equal(net.layer("conv_b").weight, state["conv_a.weight"])


def test_any_variable_by_name() -> None:
    net = _recursive_net()
    x = _rand(1, 2, 5, 5, seed=11).float()
    everything = net(x, return_all=True)
    assert list(everything) == ["input", "h1", "r1", "h2", "output"]
    assert torch.equal(net(x, outputs="r1"), everything["r1"])
    picked = net(x, outputs=["h1", "output"])
    assert list(picked) == ["h1", "output"] and torch.equal(picked["output"], everything["output"])
    with pytest.raises(CqdError, match="no variable named 'nope'"):
        net(x, outputs="nope")
    assert net.inputs == ["input"] and net.outputs == ["output"]
    assert [s.name for s in net.truncated("relu_a").specs] == ["conv_a", "relu_a"]
