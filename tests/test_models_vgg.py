"""The paper's topologies: builders, check_topology, and the tiny reference networks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch

from cqd_port.errors import CqdError
from cqd_port.models import LayerSpec, SimpleNetwork, check_topology, identify_topology, init_state, vgg_m_specs, vgg_vd16_specs
from cqd_port.models.vgg import feature_size

_TYPES = {"normalize": "lrn", "lrn": "lrn"}


def specs_from_mat(path) -> list[LayerSpec]:
    """Just enough of a SimpleNN reader for topology checks (the project's reader is matconvnet_weights)."""
    data = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=False)
    specs = []
    for cell in data["layers"].ravel():
        layer = cell[0, 0]
        kind = str(layer.type[0])
        attrs = {}
        for field in ("size", "pad", "stride", "pool", "param", "leak"):
            if field in layer._fieldnames:
                attrs[field] = [float(v) for v in np.asarray(getattr(layer, field)).ravel()]
        if "method" in layer._fieldnames:
            attrs["method"] = str(layer.method[0])
        specs.append(LayerSpec(str(layer.name[0]), _TYPES.get(kind, kind), attrs))
    return specs


@pytest.mark.parametrize("file,topology", [("net_vggm_tiny.mat", "vgg-m"), ("net_vggvd16_tiny.mat", "vgg-vd-16")])
def test_tiny_reference_networks_pass(parity_dir, file: str, topology: str) -> None:
    specs = specs_from_mat(parity_dir / file)
    check_topology(specs, topology)
    assert identify_topology(specs) == topology
    other = "vgg-vd-16" if topology == "vgg-m" else "vgg-m"
    with pytest.raises(CqdError):
        check_topology(specs, other)


def test_builders_names_and_shapes() -> None:
    m = vgg_m_specs()
    assert [s.name for s in m] == [
        "conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2", "conv3", "relu3", "conv4", "relu4",
        "conv5", "relu5", "pool5", "fc6", "relu6", "fc7", "relu7", "fc8", "prob",
    ]
    sizes = {s.name: s.attrs["size"] for s in m if s.type == "conv"}
    assert sizes["conv1"] == [7, 7, 3, 96] and sizes["fc6"] == [6, 6, 512, 4096] and sizes["fc8"] == [1, 1, 4096, 1000]
    vd = vgg_vd16_specs(num_classes=200, width=0.5)
    assert sum(s.type == "conv" for s in vd) == 16
    vd_sizes = {s.name: s.attrs["size"] for s in vd if s.type == "conv"}
    assert vd_sizes["fc6"] == [7, 7, 256, 2048] and vd_sizes["fc8"] == [1, 1, 2048, 200]
    assert feature_size("vgg-m", 224) == 6 and feature_size("vgg-vd-16", 224) == 7 and feature_size("vgg-m", 448) == 13
    check_topology(m, "vgg-m")
    check_topology(vd, "vgg-vd-16")
    check_topology(vgg_m_specs(input_size=448), "vgg-m", input_size=448)
    check_topology(vgg_m_specs(dropout=0.5, softmax=False), "vgg-m")


def test_builder_network_output_shape() -> None:
    specs = vgg_vd16_specs(num_classes=5, width=1 / 16, input_size=64)
    net = SimpleNetwork(specs, init_state(specs, 1, "xavierimproved"))
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 5, 1, 1)


def test_init_state_is_seeded() -> None:
    specs = vgg_m_specs(num_classes=3, width=1 / 32, input_size=99)
    a, b, c = init_state(specs, 1), init_state(specs, 1), init_state(specs, 2)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["conv1.weight"], c["conv1.weight"])
    assert abs(float(a["fc6.weight"].std()) - 0.01) < 2e-3 and float(a["fc6.bias"].abs().max()) == 0


def _modified(index_name: str, **attrs) -> list[LayerSpec]:
    specs = vgg_m_specs(width=0.25)
    for s in specs:
        if s.name == index_name:
            s.attrs.update(attrs)
    return specs


@pytest.mark.parametrize(
    "specs,fragment",
    [
        (_modified("pool2", pad=[0, 0, 0, 0]), "layer 'pool2' (position 8, expected 'pool2') has pad [0, 0, 0, 0], expected [0, 1, 0, 1]"),
        (_modified("norm1", param=[5, 1, 2e-5, 0.75]), "layer 'norm1'"),
        (_modified("conv2", size=[3, 3, 24, 64]), "layer 'conv2' (position 5, expected 'conv2') has a 3x3 filter, expected 5x5"),
        (_modified("conv1", stride=[4, 4]), "has stride [4, 4], expected [2, 2]"),
        (_modified("fc6", size=[7, 7, 128, 1024]), "layer 'fc6'"),
        ([s for s in vgg_m_specs() if s.name != "norm2"], "layer 'pool2' (position 7, expected 'norm2') is of type pool, expected lrn"),
        (vgg_m_specs()[:10], "ends after 10 layers"),
        (vgg_m_specs()[:-1] + [LayerSpec("fc9", "conv", {"size": [1, 1, 10, 10]})], "unexpected layer 'fc9'"),
    ],
)
def test_check_topology_names_first_difference(specs, fragment: str) -> None:
    with pytest.raises(CqdError) as info:
        check_topology(specs, "vgg-m")
    assert fragment in str(info.value)


def test_unknown_topology() -> None:
    with pytest.raises(CqdError, match="unknown topology 'resnet'"):
        check_topology(vgg_m_specs(), "resnet")
