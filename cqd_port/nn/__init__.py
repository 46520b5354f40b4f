"""MatConvNet's blocks in PyTorch: functions (`functional`, `lrn`, `losses`) and thin modules."""

from cqd_port.nn.functional import bnorm, conv, dropout, pool, relu, softmax
from cqd_port.nn.losses import distill_loss, softmaxlog_loss
from cqd_port.nn.lrn import LRN_MODES, lrn

__all__ = ["LRN_MODES", "bnorm", "conv", "distill_loss", "dropout", "lrn", "pool", "relu", "softmax", "softmaxlog_loss"]
