"""cqd-port: Cross Quality Distillation (Su & Maji, BMVC 2017) in PyTorch.

The numerical core reproduces MatConvNet 1.0-beta18, the framework the
original MATLAB code ran on. Data flows one way:
dataset -> degradation -> batch -> model -> loss -> trainer -> grid -> report.
"""

from cqd_port.errors import CqdError

__version__ = "0.1.0"
__all__ = ["CqdError", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import cqd_port` stays cheap (no torch import for the CLI's --help).
    if name == "imresize":
        from cqd_port.imresize import imresize

        return imresize
    raise AttributeError(name)
