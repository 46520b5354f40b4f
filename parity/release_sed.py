"""The release's 'edges' degradation against `edgesDetect` itself (`../shared/release-parity/sed/`).

Each `sed_<name>.mat` holds an image `I`, the options the toolbox ran with
(`opts`), its edge maps `E_sharpen0/1/2`, its leaf indices `inds` and, in
the visible files, the padded image `Ipad`, the channels `chnsReg`/`chnsSim`
and the sharpening image `Isharp` (`sed/README.md`). `check_sed_reference`
runs `cqd_port.data.sed.edges_detect` with the model file beside them
(`sed_model_*.mat`) and returns one parity row per criterion.

The toolbox computes 1/x and 1/sqrt(x) with approximate SSE instructions
(`rcpps`, `rsqrtps`, different between processor makers), so the gradient
channels differ at float level and the comparison of E is statistical (the
tolerances of `sed/README.md`). Each criterion is a row whose `rel` is the
measured statistic and `tol` its bound, so `rel <= tol` is a pass:

- `max|dE|` <= 0.05, `mean|dE|` <= 5e-3, `frac |dE|>1e-2` (the fraction of
  pixels off by more than 1e-2) <= 0.05, for sharpen 2 (the release's
  setting), 0 and 1, each against the reference of the same sharpen;
- `frac inds differ` (tree lookups ending in another leaf) <= 0.03;
- exact (`tol` 0): `Ipad`, the L channel of `chnsReg`/`chnsSim` and
  `Isharp` (no approximate instruction touches them);
- `mean|dchns|` <= 3e-3 for all 13 channels of `chnsReg`/`chnsSim` (a
  portable implementation measures about 1e-3; wrongly ordered orientation
  channels or a wrong smoothing radius are far above).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cqd_port.data import sed
from cqd_port.errors import CqdError
from cqd_port_parity.compare import ComparisonRow, compare, failed_row
from cqd_port_parity.references import load_mat, mat_float

TOL_MAX_ABS_E = 0.05
TOL_MEAN_ABS_E = 5e-3
PIXEL_OFF = 1e-2
TOL_FRAC_PIXELS_OFF = 0.05
TOL_FRAC_INDS_DIFFER = 0.03
TOL_MEAN_ABS_CHANNELS = 3e-3
SHARPEN_ORDER = (2, 0, 1)  # the release's setting first


def edge_map_rows(group: str, case: str, got: np.ndarray, ref: np.ndarray) -> list[ComparisonRow]:
    """The three statistical rows for one edge map (max, mean, fraction of pixels off by more than 1e-2)."""
    got64 = np.asarray(got, dtype=np.float64)
    ref64 = np.asarray(ref, dtype=np.float64)
    if got64.shape != ref64.shape:
        note = f"shape {got64.shape} != reference shape {ref64.shape}"
        return [failed_row(group, case, q, tol, note) for q, tol in _E_CRITERIA]
    diff = np.abs(got64 - ref64)
    if np.isnan(diff).any():
        return [failed_row(group, case, q, tol, "NaN in the result") for q, tol in _E_CRITERIA]
    values = (float(diff.max()), float(diff.mean()), float(np.mean(diff > PIXEL_OFF)))
    return [ComparisonRow(group, case, q, v, v, tol) for (q, tol), v in zip(_E_CRITERIA, values)]


_E_CRITERIA = (
    ("max|dE|", TOL_MAX_ABS_E),
    ("mean|dE|", TOL_MEAN_ABS_E),
    (f"frac |dE|>{PIXEL_OFF:g}", TOL_FRAC_PIXELS_OFF),
)


def inds_row(group: str, case: str, got: np.ndarray, ref: np.ndarray) -> ComparisonRow:
    """The fraction of tree lookups whose leaf differs from the toolbox's (`inds`, 0-based global node ids)."""
    if got.shape != ref.shape:
        return failed_row(group, case, "frac inds differ", TOL_FRAC_INDS_DIFFER, f"shape {got.shape} != reference shape {ref.shape}")
    frac = float(np.mean(got.astype(np.int64) != ref.astype(np.int64)))
    return ComparisonRow(group, case, "frac inds differ", frac, frac, TOL_FRAC_INDS_DIFFER)


def _option(opts: object, name: str, default: float) -> float:
    value = getattr(opts, name, None)
    return default if value is None else mat_float(value)


def _stage_rows(group: str, data: dict, model: sed.SedModel, image: np.ndarray) -> list[ComparisonRow]:
    # The intermediate images of the visible files: each stage checked on its own.
    rows = []
    padded = sed.edges_pad(image, int(model.opts["imWidth"]))
    rows.append(compare("Ipad", "Ipad", padded, data["Ipad"], tol=0.0, group=group, note="exact"))
    if padded.shape != data["Ipad"].shape:
        return rows
    reference_pad = data["Ipad"]
    chns_reg, chns_sim = sed.edges_channels(reference_pad, model.opts)
    for name, got in (("chnsReg", chns_reg), ("chnsSim", chns_sim)):
        ref = data.get(name)
        if ref is None:
            continue
        rows.append(compare(name, "L channel", got[..., 0], ref[..., 0], tol=0.0, group=group, note="exact"))
        if got.shape == ref.shape:
            mean_abs = float(np.mean(np.abs(got.astype(np.float64) - ref)))
            rows.append(ComparisonRow(group, name, "mean|dchns|", mean_abs, mean_abs, TOL_MEAN_ABS_CHANNELS, "all channels"))
    if "Isharp" in data:
        rows.append(compare("Isharp", "Isharp", sed.sharpen_image(reference_pad), data["Isharp"], tol=0.0, group=group, note="exact"))
    return rows


def check_sed_reference(path: Path, model_path: Path) -> list[ComparisonRow]:
    """Every parity row of one `sed_<name>.mat` reference, run with the model `model_path` (`sed_model_*.mat`)."""
    path, model_path = Path(path), Path(model_path)
    group = path.name
    data = load_mat(path)
    for key in ("I", "opts", "inds", *(f"E_sharpen{s}" for s in SHARPEN_ORDER)):
        if key not in data:
            raise CqdError(f"SED reference {path} has no variable '{key}' (not a file in the sed/README.md layout)")
    model = sed.read_sed_model(model_path)
    opts = data["opts"].flat[0] if isinstance(data["opts"], np.ndarray) else data["opts"]
    n_trees_eval = int(_option(opts, "nTreesEval", model.opts["nTreesEval"]))
    unsupported = [name for name in ("multiscale", "nms") if _option(opts, name, 0.0)]
    if unsupported:
        return [failed_row(group, "E", "max|dE|", TOL_MAX_ABS_E, f"reference ran with {', '.join(unsupported)} (not implemented)")]
    image = data["I"]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    rows = _stage_rows(group, data, model, image) if "Ipad" in data else []
    for sharpen in SHARPEN_ORDER:
        case = f"E sharpen {sharpen}"
        edges, inds = sed.edges_detect(image, model, sharpen=sharpen, n_trees_eval=n_trees_eval, return_inds=True)
        rows.extend(edge_map_rows(group, case, edges, data[f"E_sharpen{sharpen}"]))
        if sharpen == SHARPEN_ORDER[0]:  # the leaves do not depend on sharpening
            rows.append(inds_row(group, "inds", inds, data["inds"]))
    return rows
