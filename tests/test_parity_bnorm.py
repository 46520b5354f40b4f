"""Batch norm as MatConvNet 1.0-beta18 computes it, and parity rows that hold on real model files (issue 18).

Every expected number here is derived independently, in float64 with numpy
(the formulas written out below), never by the port.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
import torch

from cqd_port.analysis.gradients import input_gradients
from cqd_port.errors import CqdError
from cqd_port_parity.compare import compare
from cqd_port_parity.references import NetworkReference, Provenance
from cqd_port_parity.runner import compare_network
from matconvnet_weights.convert import load_model

BETA18_EPSILON = 1e-3  # vl_nnbnorm.cu of 1.0-beta18: `epsilon = 10E-4`, passed by neither vl_simplenn nor dagnn.BatchNorm


# ----------------------------------------------------------------------------- independent float64 formulas (NCHW)


def np_bnorm_test(x: np.ndarray, g: np.ndarray, b: np.ndarray, moments: np.ndarray) -> np.ndarray:
    """vl_nnbnorm(x, g, b, 'moments', [mean sigma]): sigma used as stored."""
    c = x.shape[1]
    return g.reshape(1, c, 1, 1) * (x - moments[:, 0].reshape(1, c, 1, 1)) / moments[:, 1].reshape(1, c, 1, 1) + b.reshape(1, c, 1, 1)


def np_bnorm_backward_batch(x: np.ndarray, g: np.ndarray, dzdy: np.ndarray, epsilon: float):
    """[dzdx, dzdg, dzdb, moments] = vl_nnbnorm(x, g, b, dzdy): batch statistics over N, H, W."""
    c = x.shape[1]
    axes = (0, 2, 3)
    m = x.size // c
    mu = x.mean(axis=axes)
    sigma = np.sqrt(((x - mu.reshape(1, c, 1, 1)) ** 2).mean(axis=axes) + epsilon)
    xhat = (x - mu.reshape(1, c, 1, 1)) / sigma.reshape(1, c, 1, 1)
    dzdb = dzdy.sum(axis=axes)
    dzdg = (dzdy * xhat).sum(axis=axes)
    dzdx = (g / sigma).reshape(1, c, 1, 1) * (dzdy - (dzdb / m).reshape(1, c, 1, 1) - xhat * (dzdg / m).reshape(1, c, 1, 1))
    return dzdx, dzdg, dzdb, np.stack([mu, sigma], axis=1)


def np_conv1x1(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """vl_nnconv with 1 x 1 filters; `w` is K x C."""
    return np.einsum("kc,nchw->nkhw", w, x) + b.reshape(1, -1, 1, 1)


# ----------------------------------------------------------------------------- model files


def _cell(*items: Any) -> np.ndarray:
    cell = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        cell[0, i] = item
    return cell


def _filters_1x1(w: np.ndarray) -> np.ndarray:
    """K x C -> MatConvNet's 1 x 1 x C x K filter bank."""
    return np.ascontiguousarray(w.T.reshape(1, 1, w.shape[1], w.shape[0])).astype(np.float32)


def _conv_layer(name: str, w: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    return {"name": name, "type": "conv", "weights": _cell(_filters_1x1(w), b.reshape(-1, 1).astype(np.float32)),
            "pad": np.zeros((1, 4)), "stride": np.ones((1, 2))}


def _bnorm_layer(name: str, g: np.ndarray, b: np.ndarray, moments: np.ndarray, **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "bnorm", "weights": _cell(g.reshape(-1, 1).astype(np.float32), b.reshape(-1, 1).astype(np.float32),
                                                            moments.astype(np.float32)), **fields}


def _save_simplenn(path: Path, layers: list[dict[str, Any]]) -> Path:
    meta = {"inputs": {"name": "input", "size": np.array([[4.0, 5.0, 3.0, 1.0]])}}
    scipy.io.savemat(path, {"layers": _cell(*layers), "meta": meta})
    return path


def _save_dagnn_bnorm(path: Path, g: np.ndarray, b: np.ndarray, moments: np.ndarray) -> Path:
    """A DagNN file (saveobj layout) of one dagnn.BatchNorm whose block stores no epsilon (beta18's)."""
    def struct_array(items: list[dict[str, Any]]) -> np.ndarray:
        fields = list(items[0])
        array = np.empty((1, len(items)), dtype=[(f, object) for f in fields])
        for i, item in enumerate(items):
            for f in fields:
                array[0, i][f] = item[f]
        return array

    params = [{"name": n, "value": v.astype(np.float32), "learningRate": np.ones((1, 1)), "weightDecay": np.zeros((1, 1))}
              for n, v in (("bn1m", g.reshape(-1, 1)), ("bn1b", b.reshape(-1, 1)), ("bn1x", moments))]
    layers = [{"name": "bn1", "type": "dagnn.BatchNorm", "inputs": _cell("input"), "outputs": _cell("out"),
               "params": _cell("bn1m", "bn1b", "bn1x"), "block": {"numChannels": np.array([[float(g.size)]])}}]
    net = {"vars": struct_array([{"name": "input", "precious": False}, {"name": "out", "precious": False}]),
           "params": struct_array(params), "layers": struct_array(layers),
           "meta": {"inputs": {"name": "input", "size": np.array([[4.0, 5.0, 3.0, 1.0]])}}}
    scipy.io.savemat(path, net)
    return path


def _bnorm_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 4, 5)) * np.array([0.05, 1.0, 3.0]).reshape(1, 3, 1, 1) + 0.5  # one channel of small variance
    g, b = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    moments = np.stack([rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)], axis=1)  # stored, unlike the batch's
    dzdy = rng.standard_normal(x.shape)
    return x, g.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64), \
        moments.astype(np.float32).astype(np.float64), dzdy


def _run_bnorm(model: torch.nn.Module, x: np.ndarray, dzdy: np.ndarray):
    model = model.double()
    layer = model.layer("bn1")
    layer.moments.requires_grad_(True)
    xt = torch.from_numpy(x).requires_grad_(True)
    y = model(xt)
    y.backward(torch.from_numpy(dzdy))
    return y.detach().numpy(), xt.grad.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy(), layer.moments.grad


# ----------------------------------------------------------------------------- epsilon and the test-mode backward


@pytest.mark.parametrize("layout", ["simplenn", "dagnn"])
def test_a_bnorm_without_epsilon_uses_beta18s_and_backpropagates_with_batch_statistics(tmp_path: Path, layout: str) -> None:
    x, g, b, moments, dzdy = _bnorm_data()
    path = _save_simplenn(tmp_path / "bn.mat", [_bnorm_layer("bn1", g, b, moments)]) if layout == "simplenn" \
        else _save_dagnn_bnorm(tmp_path / "bn.mat", g, b, moments)
    model = load_model(path)
    assert model.layer("bn1").epsilon == BETA18_EPSILON
    y, dzdx, dzdg, dzdb, dzdmoments = _run_bnorm(model, x, dzdy)

    np.testing.assert_allclose(y, np_bnorm_test(x, g, b, moments), rtol=1e-12, atol=1e-12)  # forward: the stored moments
    want_dzdx, want_dzdg, want_dzdb, batch = np_bnorm_backward_batch(x, g, dzdy, BETA18_EPSILON)
    np.testing.assert_allclose(dzdx, want_dzdx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dzdg, want_dzdg, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dzdb, want_dzdb, rtol=1e-10, atol=1e-12)
    # the moments' derivative as vl_simplenn and dagnn.BatchNorm return it: the batch moments times N
    assert dzdmoments is not None
    np.testing.assert_allclose(dzdmoments.numpy(), batch * x.shape[0], rtol=1e-12)
    # the epsilon matters: with 1e-5 (what the port used) the derivative of the small-variance channel is off
    other_dzdx = np_bnorm_backward_batch(x, g, dzdy, 1e-5)[0]
    assert np.abs(other_dzdx - want_dzdx).max() / np.abs(want_dzdx).max() > 1e-2


def test_a_bnorm_that_stores_its_epsilon_uses_it(tmp_path: Path) -> None:
    x, g, b, moments, dzdy = _bnorm_data(1)
    path = _save_simplenn(tmp_path / "bn.mat", [_bnorm_layer("bn1", g, b, moments, epsilon=np.array([[1e-5]]))])
    model = load_model(path)
    assert model.layer("bn1").epsilon == 1e-5
    _, dzdx, *_ = _run_bnorm(model, x, dzdy)
    np.testing.assert_allclose(dzdx, np_bnorm_backward_batch(x, g, dzdy, 1e-5)[0], rtol=1e-10, atol=1e-12)


def test_the_consistent_backward_is_a_named_option(tmp_path: Path) -> None:
    x, g, b, moments, dzdy = _bnorm_data(2)
    model = load_model(_save_simplenn(tmp_path / "bn.mat", [_bnorm_layer("bn1", g, b, moments)]))
    assert model.bnorm_backward == "matconvnet"
    model.bnorm_backward = "consistent"
    _, dzdx, dzdg, dzdb, dzdmoments = _run_bnorm(model, x, dzdy)
    c = x.shape[1]
    sigma = moments[:, 1].reshape(1, c, 1, 1)
    np.testing.assert_allclose(dzdx, g.reshape(1, c, 1, 1) / sigma * dzdy, rtol=1e-12)
    np.testing.assert_allclose(dzdg, (dzdy * (x - moments[:, 0].reshape(1, c, 1, 1)) / sigma).sum(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(dzdb, dzdy.sum(axis=(0, 2, 3)), rtol=1e-10)
    gs = g.reshape(1, c, 1, 1) / sigma
    true_dmoments = np.stack([-(dzdy * gs).sum(axis=(0, 2, 3)),
                              -(dzdy * gs * (x - moments[:, 0].reshape(1, c, 1, 1)) / sigma).sum(axis=(0, 2, 3))], axis=1)
    np.testing.assert_allclose(dzdmoments.numpy(), true_dmoments, rtol=1e-10)  # the true derivative, not beta18's
    with pytest.raises(CqdError, match="unknown bnorm backward 'exact'"):
        model.bnorm_backward = "exact"


def test_analyze_gradients_on_a_bnorm_network_back_propagates_as_matconvnet(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x, g, b, moments, _ = _bnorm_data(3)
    w = rng.standard_normal((4, 3, 4, 5)) * 0.3  # a fully connected conv to 4 classes, K x C x H x W
    fc = {"name": "fc", "type": "conv", "weights": _cell(np.ascontiguousarray(w.transpose(2, 3, 1, 0)).astype(np.float32),
                                                         np.zeros((4, 1), np.float32)), "pad": np.zeros((1, 4)), "stride": np.ones((1, 2))}
    model = load_model(_save_simplenn(tmp_path / "bnfc.mat", [_bnorm_layer("bn1", g, b, moments), fc])).double()
    w = w.astype(np.float32).astype(np.float64)
    labels = np.array([1, 3])
    got = input_gradients(model, torch.from_numpy(x), torch.from_numpy(labels)).numpy()

    scores = np.einsum("kchw,nchw->nk", w, np_bnorm_test(x, g, b, moments))
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dscores = np.eye(4)[labels] - p  # d sum_n log p(label_n) / d scores
    dzdy = np.einsum("nk,kchw->nchw", dscores, w)
    want = np_bnorm_backward_batch(x, g, dzdy, BETA18_EPSILON)[0]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- whole-network parity rows


def _reference(names, types, xs, dzdx, dzdw) -> NetworkReference:
    as32 = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731  the file holds float32
    return NetworkReference(
        path=Path("ref_constructed.mat"), provenance=Provenance(), image=as32(xs[0]), input=as32(xs[0]), names=names,
        types=types, x=[as32(v) for v in xs], dzdy=as32(dzdx[-1]), dzdx=[as32(v) for v in dzdx],
        dzdw=[{k: as32(v) for k, v in layer.items()} for layer in dzdw],
    )


def test_whole_network_rows_of_a_bnorm_network_match_beta18(tmp_path: Path) -> None:
    """conv -> bnorm -> relu -> conv, the reference written out in float64 as vl_simplenn computes it."""
    rng = np.random.default_rng(4)
    f32 = lambda a: np.asarray(a, np.float32).astype(np.float64)  # noqa: E731  parameters as stored
    x0 = f32(rng.standard_normal((2, 2, 8, 8)) * 10)
    w1, b1 = f32(rng.standard_normal((3, 2))), f32(rng.standard_normal(3))
    g, b = f32(rng.uniform(0.5, 1.5, 3)), f32(rng.standard_normal(3))
    moments = f32(np.stack([rng.standard_normal(3) * 5, rng.uniform(5, 20, 3)], axis=1))
    w2, b2 = f32(rng.standard_normal((2, 3))), f32(rng.standard_normal(2))
    x1 = np_conv1x1(x0, w1, b1)
    x2 = np_bnorm_test(x1, g, b, moments)
    x3 = np.maximum(x2, 0)
    x4 = np_conv1x1(x3, w2, b2)
    dzdy = rng.standard_normal(x4.shape)
    d3 = np.einsum("kc,nkhw->nchw", w2, dzdy)
    dw2, db2 = np.einsum("nkhw,nchw->kc", dzdy, x3), dzdy.sum(axis=(0, 2, 3))
    d2 = d3 * (x2 > 0)
    d1, dg, db, batch = np_bnorm_backward_batch(x1, g, d2, BETA18_EPSILON)
    d0 = np.einsum("kc,nkhw->nchw", w1, d1)
    dw1 = np.einsum("nkhw,nchw->kc", d1, x0)
    # conv1's bias feeds the bnorm: its true derivative is 0; MatConvNet's float32 sum holds rounding noise
    db1 = np.asarray(d1, np.float32)[:, :, ::-1, ::-1].sum(axis=(0, 2, 3), dtype=np.float32)
    assert 0 < np.abs(db1).max() < 1e-4 * np.abs(d1).sum(axis=(0, 2, 3)).max()
    oihw = lambda w: w.reshape(*w.shape, 1, 1)  # noqa: E731
    ref = _reference(
        ["conv1", "bn1", "relu1", "conv2"], ["conv", "bnorm", "relu", "conv"], [x0, x1, x2, x3, x4], [d0, d1, d2, d3, dzdy],
        [{"weight": oihw(dw1), "bias": db1}, {"weight": dg, "bias": db, "moments": batch * x0.shape[0]}, {},
         {"weight": oihw(dw2), "bias": db2}],
    )
    path = _save_simplenn(tmp_path / "net.mat", [_conv_layer("conv1", w1, b1), _bnorm_layer("bn1", g, b, moments),
                                                 {"name": "relu1", "type": "relu"}, _conv_layer("conv2", w2, b2)])
    rows = compare_network(load_model(path), ref, "constructed")

    failures = [(r.case, r.quantity, r.rel, r.note) for r in rows if not r.passed]
    assert failures == []
    quantities = {(r.case, r.quantity) for r in rows}
    assert {("02 bn1", "dzdmoments"), ("02 bn1", "local dzdmoments"), ("01 conv1", "dzdb")} <= quantities
    bias_row = next(r for r in rows if (r.case, r.quantity) == ("01 conv1", "dzdb"))
    assert "near-zero reference" in bias_row.note and "what the layer summed" in bias_row.note
    # the test-mode derivative through the stored moments is not beta18's: the input derivative differs by far
    c = 3
    through_moments = np.einsum("kc,nkhw->nchw", w1, (g / moments[:, 1]).reshape(1, c, 1, 1) * d2)
    assert not compare("conv1", "dzdx", through_moments, d0, 1e-4).passed


def test_whole_network_rows_take_the_references_relu_sign_at_float_noise(tmp_path: Path) -> None:
    """One ReLU input is exactly 0 in the port and +2e-9 (float noise, the other sign) in the reference."""
    rng = np.random.default_rng(5)
    x0 = np.round(rng.uniform(1, 3, (1, 2, 3, 3)) * 4) / 4
    x0[0, :, 1, 1] = [1.0, 1.0]
    w1 = np.array([[0.5, -0.5], [1.0, 0.25], [-0.75, 1.5]])
    b1 = np.array([0.0, 0.5, 0.25])
    w2, b2 = np.round(rng.standard_normal((2, 3)) * 8) / 8, np.zeros(2)
    x1 = np_conv1x1(x0, w1, b1)
    assert x1[0, 0, 1, 1] == 0.0
    x1[0, 0, 1, 1] = 2e-9  # MatConvNet's float32 sum landed just above zero
    x2 = np.maximum(x1, 0)
    x3 = np_conv1x1(x2, w2, b2)
    dzdy = rng.standard_normal(x3.shape) + 2.0
    d2 = np.einsum("kc,nkhw->nchw", w2, dzdy)
    d1 = d2 * (x1 > 0)
    ref = _reference(["conv1", "relu1", "conv2"], ["conv", "relu", "conv"], [x0, x1, x2, x3], [np.einsum("kc,nkhw->nchw", w1, d1), d1, d2, dzdy],
                     [{"weight": np.einsum("nkhw,nchw->kc", d1, x0)[..., None, None], "bias": d1.sum(axis=(0, 2, 3))}, {},
                      {"weight": np.einsum("nkhw,nchw->kc", dzdy, x2)[..., None, None], "bias": dzdy.sum(axis=(0, 2, 3))}])
    path = _save_simplenn(tmp_path / "net.mat", [_conv_layer("conv1", w1, b1), {"name": "relu1", "type": "relu"},
                                                 _conv_layer("conv2", w2, b2)])
    rows = compare_network(load_model(path), ref, "constructed")
    assert [(r.case, r.quantity, r.rel) for r in rows if not r.passed] == []
    conv1_grads = [r for r in rows if r.case == "01 conv1" and r.quantity in ("dzdx", "dzdw", "dzdb")]
    assert len(conv1_grads) == 3
    for row in conv1_grads:
        assert "reference's ReLU sign at 1 input at float noise of zero" in row.note and "layer 2: 1" in row.note
    assert all("ReLU sign" not in r.note for r in rows if r.case == "03 conv2")

    # a sign that differs away from float noise is a real error: the port keeps its own sign there, and fails
    x1_bad = x1.copy()
    x1_bad[0, 1, 0, 0] = -x1_bad[0, 1, 0, 0]  # an input of ~2 with the wrong sign
    d1_bad = d2 * (x1_bad > 0)
    ref.x[1] = torch.from_numpy(x1_bad.astype(np.float32))
    ref.dzdx[1] = torch.from_numpy(d1_bad.astype(np.float32))
    ref.dzdx[0] = torch.from_numpy(np.einsum("kc,nkhw->nchw", w1, d1_bad).astype(np.float32))
    rows = compare_network(load_model(path), ref, "constructed")
    assert not next(r for r in rows if (r.case, r.quantity) == ("02 relu1", "dzdx")).passed
    assert not next(r for r in rows if (r.case, r.quantity) == ("01 conv1", "dzdx")).passed


# ----------------------------------------------------------------------------- floors and forward tolerances


def test_a_denormal_reference_is_measured_against_what_the_layer_summed() -> None:
    denormals = np.array([2.8e-41, -1.4e-42, 0.0, 7e-42], dtype=np.float32)
    noise = np.array([3e-8, -1e-8, 0.0, 2e-8])  # float32 rounding of sums of magnitude ~1
    row = compare("bnorm", "dzdx", noise, denormals, 1e-4, carried=1.0)
    assert row.passed and row.rel < 1e-4 and "near-zero reference" in row.note
    assert not compare("bnorm", "dzdx", np.full(4, 1e-3), denormals, 1e-4, carried=1.0).passed
    # the floor scales with what was summed, not with a constant: 100x less summed, 100x the error
    assert compare("bnorm", "dzdx", noise, denormals, 1e-4, carried=0.01).rel == pytest.approx(100 * row.rel)
    # an exactly zero reference with nothing summed stays absolute
    assert not compare("relu", "dzdx", np.full(4, 1e-3), np.zeros(4), 1e-4).passed


def test_forward_tolerance_grows_with_depth_and_accumulated_magnitude_only() -> None:
    from cqd_port_parity.compare import forward_tolerance

    assert forward_tolerance(1, 1.0) == 1e-5
    assert forward_tolerance(16, 2.0) == 1e-5  # VGG-VD-16's layers keep the single-operator tolerance
    assert forward_tolerance(17, 143.0) == pytest.approx(2 * np.finfo(np.float32).eps * np.sqrt(17) * 143)  # 1.4e-4
    assert forward_tolerance(17, 1e9) == 1e-3 and forward_tolerance(3, float("inf")) == 1e-3


def test_a_small_last_layer_after_large_activations_gets_the_float32_error_it_carries(tmp_path: Path) -> None:
    """Like DnCNN's last layer: activations of ~1e3 upstream, an output of ~1, MatConvNet 3e-5 off in float32."""
    rng = np.random.default_rng(6)
    x0 = rng.uniform(100, 255, (1, 2, 4, 4))
    w1, b1 = rng.uniform(2, 4, (3, 2)), np.zeros(3)
    w2, b2 = rng.standard_normal((1, 3)) * 1e-3, np.zeros(1)
    x1 = np_conv1x1(x0, w1, b1)
    x2 = np_conv1x1(x1, w2, b2)
    assert np.abs(x1).max() / np.abs(x2).max() > 100
    float32_error = 3e-5 * np.abs(x2).max()
    x2_ref = x2 + float32_error * np.sign(rng.standard_normal(x2.shape))
    dzdy = rng.standard_normal(x2.shape)
    d1 = np.einsum("kc,nkhw->nchw", w2, dzdy)
    d0 = np.einsum("kc,nkhw->nchw", w1, d1)
    dzdw = [{"weight": np.einsum("nkhw,nchw->kc", d1, x0)[..., None, None], "bias": d1.sum(axis=(0, 2, 3))},
            {"weight": np.einsum("nkhw,nchw->kc", dzdy, x1)[..., None, None], "bias": dzdy.sum(axis=(0, 2, 3))}]
    path = _save_simplenn(tmp_path / "net.mat", [_conv_layer("conv1", w1, b1), _conv_layer("conv2", w2, b2)])
    model = load_model(path).double()
    ref = _reference(["conv1", "conv2"], ["conv", "conv"], [x0, x1, x2_ref], [d0, d1, dzdy], dzdw)
    last = next(r for r in compare_network(model, ref, "c") if (r.case, r.quantity) == ("02 conv2", "y"))
    assert last.passed and last.tol > 3e-5 and last.rel == pytest.approx(3e-5, rel=0.05)
    # the same error on the first layer, whose output is the largest so far, still fails
    ref = _reference(["conv1", "conv2"], ["conv", "conv"], [x0, x1 + 3e-5 * np.abs(x1).max(), x2], [d0, d1, dzdy], dzdw)
    first = next(r for r in compare_network(model, ref, "c") if (r.case, r.quantity) == ("01 conv1", "y"))
    assert not first.passed and first.tol == 1e-5
