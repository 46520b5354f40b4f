"""Every file layout, run through SimpleNetwork, reproduces MatConvNet's activations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cqd_port.layout import mcn_to_nchw
from matconvnet_weights.convert import convert_weights, load_model
from matconvnet_weights.matfile import load_mat

TOLERANCE = 1e-5  # FORMAT.md: a faithful float32 implementation is at about 1e-6


def _relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def vggm_reference(parity_dir: Path) -> dict:
    return load_mat(parity_dir / "ref_vggm_tiny_exactpow.mat")


@pytest.mark.parametrize(
    "name, via_checkpoint",
    [
        ("net_vggm_tiny.mat", False),
        ("net_vggm_tiny_oldformat.mat", False),
        ("net_vggm_tiny_dag.mat", False),
        ("net_vggm_tiny_dag.mat", True),
    ],
    ids=["simplenn", "pre-beta17", "dagnn", "dagnn-checkpoint"],
)
def test_vggm_layouts_match_reference(tmp_path: Path, parity_dir: Path, vggm_reference: dict, name: str, via_checkpoint: bool) -> None:
    ref = vggm_reference
    assert ref["provenance"]["lrn"] == "exact" and ref["provenance"]["network"] == "net_vggm_tiny.mat"
    source = parity_dir / name
    if via_checkpoint:
        source = convert_weights(source, tmp_path / "net.pt")
    model = load_model(source, lrn_mode="exact")
    with torch.no_grad():
        outputs = model(mcn_to_nchw(ref["x"][0]), return_all=True)
    assert list(outputs) == ref["names"]
    # the final output and a few intermediates: after LRN, after the padded pool2, the logits
    for index in (2, 7, 15, 19, 20):
        layer = ref["names"][index]
        got, want = outputs[layer], mcn_to_nchw(ref["x"][index + 1])
        assert got.shape == want.shape, layer
        assert _relative_error(got, want) < TOLERANCE, layer


def test_vgg_vd16_matches_reference(parity_dir: Path) -> None:
    ref = load_mat(parity_dir / "ref_vggvd16_tiny.mat")
    assert ref["provenance"]["network"] == "net_vggvd16_tiny.mat"
    model = load_model(parity_dir / "net_vggvd16_tiny.mat", lrn_mode=ref["provenance"]["lrn"])
    with torch.no_grad():
        logits = model(mcn_to_nchw(ref["x"][0]))
    assert _relative_error(logits, mcn_to_nchw(ref["x"][-1])) < TOLERANCE
