"""The 'distort' degradation against the release's own `tpswarp` (`tps_*.mat`).

`../shared/release-parity/tps_release.mat` holds cases written by the
released `save_images.m` code path under GNU Octave: the already resized
`image`, the control points `center` and the moved `target`, and what
`tpswarp` returned (`warped` = imgw, `warped_with_holes` = imgwr, `map`) plus
the `saved` uint8 image. `check_tps_reference` runs `cqd_port.data.tps` on the
stored inputs and compares every output:

| quantity | tolerance (relative to max|ref|) |
|---|---|
| `center` (our 14 x 14 grid, [row col], row fastest) | exact |
| `warped` (holes filled, double) | 1e-9 |
| `warped_with_holes`, `map`, `saved` (uint8) | exact |

`placement="center"` runs the warp with the canvas on the centre of the image
instead of its top-left corner (what cqd-port did before it followed the
release); the non-square cases then fail, which shows the reference pins the
placement down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cqd_port.data.tps import PLACEMENTS, TpsConfig, control_points, distortion_origin, tpswarp
from cqd_port.errors import CqdError
from cqd_port.imresize import matlab_uint8
from cqd_port_parity.compare import TOL_EXACT, TOL_TPS_WARPED, ComparisonRow, compare, failed_row
from cqd_port_parity.references import _struct as _case_struct  # a 1x1 struct, possibly inside a 1x1 cell
from cqd_port_parity.references import cell_list, load_mat, mat_float, mat_ints, mat_string

_FIELDS = ("image", "center", "target", "interp", "outDim", "warped", "warped_with_holes", "map", "saved")


def _check_case(struct: Any, group: str, index: int, placement: str) -> list[ComparisonRow]:
    names = getattr(struct, "_fieldnames", None) or []
    name = mat_string(struct.name) if "name" in names else f"case{index + 1}"
    missing = [f for f in _FIELDS if f not in names]
    if missing:
        return [failed_row(group, name, "warped", TOL_TPS_WARPED, f"case has no field(s) {', '.join(missing)}")]
    image = np.asarray(struct.image)
    out_w, out_h = mat_ints(struct.outDim)[:2]  # tpswarp's outDim is [W H]
    interp = _case_struct(struct.interp)
    method = mat_string(interp.method)
    if method != "nearest":
        return [failed_row(group, name, "warped", TOL_TPS_WARPED, f"interp.method '{method}': only 'nearest' (the release's) is implemented")]
    radius = int(mat_float(interp.radius))
    center = np.asarray(struct.center, dtype=np.float64)
    origin = distortion_origin(image.shape[:2], TpsConfig(out_size=out_h, placement=placement)) if out_h == out_w else (0, 0)
    result = tpswarp(image, (out_h, out_w), center, np.asarray(struct.target, dtype=np.float64), radius, origin)
    shape = (out_h, out_w) if image.ndim == 2 else (out_h, out_w, image.shape[2])
    note = "" if placement == "topleft" else f"placement={placement} (not the release)"
    rows = []
    if center.shape == (196, 2):
        rows.append(compare(name, "center", control_points(), center, TOL_EXACT, group, "the 14x14 grid, [row col]"))
    rows += [
        compare(name, "warped", result.warped, np.asarray(struct.warped).reshape(shape), TOL_TPS_WARPED, group, note),
        compare(name, "warped_with_holes", result.warped_with_holes, np.asarray(struct.warped_with_holes).reshape(shape), TOL_EXACT, group, note),
        compare(name, "map", result.mapped, np.asarray(struct.map).reshape(out_h, out_w), TOL_EXACT, group, note),
        compare(name, "saved", matlab_uint8(result.warped), np.asarray(struct.saved).reshape(shape), TOL_EXACT, group, note),
    ]
    return rows


def check_tps_reference(path: Path, placement: str = "topleft") -> list[ComparisonRow]:
    """Every case of a `tps_*.mat` file through `cqd_port.data.tps.tpswarp`: one row per compared output.

    `placement` is "topleft" (the release) or "center" (the old, wrong
    placement, for tests that show the check can fail). A case that cannot be
    checked (a missing field, an unreadable value) is a failed row; an
    unreadable file is a CqdError naming it.
    """
    if placement not in PLACEMENTS:
        raise CqdError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    path = Path(path)
    data = load_mat(path)
    if "cases" not in data:
        raise CqdError(f"reference file {path} has no variable 'cases' (not a tps_*.mat of ../shared/release-parity)")
    group = path.name
    rows: list[ComparisonRow] = []
    for index, value in enumerate(cell_list(data["cases"])):
        struct = _case_struct(value)
        try:
            rows += _check_case(struct, group, index, placement)
        except (CqdError, AttributeError, ValueError, TypeError, IndexError) as exc:
            rows.append(failed_row(group, f"case{index + 1}", "warped", TOL_TPS_WARPED, f"could not check: {exc}"))
    if not rows:
        rows.append(failed_row(group, "-", "warped", TOL_TPS_WARPED, "the file holds no cases"))
    return rows
