"""Every operator case of parity/reference/ops_*.mat, forward and backward, through cqd_port.nn.

The reference files were written by MatConvNet's own kernels (FORMAT.md);
relative error = max|got - ref| / max|ref| must stay under 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

import cqd_port.nn as N
from cqd_port.layout import bias_vector, filters_to_oihw, mcn_to_nchw

REFERENCE = Path(__file__).resolve().parents[1] / "parity" / "reference"
TOL = 1e-5


def _cases(name: str) -> list:
    path = REFERENCE / f"{name}.mat"
    if not path.exists():
        pytest.fail(f"reference data missing: {path}", pytrace=False)
    data = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=False)
    return [c[0, 0] for c in data["cases"].ravel()]


def _ids(cases: list) -> list[str]:
    return [str(c.name[0]) for c in cases]


def rel(got: torch.Tensor, ref) -> float:
    ref = torch.as_tensor(np.asarray(ref, dtype=np.float64)) if not isinstance(ref, torch.Tensor) else ref.double()
    scale = float(ref.abs().max())  # an all-zero reference (ties_all_equal's y): absolute error, as parity.compare
    return float((got.detach().double() - ref).abs().max()) / (scale if scale > 0 else 1.0)


def vec(a) -> list[float]:
    return [float(v) for v in np.asarray(a).ravel()]


CONV = _cases("ops_conv") + _cases("ops_conv_dilate")


@pytest.mark.parametrize("case", CONV, ids=_ids(CONV))
def test_conv_matches_vl_nnconv(case) -> None:
    x = mcn_to_nchw(case.x).requires_grad_()
    w = filters_to_oihw(case.w).requires_grad_()
    b = bias_vector(case.b).requires_grad_() if case.b.size else None
    y = N.conv(x, w, b, vec(case.pad), vec(case.stride), vec(case.dilate))
    y.backward(mcn_to_nchw(case.dzdy))
    assert rel(y, mcn_to_nchw(case.y)) < TOL
    assert rel(x.grad, mcn_to_nchw(case.dzdx)) < TOL
    assert rel(w.grad, filters_to_oihw(case.dzdw)) < TOL
    if b is not None:
        assert rel(b.grad, bias_vector(case.dzdb)) < TOL


def test_conv_cases_cover_groups_no_bias_fc_and_dilation() -> None:
    names = set(_ids(CONV))
    assert {"groups2", "no_bias", "fully_connected", "asym_pad_stride", "dilate2_s2"} <= names


def test_conv_fully_connected_fast_path_equals_conv2d_in_float64() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 6, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(9, 7, 6, 6, generator=gen, dtype=torch.float64)
    b = torch.randn(9, generator=gen, dtype=torch.float64)
    want = torch.nn.functional.conv2d(x, w, b)
    assert torch.allclose(N.conv(x, w, b), want, rtol=1e-12, atol=1e-12)


POOL = _cases("ops_pool") + _cases("ops_pool_ties")  # ties: many exactly equal maxima per window


@pytest.mark.parametrize("case", POOL, ids=_ids(POOL))
def test_pool_matches_vl_nnpool(case) -> None:
    x = mcn_to_nchw(case.x).requires_grad_()
    y = N.pool(x, str(case.method[0]), vec(case.pool), vec(case.stride), vec(case.pad))
    y.backward(mcn_to_nchw(case.dzdy))
    assert rel(y, mcn_to_nchw(case.y)) < TOL
    assert rel(x.grad, mcn_to_nchw(case.dzdx)) < TOL


def test_avg_pool_divides_by_real_pixels_only() -> None:
    x = torch.ones(1, 1, 4, 4)
    y = N.pool(x, "avg", (3, 3), (2, 2), (0, 1, 0, 1))
    assert torch.equal(y, torch.ones_like(y))  # padding counted would give 4/9 or 6/9 at the border


def test_max_pool_pads_with_minus_infinity() -> None:
    x = -torch.ones(1, 1, 3, 3)
    assert torch.equal(N.pool(x, "max", (2, 2), (1, 1), (1, 1, 1, 1)), -torch.ones(1, 1, 4, 4))


@pytest.mark.parametrize("file,mode", [("ops_normalize", "matconvnet-cpu"), ("ops_normalize_exactpow", "exact")])
def test_lrn_matches_vl_nnnormalize(file: str, mode: str) -> None:
    cases = _cases(file)
    assert len(cases) >= 5
    for case in cases:
        x = mcn_to_nchw(case.x).requires_grad_()
        y = N.lrn(x, vec(case.param), mode)
        y.backward(mcn_to_nchw(case.dzdy))
        assert rel(y, mcn_to_nchw(case.y)) < 1e-6 * 2, (case.name[0], mode)
        assert rel(x.grad, mcn_to_nchw(case.dzdx)) < 1e-6 * 2, (case.name[0], mode)


def test_lrn_modes_differ_by_fast_pow_error() -> None:
    # the fast_pow approximation is off by ~1e-3: each mode must match only its own reference
    case = _cases("ops_normalize")[0]
    y = N.lrn(mcn_to_nchw(case.x), vec(case.param), "exact")
    assert rel(y, mcn_to_nchw(case.y)) > 1e-4


def test_exact_lrn_backward_is_the_analytic_derivative() -> None:
    gen = torch.Generator().manual_seed(0)
    for param in ([5, 2.0, 1e-4, 0.75], [4, 1.0, 0.3, 0.5], [1, 1.0, 0.5, 0.75], [7, 0.5, 0.1, 1.2]):
        x = (torch.randn(2, 6, 3, 4, generator=gen, dtype=torch.float64) * 3).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: N.lrn(t, param, "exact"), (x,), eps=1e-6, atol=1e-7)


def test_lrn_exact_equals_pytorch_local_response_norm_for_odd_windows() -> None:
    x = torch.randn(2, 9, 5, 5, dtype=torch.float64) * 20
    want = torch.nn.functional.local_response_norm(x, 5, alpha=5 * 1e-4, beta=0.75, k=2.0)
    assert torch.allclose(N.lrn(x, [5, 2, 1e-4, 0.75]), want, rtol=1e-12)


def test_fast_pow_reproduces_matconvnet_bits() -> None:
    from cqd_port.nn.lrn import fast_pow

    # 2^k is exact in both the log and exp approximations
    x = torch.tensor([1.0, 2.0, 4.0, 0.5], dtype=torch.float32)
    assert torch.equal(fast_pow(x, -1.0), torch.tensor([1.0, 0.5, 0.25, 2.0]))
    # elsewhere it is an approximation: within 1% but not exact
    x = torch.linspace(1.1, 50.0, 100)
    approx, exact = fast_pow(x, -0.75), x.double() ** -0.75
    err = ((approx.double() - exact) / exact).abs()
    assert err.max() < 1e-2 and err.max() > 1e-5


MISC = {str(c.name[0]): c for c in _cases("ops_misc")}


@pytest.mark.parametrize("name", ["relu_leak_0", "relu_leak_0.1"])
def test_relu(name: str) -> None:
    case = MISC[name]
    x = mcn_to_nchw(case.x).requires_grad_()
    y = N.relu(x, float(case.leak.ravel()[0]))
    y.backward(mcn_to_nchw(case.dzdy))
    assert rel(y, mcn_to_nchw(case.y)) < TOL and rel(x.grad, mcn_to_nchw(case.dzdx)) < TOL


def test_softmax() -> None:
    case = MISC["softmax"]
    x = mcn_to_nchw(case.x).requires_grad_()
    y = N.softmax(x)
    y.backward(mcn_to_nchw(case.dzdy))
    assert rel(y, mcn_to_nchw(case.y)) < TOL and rel(x.grad, mcn_to_nchw(case.dzdx)) < TOL


@pytest.mark.parametrize("name", ["loss_softmaxlog", "softmaxloss"])
def test_softmaxlog_loss_summed_over_batch(name: str) -> None:
    case = MISC[name]
    x = mcn_to_nchw(case.x).requires_grad_()
    labels = torch.tensor(np.asarray(case.c).ravel().astype(np.int64) - 1)  # MatConvNet labels are 1-based
    y = N.softmaxlog_loss(x, labels)
    (y * float(case.dzdy.ravel()[0])).backward()
    assert y.dim() == 0
    assert abs(float(y.detach()) - float(case.y.ravel()[0])) / abs(float(case.y.ravel()[0])) < TOL
    assert rel(x.grad, mcn_to_nchw(case.dzdx)) < TOL


def test_softmaxlog_loss_is_stable_and_accepts_2d_and_spatial_scores() -> None:
    scores = torch.tensor([[1000.0, 0.0], [0.0, 1000.0]])
    assert float(N.softmaxlog_loss(scores, torch.tensor([0, 1]))) == 0.0
    assert abs(float(N.softmaxlog_loss(scores, torch.tensor([1, 1]))) - 1000.0) < 1e-3
    spatial = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    per_pixel = -torch.log_softmax(spatial, 1)[:, 2].sum()
    assert torch.allclose(N.softmaxlog_loss(spatial, torch.tensor([2, 2])), per_pixel)


def test_dropout_with_mask_and_modes() -> None:
    case = MISC["dropout_mask"]
    x = mcn_to_nchw(case.x).requires_grad_()
    y = N.dropout(x, float(case.rate.ravel()[0]), True, mcn_to_nchw(case.mask))
    y.backward(mcn_to_nchw(case.dzdy))
    assert rel(y, mcn_to_nchw(case.y)) < TOL and rel(x.grad, mcn_to_nchw(case.dzdx)) < TOL
    z = torch.ones(4, 8, 16, 16)
    assert torch.equal(N.dropout(z, 0.5, training=False), z)
    out = N.dropout(z, 0.5, training=True, generator=torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) == {0.0, 2.0}  # scaled by 1 / (1 - rate)
    assert 0.4 < float((out == 0).float().mean()) < 0.6


def test_bnorm_test_mode_uses_sigma_directly() -> None:
    case = MISC["bnorm_test_moments"]
    y = N.bnorm(
        mcn_to_nchw(case.x),
        torch.tensor(vec(case.g)),
        torch.tensor(vec(case.b)),
        torch.tensor(np.asarray(case.moments)),
        float(case.epsilon.ravel()[0]),
    )
    assert rel(y, mcn_to_nchw(case.y)) < TOL


@pytest.mark.parametrize("name", ["distill_T1", "distill_T10"])
def test_distill_loss_matches_vl_nndistillloss(name: str) -> None:
    case = MISC[name]
    t1, t2 = float(case.T1.ravel()[0]), float(case.T2.ravel()[0])  # T1: teacher v, T2: student x
    x = mcn_to_nchw(case.x).requires_grad_()
    v = mcn_to_nchw(case.v).requires_grad_()
    per_image = N.distill_loss(x, v, t_student=t2, t_teacher=t1, reduction="none")
    assert rel(per_image, vec(case.y)) < TOL
    total = N.distill_loss(x, v, t_student=t2, t_teacher=t1)
    assert abs(float(total.detach()) - sum(vec(case.y))) / abs(sum(vec(case.y))) < TOL
    (total * float(case.dzdy.ravel()[0])).backward()
    assert rel(x.grad, mcn_to_nchw(case.dzdx)) < TOL
    assert v.grad is None or float(v.grad.abs().max()) == 0.0


def test_distill_loss_backward_is_the_originals_when_temperatures_differ() -> None:
    gen = torch.Generator().manual_seed(3)
    student = torch.randn(4, 7, dtype=torch.float64, generator=gen).requires_grad_()
    teacher = torch.randn(4, 7, dtype=torch.float64, generator=gen)
    t_student, t_teacher = 2.0, 5.0
    loss = N.distill_loss(student, teacher, t_student, t_teacher)
    loss.backward()
    original = torch.softmax(student / t_student, 1) / t_student - torch.softmax(teacher / t_teacher, 1) / t_teacher
    assert torch.allclose(student.grad, original)
    # ... which is not the true gradient of the value
    s2 = student.detach().clone().requires_grad_()
    true_value = -(torch.softmax(teacher / t_teacher, 1) * torch.log_softmax(s2 / t_student, 1)).sum()
    assert torch.allclose(true_value, loss.detach())
    true_value.backward()
    assert not torch.allclose(s2.grad, original, atol=1e-3)


@pytest.mark.parametrize(
    "call,fragment",
    [
        (lambda: N.conv(torch.zeros(1, 5, 8, 8), torch.zeros(4, 2, 3, 3)), "multiple of the filter depth"),
        (lambda: N.conv(torch.zeros(1, 3, 8, 8), torch.zeros(4, 3, 3, 3), torch.zeros(5)), "bias has 5"),
        (lambda: N.conv(torch.zeros(1, 3, 2, 2), torch.zeros(4, 3, 3, 3)), "do not fit"),
        (lambda: N.pool(torch.zeros(1, 1, 8, 8), "median", (2, 2)), "unknown method 'median'"),
        (lambda: N.pool(torch.zeros(1, 1, 8, 8), "max", (2, 2), 1, (2, 0, 0, 0)), "smaller than the pooling window"),
        (lambda: N.lrn(torch.zeros(1, 4, 2, 2), [5, 2, 1e-4, 0.75], "fast"), "unknown LRN mode 'fast'"),
        (lambda: N.lrn(torch.zeros(1, 4, 2, 2), [5, 2, 1e-4]), "[N kappa alpha beta]"),
        (lambda: N.softmaxlog_loss(torch.zeros(2, 3), torch.tensor([0, 3])), "[0, 2]"),
        (lambda: N.distill_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0, 1.0), "differ in shape"),
    ],
)
def test_user_errors_are_one_line_cqd_errors(call, fragment: str) -> None:
    from cqd_port.errors import CqdError

    with pytest.raises(CqdError) as info:
        call()
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_max_pool_every_padding_path_equals_explicit_minus_inf_padding() -> None:
    # the symmetric, ceil-mode and explicit-padding paths against the definition
    gen = torch.Generator().manual_seed(5)
    for h, w in ((13, 13), (26, 26), (9, 10), (7, 6)):
        for pad in ((0, 1, 0, 1), (0, 2, 0, 1), (1, 1, 1, 1), (1, 0, 2, 1), (0, 0, 0, 0)):
            for pool_size, stride in (((3, 3), (2, 2)), ((3, 2), (1, 3))):
                if max(pad[0], pad[1]) >= pool_size[0] or max(pad[2], pad[3]) >= pool_size[1]:
                    continue
                x = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
                got = N.pool(x, "max", pool_size, stride, pad)
                padded = torch.nn.functional.pad(x, (pad[2], pad[3], pad[0], pad[1]), value=float("-inf"))
                want = torch.nn.functional.max_pool2d(padded, pool_size, stride)
                assert got.shape == want.shape, (h, w, pad, pool_size, stride)
                assert torch.equal(got, want)
                # the backward scatters in the H/W-swapped layout (MatConvNet's tie order), so the
                # definition does too: same windows, same accumulation order, bit-identical
                want_t = torch.nn.functional.max_pool2d(padded.transpose(2, 3), pool_size[::-1], stride[::-1])
                g = torch.randn(got.shape, generator=gen, dtype=torch.float64)
                (gx,) = torch.autograd.grad(got, x, g)
                (wx,) = torch.autograd.grad(want_t.transpose(2, 3), x, g)
                assert torch.equal(gx, wx)


@pytest.mark.parametrize("mode", ["exact", "matconvnet-cpu"])
def test_lrn_same_numbers_in_channels_last_memory(mode: str) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.relu(torch.randn(2, 10, 5, 6, generator=gen)) * 40
    g = torch.randn(x.shape, generator=gen)
    a = x.clone().requires_grad_()
    b = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    ya, yb = N.lrn(a, [5, 2, 1e-4, 0.75], mode), N.lrn(b, [5, 2, 1e-4, 0.75], mode)
    ya.backward(g)
    yb.backward(g)
    assert torch.allclose(ya, yb, rtol=1e-6) and torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-9)



def _column_major_first_max_gradient(x: torch.Tensor, pool: tuple[int, int], stride: tuple[int, int],
                                     pad: tuple[int, int, int, int], dzdy: torch.Tensor) -> torch.Tensor:
    """MatConvNet's max-pool backward by definition: each window's gradient to its first maximum, y fastest."""
    (ph, pw), (sy, sx), (pt, pb, pl, pr) = pool, stride, pad
    n, c, h, w = x.shape
    grad = torch.zeros_like(x)
    for b in range(n):
        for ch in range(c):
            for oy in range(dzdy.shape[2]):
                for ox in range(dzdy.shape[3]):
                    best = None
                    for ix in range(ox * sx - pl, ox * sx - pl + pw):  # x outer, y inner: column-major
                        for iy in range(oy * sy - pt, oy * sy - pt + ph):
                            if 0 <= iy < h and 0 <= ix < w and (best is None or x[b, ch, iy, ix] > x[b, ch, best[0], best[1]]):
                                best = (iy, ix)
                    grad[b, ch, best[0], best[1]] += dzdy[b, ch, oy, ox]
    return grad


@pytest.mark.parametrize(
    "pool_size, stride, pad",
    [((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 3), (2, 2), (0, 1, 0, 1)), ((3, 3), (2, 2), (1, 1, 1, 1)),
     ((3, 2), (1, 2), (1, 0, 0, 1)), ((2, 3), (2, 1), (0, 0, 2, 0))],
)
def test_max_pool_ties_go_to_first_maximum_in_column_major_order(pool_size, stride, pad) -> None:
    # [[0 1] [1 0]]: row-major order (PyTorch's max_pool2d) meets the maximum first at (y0, x1),
    # column-major order (MatConvNet: down a column, then right) at (y1, x0)
    two = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).reshape(1, 1, 2, 2).requires_grad_(True)
    (g,) = torch.autograd.grad(N.pool(two, "max", 2, 2).sum(), two)
    assert g.tolist() == [[[[0.0, 0.0], [1.0, 0.0]]]]
    # few distinct values: many ties in every window, on every padding path
    gen = torch.Generator().manual_seed(11)
    x = torch.randint(0, 3, (2, 2, 7, 8), generator=gen).to(torch.float64).requires_grad_(True)
    y = N.pool(x, "max", pool_size, stride, pad)
    dzdy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (got,) = torch.autograd.grad(y, x, dzdy)
    want = _column_major_first_max_gradient(x.detach(), pool_size, stride, pad, dzdy)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    with torch.no_grad():  # without autograd the untransposed path runs: same values
        assert torch.equal(N.pool(x, "max", pool_size, stride, pad), y)
