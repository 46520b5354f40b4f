"""MatConvNet model files in and out.

`matfile` reads the `.mat` container (v5/v7/v7.3); `simplenn` and `dagnn`
read the two network formats into the shared `network.ImportedNetwork`
(`read.read_network` picks the format); `convert` writes and reads the
converted checkpoint (`.pt`) and builds runnable models; `export` writes a
network back to a MatConvNet `.mat` file.
"""

from matconvnet_weights.convert import (
    convert_weights,
    layer_table,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from matconvnet_weights.matfile import load_mat
from matconvnet_weights.network import ImportedNetwork
from matconvnet_weights.read import read_network

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
