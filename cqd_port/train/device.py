"""Where training runs, and the numerical settings that keep it MatConvNet-like.

MatConvNet computes in strict float32 (cuBLAS SGEMM, cuDNN without TF32,
which did not exist then). PyTorch on Ampere and newer GPUs may use TF32
(10-bit mantissa) for convolutions by default, so `configure_determinism`
turns it off unless asked, and picks deterministic kernels so that a resumed
run replays the interrupted epoch bit for bit.
"""

from __future__ import annotations

import os

import torch

from cqd_port.errors import CqdError


def select_device(name: str = "auto") -> torch.device:
    """`auto` (first CUDA device if there is one, else CPU), `cpu`, `cuda` or `cuda:N`."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise CqdError(f"device '{name}' requested but no CUDA GPU is available; use cpu or auto (train.device in a train config, --device for the other commands)")
        index = 0
        if ":" in name:
            suffix = name.split(":", 1)[1]
            if not suffix.isdigit():
                raise CqdError(f"device '{name}': expected cuda:N with N a GPU number")
            index = int(suffix)
        if index >= torch.cuda.device_count():
            raise CqdError(
                f"device '{name}': only {torch.cuda.device_count()} CUDA device(s) present; pick cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
        return torch.device("cuda", index)
    raise CqdError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N")


def configure_determinism(tf32: bool = False, device: torch.device | str | None = None) -> None:
    """Strict float32 unless `tf32`, no autotuning, deterministic algorithms where PyTorch has them.

    * `torch.backends.cuda.matmul.allow_tf32` and `torch.backends.cudnn.allow_tf32`
      follow `tf32` (PyTorch's own default lets cuDNN convolutions use TF32);
      `torch.set_float32_matmul_precision("highest")` unless `tf32`.
    * `torch.backends.cudnn.benchmark = False`: autotuning may pick a different
      convolution algorithm from run to run, hence different rounding.
    * `torch.backends.cudnn.deterministic = True` and
      `torch.use_deterministic_algorithms(True, warn_only=True)` (kernels with
      no deterministic version only warn) when `device` is a CUDA device or
      None; `CUBLAS_WORKSPACE_CONFIG=:4096:8` is set when absent, as cuBLAS
      requires for reproducible results. For a CPU device the global switch is
      left alone: the CPU kernels training uses are deterministic already,
      and the switch costs seconds of imports (`torch._inductor`).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    if device is None or torch.device(device).type == "cuda":
        torch.use_deterministic_algorithms(True, warn_only=True)
