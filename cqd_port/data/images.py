"""Reading image files as MATLAB's `imread` did (kept free of torch so prepare's workers start fast)."""

from __future__ import annotations

import os

import cv2
import numpy as np

from cqd_port.errors import CqdError

__all__ = ["image_size", "read_image_rgb"]


def read_image_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """MATLAB `imread` + gray-to-RGB: HxWx3 uint8, RGB order.

    cv2 decodes BGR and by default applies the EXIF orientation; MATLAB's
    `imread` ignores EXIF orientation, so we do too.
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise CqdError(f"cannot read image {path}; the file is missing or not a valid image, restore it (or re-run prepare)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) of an image file, from its header when possible (no full decode)."""
    from PIL import Image  # matplotlib's dependency; only the header is read

    try:
        with Image.open(path) as handle:
            width, height = handle.size
            return (height, width)
    except Exception:  # noqa: BLE001 - a header PIL cannot parse: decode (a clear CqdError if unreadable)
        return read_image_rgb(path).shape[:2]
