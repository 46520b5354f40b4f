"""Reading MatConvNet model files (SimpleNN, pre-beta17 SimpleNN, DagNN; MAT v5/v7/v7.3)
into the project's layer list, and the converted checkpoint format."""

from matconvnet_weights.convert import (
    convert_weights,
    layer_table,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from matconvnet_weights.matfile import load_mat
from matconvnet_weights.simplenn import ImportedNetwork, read_network

__all__ = [
    "ImportedNetwork",
    "convert_weights",
    "layer_table",
    "load_checkpoint",
    "load_mat",
    "load_model",
    "read_network",
    "save_checkpoint",
]
