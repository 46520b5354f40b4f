"""cqd_port.data.sed (edgesDetect) and parity.release_sed against the toolbox's own outputs.

The reference files are `../shared/release-parity/sed/sed_*.mat`, written by
edgesDetect under Octave with `sed_model_synth.mat` (see its README). They
must be there: missing data fails, never skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from cqd_port.data import sed
from cqd_port.errors import CqdError
from cqd_port_parity import release_sed
from cqd_port_parity.release_sed import check_sed_reference

SED_DIR = Path(os.environ.get("CQD_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "release-parity" / "sed"


@pytest.fixture(scope="module")
def sed_dir() -> Path:
    if not (SED_DIR / "sed_model_synth.mat").is_file():
        pytest.fail(f"reference data missing: {SED_DIR} (CI needs ../shared beside the checkout)", pytrace=False)
    return SED_DIR


@pytest.fixture(scope="module")
def model_path(sed_dir: Path) -> Path:
    return sed_dir / "sed_model_synth.mat"


@pytest.fixture(scope="module")
def model(model_path: Path) -> sed.SedModel:
    return sed.read_sed_model(model_path)


def reference_files() -> list[Path]:
    return sorted(p for p in SED_DIR.glob("sed_*.mat") if not p.name.startswith("sed_model_"))


SMALLEST = "sed_synth_123x157_flat.mat"


# ----------------------------------------------------------------------------- model file


def test_model_fields_are_flattened_as_edgesDetectMex_indexes_them(model: sed.SedModel):
    assert (model.n_nodes, model.n_trees, model.n_bands) == (481, 8, 3)
    k = model.n_nodes * model.n_trees
    assert model.thrs.shape == model.left.shape == model.n_segs.shape == (k,)
    assert model.segs.shape == (k, 16 * 16) and model.e_bnds.size == k * 3 + 1
    roots = np.arange(model.n_trees) * model.n_nodes
    assert not model.is_leaf[roots].any()
    # the children of every split node sit in the same tree
    split = np.flatnonzero(~model.is_leaf)
    assert np.array_equal(model.left[split] // model.n_nodes, split // model.n_nodes)
    assert np.array_equal((model.left[split] + 1) // model.n_nodes, split // model.n_nodes)
    # a leaf's segment labels are 0..nSegs-1
    leaves = np.flatnonzero(model.is_leaf & (model.n_segs > 0))
    assert np.array_equal(model.segs[leaves].max(axis=1) + 1, model.n_segs[leaves])


def test_missing_and_corrupt_model_files_are_one_line_errors(tmp_path: Path):
    with pytest.raises(CqdError, match="not found.*--sed-model"):
        sed.read_sed_model(tmp_path / "modelBsds.mat")
    with pytest.raises(CqdError, match="needs the Structured Edge Detection model"):
        sed.read_sed_model(None)
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"MATLAB 5.0 MAT-file" + b"\x00" * 40 + b"\xff" * 300)
    with pytest.raises(CqdError) as info:
        sed.read_sed_model(garbage)
    assert "\n" not in str(info.value) and "garbage.mat" in str(info.value)
    no_model = tmp_path / "no_model.mat"
    scipy.io.savemat(no_model, {"forest": np.zeros((2, 2))})
    with pytest.raises(CqdError, match="no struct variable 'model'"):
        sed.read_sed_model(no_model)


def test_a_model_missing_a_field_names_it(tmp_path: Path, model_path: Path):
    data = scipy.io.loadmat(model_path, squeeze_me=False, struct_as_record=False)
    src = data["model"][0, 0]
    fields = {f: getattr(src, f) for f in src._fieldnames if f != "eBnds"}
    broken = tmp_path / "broken.mat"
    scipy.io.savemat(broken, {"model": fields})
    with pytest.raises(CqdError, match="lacks eBnds"):
        sed.read_sed_model(broken)


# ----------------------------------------------------------------------------- building blocks


def _direct_tri(x: np.ndarray, r: int) -> np.ndarray:
    f = np.concatenate([np.arange(1, r + 1), [r + 1], np.arange(r, 0, -1)]) / (r + 1) ** 2
    xp = np.pad(x.astype(np.float64), ((r, r), (r, r)), mode="symmetric")
    h, w = x.shape
    rows = sum(f[i] * xp[i : i + h] for i in range(f.size))
    return sum(f[i] * rows[:, i : i + w] for i in range(f.size))


@pytest.mark.parametrize("r", [1, 2, 4])
def test_conv_tri_is_the_triangle_filter_with_symmetric_borders(r: int):
    x = np.random.default_rng(r).random((23, 31)).astype(np.float32)
    got = sed.conv_tri(x, r)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _direct_tri(x, r), rtol=0, atol=2e-6)


def test_pad_is_symmetric_and_rounds_up_to_multiples_of_four():
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    padded = sed.edges_pad(img, 32)
    assert padded.shape == (5 + 32 + 3, 7 + 32 + 1, 3)
    assert np.array_equal(padded[16:21, 16:23], img)
    assert np.array_equal(padded[15, 16:23], img[0]) and np.array_equal(padded[16:21, 15], img[:, 0])


# ----------------------------------------------------------------------------- parity


def test_reference_files_are_there(sed_dir: Path):
    assert len(reference_files()) >= 3


@pytest.mark.parametrize("name", [p.name for p in reference_files()] or ["(none found)"])
def test_every_sed_reference_passes(name: str, sed_dir: Path, model_path: Path):
    rows = check_sed_reference(sed_dir / name, model_path)
    quantities = {(r.case, r.quantity) for r in rows}
    for s in (0, 1, 2):
        assert {(f"E sharpen {s}", q) for q in ("max|dE|", "mean|dE|", "frac |dE|>0.01")} <= quantities
    assert ("inds", "frac inds differ") in quantities
    if "Ipad" in {var for var, _, _ in scipy.io.whosmat(sed_dir / name)}:
        assert ("Ipad", "Ipad") in quantities and ("Isharp", "Isharp") in quantities
    failures = [r for r in rows if not r.passed]
    assert not failures, failures


def _forcing_sharpen(monkeypatch: pytest.MonkeyPatch, wrong: int) -> None:
    real = sed.edges_detect

    def detect(image, model, sharpen=None, **kw):
        return real(image, model, sharpen=wrong if sharpen == 2 else sharpen, **kw)

    monkeypatch.setattr(sed, "edges_detect", detect)


@pytest.mark.parametrize("wrong", [0, 1], ids=["no sharpening", "sharpen 1"])
def test_the_wrong_sharpening_fails(monkeypatch: pytest.MonkeyPatch, wrong: int, sed_dir: Path, model_path: Path):
    _forcing_sharpen(monkeypatch, wrong)
    rows = check_sed_reference(sed_dir / SMALLEST, model_path)
    sharpen2 = {r.quantity: r for r in rows if r.case == "E sharpen 2"}
    assert not sharpen2["max|dE|"].passed and sharpen2["max|dE|"].rel >= 0.15
    assert all(r.passed for r in rows if r.case != "E sharpen 2")


def test_wrongly_ordered_orientation_channels_fail(monkeypatch: pytest.MonkeyPatch, sed_dir: Path, model_path: Path):
    real = sed.gradient_hist
    monkeypatch.setattr(sed, "gradient_hist", lambda *a: real(*a)[..., ::-1])
    rows = check_sed_reference(sed_dir / SMALLEST, model_path)
    by_key = {(r.case, r.quantity): r for r in rows}
    for s in (0, 1, 2):
        assert not by_key[(f"E sharpen {s}", "max|dE|")].passed
    assert not by_key[("inds", "frac inds differ")].passed


def test_the_criteria_are_rel_below_tol():
    ref = np.zeros((10, 10), dtype=np.float32)
    got = ref.copy()
    got[0, :3] = 0.02  # 3% of pixels off by 0.02: max and mean fine, fraction fine
    rows = release_sed.edge_map_rows("g", "E", got, ref)
    assert [r.passed for r in rows] == [True, True, True]
    got[0, :6] = 0.02  # 6% off
    assert [r.passed for r in release_sed.edge_map_rows("g", "E", got, ref)] == [True, True, False]
    got[5, 5] = 0.06
    assert not release_sed.edge_map_rows("g", "E", got, ref)[0].passed
    assert not release_sed.edge_map_rows("g", "E", got[:5], ref)[0].passed  # a shape mismatch fails


# ----------------------------------------------------------------------------- detection


def test_edges_detect_finds_a_step_edge(model: sed.SedModel):
    img = np.zeros((40, 48, 3), dtype=np.uint8)
    img[:, 24:] = 200
    edges = sed.edges_detect(img, model)
    assert edges.shape == (40, 48) and edges.dtype == np.float32
    column_strength = edges[8:32].mean(axis=0)
    assert 22 <= int(column_strength.argmax()) <= 25
    assert column_strength[23] > 4 * column_strength[5]


def test_edges_detect_rejects_non_rgb_input(model: sed.SedModel):
    with pytest.raises(CqdError, match="uint8 HxWx3"):
        sed.edges_detect(np.zeros((20, 20), dtype=np.uint8), model)
