"""Networks: the layer list (`layers`), its runner (`network`) and the paper's topologies (`vgg`)."""

from cqd_port.models.layers import LAYER_TYPES, LayerSpec
from cqd_port.models.network import SimpleNetwork
from cqd_port.models.vgg import check_topology, identify_topology, init_state, vgg_m_specs, vgg_vd16_specs

__all__ = [
    "LAYER_TYPES",
    "LayerSpec",
    "SimpleNetwork",
    "check_topology",
    "identify_topology",
    "init_state",
    "vgg_m_specs",
    "vgg_vd16_specs",
]
