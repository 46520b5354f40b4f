"""cqd_port_parity.compare: the error measure and pass/fail rule of FORMAT.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cqd_port_parity.compare import TOL_DEFAULT, TOL_MOMENTUM, TOL_NETWORK_GRADIENT, ComparisonRow, compare, relative_error


def test_relative_error_is_max_abs_difference_over_max_abs_reference():
    ref = np.array([[1.0, -4.0], [2.0, 0.5]])
    got = ref.copy()
    got[0, 1] += 0.02  # the largest |ref| is 4
    got[1, 0] -= 0.01
    max_abs, rel = relative_error(got, ref)
    assert math.isclose(max_abs, 0.02, rel_tol=1e-12)
    assert math.isclose(rel, 0.02 / 4.0, rel_tol=1e-12)


def test_compare_accepts_torch_and_numpy_and_applies_tolerance():
    ref = torch.linspace(-1, 1, 11, dtype=torch.float32)
    ok = compare("c", "y", ref + 5e-6, ref.numpy(), TOL_DEFAULT, group="g")
    bad = compare("c", "y", ref + 5e-5, ref.numpy(), TOL_DEFAULT, group="g")
    assert ok.passed and not bad.passed
    assert (bad.group, bad.case, bad.quantity, bad.tol) == ("g", "c", "y", TOL_DEFAULT)


def test_zero_reference_uses_absolute_error():
    zeros = np.zeros((3, 3))
    assert compare("c", "dzdx", zeros, zeros).passed
    row = compare("c", "dzdx", zeros + 1e-3, zeros)
    assert math.isclose(row.rel, 1e-3) and not row.passed


def test_nan_and_shape_mismatch_fail():
    ref = np.ones(4)
    got = ref.copy()
    got[2] = np.nan
    nan_row = compare("c", "y", got, ref)
    assert math.isnan(nan_row.rel) and not nan_row.passed
    shape_row = compare("c", "y", np.ones(5), ref)
    assert not shape_row.passed and "shape" in shape_row.note


def test_empty_tensors_compare_equal():
    assert compare("no_bias", "dzdb", np.zeros(0), np.zeros(0)).passed


def test_passed_is_rel_within_tol():
    assert ComparisonRow("g", "c", "q", 0.0, TOL_NETWORK_GRADIENT, TOL_NETWORK_GRADIENT).passed
    assert not ComparisonRow("g", "c", "q", 0.0, 2 * TOL_MOMENTUM, TOL_MOMENTUM).passed
    assert TOL_DEFAULT < TOL_MOMENTUM and TOL_DEFAULT < TOL_NETWORK_GRADIENT


def test_update_comparison_discounts_float32_storage_rounding_only():
    from cqd_port_parity.compare import compare_update

    before = np.float32([0.2, -0.3, 0.1])
    update = np.float64([1e-6, -2e-6, 5e-7])
    after = (before.astype(np.float64) + update).astype(np.float32)  # stored: rounded to float32
    # the reference's own float32 rounding of the same update passes, though it is ~1% of the update
    same = compare_update("s", "update", before, after, before, after, 1e-4)
    assert same.passed and same.rel == 0
    one_ulp = np.nextafter(after, np.float32(1))
    assert compare_update("s", "update", before, one_ulp, before, after, 1e-4).passed
    # an update that was not applied is all error; so is one 10% too large
    assert compare_update("s", "update", before, before, before, after, 1e-4).rel > 0.5
    too_big = (before.astype(np.float64) + 1.1 * update).astype(np.float32)
    assert not compare_update("s", "update", before, too_big, before, after, 1e-4).passed


def test_near_zero_reference_is_measured_against_a_floor_of_its_context():
    from cqd_port_parity.compare import NEAR_ZERO_FRACTION

    denormals = np.full(4, 1e-44)  # a batch-norm backward whose terms cancelled: noise and denormals
    got = np.full(4, 1e-12)
    assert relative_error(got, denormals)[1] > 1e30  # against its own maximum: meaningless
    max_abs, rel = relative_error(got, denormals, context=1.0)
    assert max_abs == pytest.approx(1e-12) and rel == pytest.approx(1e-12 / NEAR_ZERO_FRACTION)
    row = compare("bnorm", "dzdx", got, denormals, 1e-5, context=1.0)
    assert row.passed and "near-zero" in row.note
    assert not compare("bnorm", "dzdx", np.full(4, 1e-3), denormals, 1e-5, context=1.0).passed
    # a reference above the floor stays fully relative
    assert relative_error(np.float64([1.1e-3]), np.float64([1e-3]), context=1.0)[1] == pytest.approx(0.1)
