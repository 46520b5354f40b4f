"""Every conversion between MatConvNet's and PyTorch's array layouts.

MatConvNet stores tensors as H x W x C x N and filters as
H x W x Cin_per_group x Cout, both column-major. PyTorch uses NCHW and OIHW.
MATLAB drops trailing singleton dimensions when it saves (an H x W x C x 1
array is saved as H x W x C), so the readers pad them back here.
Nothing else in the project transposes between the two layouts.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def pad_trailing_dims(array: np.ndarray, ndim: int) -> np.ndarray:
    """Restore the trailing singleton dimensions MATLAB dropped (HxWxC -> HxWxCx1)."""
    array = np.asarray(array)
    if array.ndim > ndim:
        extra = array.shape[ndim:]
        if any(d != 1 for d in extra):
            raise ValueError(f"array of shape {array.shape} has more than {ndim} non-singleton dimensions")
        return array.reshape(array.shape[:ndim])
    return array.reshape(array.shape + (1,) * (ndim - array.ndim))


def _to_tensor(array: ArrayLike) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array
    return torch.from_numpy(np.ascontiguousarray(array))


def mcn_to_nchw(array: ArrayLike) -> torch.Tensor:
    """H x W x C x N (MatConvNet) -> N x C x H x W (PyTorch), contiguous."""
    if isinstance(array, np.ndarray):
        array = pad_trailing_dims(array, 4)
    elif array.dim() < 4:
        array = array.reshape(tuple(array.shape) + (1,) * (4 - array.dim()))
    return _to_tensor(array).permute(3, 2, 0, 1).contiguous()


def nchw_to_mcn(tensor: torch.Tensor) -> np.ndarray:
    """N x C x H x W (PyTorch) -> H x W x C x N numpy array (MatConvNet)."""
    return tensor.detach().cpu().permute(2, 3, 1, 0).contiguous().numpy()


def filters_to_oihw(array: ArrayLike) -> torch.Tensor:
    """H x W x Cin_per_group x Cout (MatConvNet filters) -> Cout x Cin x H x W (PyTorch)."""
    return mcn_to_nchw(array)


def oihw_to_filters(tensor: torch.Tensor) -> np.ndarray:
    """Cout x Cin x H x W (PyTorch) -> H x W x Cin x Cout (MatConvNet filters)."""
    return nchw_to_mcn(tensor)


def image_to_nchw(image: np.ndarray) -> torch.Tensor:
    """One H x W x C image (or H x W gray) -> 1 x C x H x W tensor."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    return mcn_to_nchw(image[:, :, :, None])


def bias_vector(array: ArrayLike) -> torch.Tensor:
    """A MatConvNet bias (Cout x 1, 1 x Cout or Cout) -> a 1-D tensor of length Cout."""
    return _to_tensor(array.reshape(-1))


def is_channels_last(x: torch.Tensor) -> bool:
    """True when an NCHW tensor is stored channels-last (NHWC in memory) and not plain NCHW.

    Kernels that keep their operands in one memory format avoid the slow mixed-stride passes.
    """
    return x.shape[1] > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """`torch.channels_last` for a channels-last NCHW tensor, `torch.contiguous_format` otherwise."""
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format
