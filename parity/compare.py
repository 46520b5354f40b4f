"""One comparison between a value the port computed and MatConvNet's reference.

The error measure and the tolerances are the ones `../shared/parity/FORMAT.md`
sets: relative error = max|got - ref| / max|ref| over the whole tensor, and
a comparison passes at 1e-5 (1e-4 for momentum buffers and for gradients
that travelled back through a whole network, where float32 rounding of many
layers adds up). All tolerances live here, nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# Tolerances on the relative error (FORMAT.md, "Tolerances the project must meet").
TOL_DEFAULT = 1e-5
"""Single operators (forward and backward), network activations, losses."""
TOL_MOMENTUM = 1e-4
"""SGD momentum buffers of the training replay."""
TOL_NETWORK_GRADIENT = 1e-4
"""Input and parameter derivatives back-propagated through a whole network."""
TOL_TPS_WARPED = 1e-9
"""The release's thin-plate-spline warp in double precision (`tps_*.mat`, release-parity README)."""
TOL_EXACT = 0.0
"""Integer results that must match exactly: saved uint8 images, landing maps, control points."""
TOL_UPDATE = 1e-4
"""A training step's parameter update (after minus before): it is `lr * lrMult * momentum`, so the
momentum buffers' tolerance; float32 storage rounding is discounted (see `compare_update`)."""

FLOAT_NOISE_EPS = 8
"""A ReLU input within `FLOAT_NOISE_EPS` float32 machine epsilons (8 x 1.19e-7 = 9.5e-7, the
exporter's 1e-6) of zero, relative to the largest input of its layer, is float noise: another
summation order may give it the other sign, hence the other gradient. The local backward rows
leave such positions out (`cqd_port_parity.runner.compare_layers_locally`)."""


FLOAT32_EPS = float(np.finfo(np.float32).eps)

TOL_FORWARD_CAP = 1e-3
"""The largest forward tolerance `forward_tolerance` gives, however deep or small the layer."""


def float_noise_threshold(scale: float) -> float:
    """|x| at or below this is float noise of zero for a tensor whose largest magnitude is `scale`."""
    return FLOAT_NOISE_EPS * FLOAT32_EPS * float(scale)


FORWARD_NOISE_EPS = 2
"""The float32 epsilons per unit of `sqrt(depth) x accumulated` a forward activation may be off
(`forward_tolerance`). Measured, port in float32 against float64, on the real model files
(docs/parity.md): at most 1.3 eps32 x sqrt(depth) x accumulated on any layer (a first layer), 0.04
on DnCNN's last layer (depth 17, accumulated 143: 2.9e-6); MatConvNet's own float32 error there,
2.6e-5 (issue 18), is about 0.4 of it."""


def forward_tolerance(depth: int, accumulated: float) -> float:
    """The tolerance of a network activation: `TOL_DEFAULT`, or more where float32 cannot do better.

    A float32 forward pass makes an absolute error of a few machine epsilons of
    the largest magnitude it has carried so far, per summing layer, adding up
    like a random walk over the `depth` convolutions so far. Relative to the
    layer's own largest output that is about `eps32 x sqrt(depth) x
    accumulated`, `accumulated` = that magnitude / this layer's largest output
    (`cqd_port_parity.runner` tracks it through the layers). The tolerance is
    `max(TOL_DEFAULT, FORWARD_NOISE_EPS x eps32 x sqrt(depth) x accumulated)`,
    capped at `TOL_FORWARD_CAP`: 1e-5 (unchanged) wherever `sqrt(depth) x
    accumulated` < 42; DnCNN's last layer (17, 143) gets 1.4e-4.
    """
    if not math.isfinite(accumulated):
        return TOL_FORWARD_CAP
    grown = FORWARD_NOISE_EPS * FLOAT32_EPS * math.sqrt(max(depth, 1)) * max(accumulated, 1.0)
    return min(TOL_FORWARD_CAP, max(TOL_DEFAULT, grown))


CARRIED_NOISE_EPS = 1
"""How many float32 epsilons of what a layer summed an error may be and still read as `tol` (see
`carried_floor`). Measured on the shipped references: the bias derivatives whose sums cancel most
(reference 1.2e-3..8e-3 of the magnitude summed, VGG-VD-16's conv1_1, conv1_2, conv2_1) are off by
0.02..0.26 eps32 x that magnitude (0.02..0.1 in the local rows, which are MatConvNet's own rounding)."""


def carried_floor(carried: float, tol: float) -> float:
    """The smallest scale for a reference computed as a sum whose terms' magnitudes add up to `carried`.

    Summing terms of total magnitude `carried` in float32 leaves an error of up
    to about eps32 x `carried` whatever the sum itself is (a bias derivative
    that cancels to zero holds float32 noise; a bnorm backward may end in
    denormals). The floor `CARRIED_NOISE_EPS x eps32 x carried / tol` makes an
    error of that size read exactly `tol`; a reference larger than the floor is
    compared relative to itself, as before.
    """
    return CARRIED_NOISE_EPS * FLOAT32_EPS * float(carried) / tol if tol > 0 else 0.0


@dataclass
class ComparisonRow:
    """One line of the parity table.

    `group` is the reference file (or family) the case came from, `case` the
    operator case or network layer, `quantity` what was compared (`y`,
    `dzdx`, `dzdw`...). `rel` is the relative error, `max_abs` the largest
    absolute difference, `tol` the tolerance on `rel`.
    """

    group: str
    case: str
    quantity: str
    max_abs: float
    rel: float
    tol: float
    note: str = ""

    @property
    def passed(self) -> bool:
        # NaN compares False, so a NaN error (or a shape mismatch) fails.
        return bool(self.rel <= self.tol)


def _as_float64(value: np.ndarray | torch.Tensor | float) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)


NEAR_ZERO_FRACTION = 1e-6
"""A reference whose largest magnitude is below this fraction of its *context* (the largest
reference of the same kind in the same check: every gradient of a network, every tensor of an
operator case) is near zero, e.g. a batch-norm backward whose terms cancel to float32 noise or to
denormals. Its error is then taken relative to `NEAR_ZERO_FRACTION * context` instead of its own
tiny maximum, which would print 1e+42 for a reference of denormals. Legitimately small tensors stay
fully relative: in the shipped references the smallest network gradient is 8e-6 of the largest,
the smallest operator gradient 1e-2 of its case."""


def scale_floor(context: float) -> float:
    """The smallest scale a relative error is divided by, for a reference with this context."""
    return NEAR_ZERO_FRACTION * float(context)


def largest_magnitude(*values: np.ndarray | torch.Tensor | float) -> float:
    """max |v| over all the given tensors (0 for none or only empty ones): a comparison's context."""
    largest = 0.0
    for value in values:
        array = _as_float64(value)
        if array.size:
            largest = max(largest, float(np.nanmax(np.abs(array))))
    return largest


def relative_error(
    got: np.ndarray | torch.Tensor | float, ref: np.ndarray | torch.Tensor | float, context: float = 0.0, floor: float = 0.0
) -> tuple[float, float]:
    """(max|got - ref|, max|got - ref| / scale), computed in float64.

    scale = max(max|ref|, `scale_floor(context)`, `floor`) (see `NEAR_ZERO_FRACTION`, `carried_floor`).
    A reference that is all zeros with no context has no scale: the relative
    error is then the absolute error (zero when `got` is zero too), so an
    exactly-zero gradient that the port reproduces passes and a non-zero one
    is measured absolutely. Empty tensors compare equal. NaN anywhere gives NaN.
    """
    got64, ref64 = _as_float64(got), _as_float64(ref)
    if got64.shape != ref64.shape:
        raise ValueError(f"shape {tuple(got64.shape)} != reference shape {tuple(ref64.shape)}")
    if ref64.size == 0:
        return 0.0, 0.0
    diff = np.abs(got64 - ref64)
    if np.isnan(diff).any():
        return math.nan, math.nan
    max_abs = float(diff.max())
    scale = max(float(np.abs(ref64).max()), scale_floor(context), floor)
    rel = max_abs / scale if scale > 0 else max_abs
    return max_abs, rel


def compare(
    case: str,
    quantity: str,
    got: np.ndarray | torch.Tensor | float,
    ref: np.ndarray | torch.Tensor | float,
    tol: float = TOL_DEFAULT,
    group: str = "",
    note: str = "",
    context: float = 0.0,
    carried: float = 0.0,
) -> ComparisonRow:
    """Compare `got` with `ref` (same shape and layout) and return the table row.

    Both are converted to float64 before subtracting, so the measure itself
    adds no rounding. A shape mismatch is a failed row (NaN errors, the two
    shapes in the note), not an exception: the suite reports it next to the
    other rows. `context` (see `NEAR_ZERO_FRACTION`) and `carried` (the
    magnitude the layer summed, see `carried_floor`) floor the scale of a
    near-zero reference; the note says when they did.
    """
    floor = carried_floor(carried, tol)
    try:
        max_abs, rel = relative_error(got, ref, context, floor)
    except ValueError as exc:
        return ComparisonRow(group, case, quantity, math.nan, math.nan, tol, join_notes(note, str(exc)))
    if math.isnan(rel):
        note = join_notes(note, "NaN in the result")
    elif largest_magnitude(ref) < floor and floor >= scale_floor(context):
        note = join_notes(note, f"near-zero reference: error relative to {floor:.2g} (eps32 x what the layer summed / tol)")
    elif 0 < largest_magnitude(ref) < scale_floor(context):
        note = join_notes(note, f"near-zero reference: error relative to {NEAR_ZERO_FRACTION:.0e} x its context")
    return ComparisonRow(group, case, quantity, max_abs, rel, tol, note)


def failed_row(group: str, case: str, quantity: str, tol: float, note: str) -> ComparisonRow:
    """A row for a comparison that could not be made (missing layer, missing gradient...)."""
    return ComparisonRow(group, case, quantity, math.nan, math.nan, tol, note)


def join_notes(a: str, b: str) -> str:
    """Two notes of a row, `a; b` (just `b` when `a` is empty)."""
    return f"{a}; {b}" if a else b


def compare_update(
    case: str,
    quantity: str,
    before: np.ndarray | torch.Tensor,
    after: np.ndarray | torch.Tensor,
    ref_before: np.ndarray | torch.Tensor,
    ref_after: np.ndarray | torch.Tensor,
    tol: float = TOL_UPDATE,
    group: str = "",
    note: str = "",
) -> ComparisonRow:
    """Compare one step's parameter update (`after - before`) with the reference's update.

    Comparing parameters cannot see a step that moves a parameter by less
    than the tolerance times its magnitude (a bias moved by 1e-6 next to
    values of 0.2 passes at 1e-5 even if it was not updated at all); the
    update itself can. Both updates are differences of float32 parameters,
    so each carries the rounding of its stored result, at most half a unit
    in the last place (ulp) of the parameter: the part of `|got - ref|`
    within one float32 ulp of the parameter is discounted element by element,
    and the rest is taken relative to `max|ref update|`. `max_abs` reports the
    raw difference. A reference update of zero everywhere falls back to the
    absolute error, as `relative_error`.
    """
    arrays = [_as_float64(v) for v in (before, after, ref_before, ref_after)]
    if len({a.shape for a in arrays}) != 1:
        shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
        return ComparisonRow(group, case, quantity, math.nan, math.nan, tol, join_notes(note, f"shapes differ: {shapes}"))
    got, ref = arrays[1] - arrays[0], arrays[3] - arrays[2]
    if ref.size == 0:
        return ComparisonRow(group, case, quantity, 0.0, 0.0, tol, note)
    diff = np.abs(got - ref)
    if np.isnan(diff).any():
        return ComparisonRow(group, case, quantity, math.nan, math.nan, tol, join_notes(note, "NaN in the result"))
    storage = np.maximum(np.spacing(np.abs(arrays[3]).astype(np.float32)), np.spacing(np.abs(arrays[1]).astype(np.float32)))
    excess = float(np.maximum(diff - storage.astype(np.float64), 0.0).max())
    scale = float(np.abs(ref).max())
    rel = excess / scale if scale > 0 else excess
    return ComparisonRow(group, case, quantity, float(diff.max()), rel, tol, note)
