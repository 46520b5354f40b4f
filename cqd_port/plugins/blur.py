"""Gaussian blur: the README's example of a user's own degradation.

The plugin contract (`cqd_port.data.degrade`): a function named in the
config as `package.module:function` receives the image as an HxWx3 uint8
RGB array (already resized to the prepared size, out_size x out_size),
the per-image `seed` (derived from the dataset seed and the image's path,
so a rerun gives the same image whatever the order or worker) and the
`parameters` of the config as keyword arguments; it returns a uint8 array of
the same shape. Nothing else is assumed: no torch, no global state.

    degradation: cqd_port.plugins.blur:gaussian_blur
    degradation_parameters: {sigma: 2.0, sigma_jitter: 0.5}
"""

from __future__ import annotations

import cv2
import numpy as np


def gaussian_blur(image: np.ndarray, seed: int, sigma: float = 2.0, sigma_jitter: float = 0.0) -> np.ndarray:
    """Blur with a Gaussian of standard deviation `sigma` pixels (+- `sigma_jitter`, drawn per image from `seed`).

    The kernel spans +-3 sigma; borders are reflected (OpenCV's BORDER_REFLECT_101).
    """
    rng = np.random.default_rng(seed)
    s = float(sigma) + (float(rng.uniform(-sigma_jitter, sigma_jitter)) if sigma_jitter > 0 else 0.0)
    if s <= 0:
        return image.copy()
    radius = max(1, int(np.ceil(3 * s)))
    return cv2.GaussianBlur(image, (2 * radius + 1, 2 * radius + 1), sigmaX=s, sigmaY=s, borderType=cv2.BORDER_REFLECT_101)
