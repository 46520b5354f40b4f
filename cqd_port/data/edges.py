"""Edge images: OpenCV's Structured Edge Detector, and a model-free Sobel map.

The paper (Section 4.1.3) makes its line drawings with the Structured Edge
Detector of Dollar & Zitnick (ICCV 2013); the toolbox's own `edgesDetect`,
which the released code ran, is `cqd_port.data.sed` (the `edges`
degradation). This module is OpenCV's port (the `edges_opencv`
degradation, NOT the paper's maps: no sharpen step, other channels),
`cv2.ximgproc.createStructuredEdgeDetection(model).detectEdges(rgb01)`,
which needs the trained forest `model.yml.gz` (OpenCV's extra data,
`opencv_extra/testdata/cv/ximgproc/model.yml.gz`, converted from the
toolbox's BSDS model). Without it there is no SED: the caller gets a
`CqdError` naming the file, never a silent substitute. `sobel_edges` is a
different, model-free edge map, offered under its own name (`edges_sobel`).

Both return the edge strength x 255 as uint8, replicated to three channels
so the networks' RGB input layer takes it unchanged.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from cqd_port.errors import CqdError
from cqd_port.matlab import matlab_uint8

__all__ = [
    "RGB2GRAY_WEIGHTS", "SED_MODEL_HELP", "load_sed_model", "luminance", "sed_edge_strength", "sed_edges", "sobel_edges",
    "to_rgb_uint8",
]  # fmt: skip

SED_MODEL_HELP = (
    "pass --sed-model model.yml.gz (the Structured Edge Detection forest from OpenCV's extra data, "
    "opencv_extra/testdata/cv/ximgproc/model.yml.gz, trained with Dollar & Zitnick's toolbox), "
    "or use the model-free 'edges_sobel' instead"
)

# The options createStructuredEdgeDetection reads; a missing or zero one makes
# OpenCV divide by zero or index out of bounds instead of raising, so check first.
_POSITIVE_OPTIONS = (
    "numberOfTrees", "numberOfTreesToEvaluate", "selfsimilarityGridSize", "stride", "shrinkNumber",
    "patchSize", "patchInnerSize", "numberOfGradientOrientations",
)  # fmt: skip
_OPTIONS = _POSITIVE_OPTIONS + (
    "gradientSmoothingRadius", "regFeatureSmoothingRadius", "ssFeatureSmoothingRadius", "gradientNormalizationRadius",
)  # fmt: skip
_TREE_FIELDS = ("childs", "featureIds", "thresholds", "edgeBoundaries", "edgeBins")


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 HxW, HxWx1, HxWx3 or HxWx4 (alpha dropped) -> HxWx3 uint8; anything else is a CqdError."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise CqdError(f"expected a uint8 image, got dtype {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4) or img.shape[0] < 1 or img.shape[1] < 1:
        raise CqdError(f"expected an HxW or HxWx{{1,3,4}} image, got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def _check_model_file(path: Path) -> None:
    import cv2

    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except (cv2.error, SystemError):  # the bindings raise SystemError on a parse failure
        raise CqdError(f"cannot read SED model {path} (not a valid OpenCV FileStorage YAML/XML file); {SED_MODEL_HELP}") from None
    try:
        if not fs.isOpened():
            raise CqdError(f"cannot read SED model {path} (not an OpenCV FileStorage file); {SED_MODEL_HELP}")
        options = fs.getNode("options")
        if options.empty() or not options.isMap():
            raise CqdError(f"SED model {path} has no 'options' map; {SED_MODEL_HELP}")
        for name in _OPTIONS:
            node = options.getNode(name)
            if node.empty() or not node.isInt():
                raise CqdError(f"SED model {path}: option '{name}' missing or not an integer; {SED_MODEL_HELP}")
            if name in _POSITIVE_OPTIONS and node.real() <= 0:
                raise CqdError(f"SED model {path}: option '{name}' must be positive; {SED_MODEL_HELP}")
        for name in _TREE_FIELDS:
            node = fs.getNode(name)
            if node.empty() or not node.isSeq() or node.size() == 0:
                raise CqdError(f"SED model {path}: '{name}' missing or empty; {SED_MODEL_HELP}")
    finally:
        fs.release()


@lru_cache(maxsize=4)
def _load(path: str, _mtime_ns: int, _size: int):
    import cv2

    _check_model_file(Path(path))
    try:
        return cv2.ximgproc.createStructuredEdgeDetection(path)
    except (cv2.error, SystemError) as exc:
        raise CqdError(f"cannot load SED model {path} ({str(exc).strip().splitlines()[-1]}); {SED_MODEL_HELP}") from None


def load_sed_model(model_path: str | os.PathLike[str] | None):
    """OpenCV's StructuredEdgeDetection for `model_path` (validated, cached per file version)."""
    if model_path is None:
        raise CqdError(f"the 'edges_opencv' degradation needs OpenCV's Structured Edge Detection model: {SED_MODEL_HELP}")
    path = Path(model_path).expanduser().resolve()
    if not path.is_file():
        raise CqdError(f"SED model file not found: {path}; {SED_MODEL_HELP}")
    st = path.stat()
    return _load(str(path), st.st_mtime_ns, st.st_size)


def sed_edge_strength(image: np.ndarray, model_path: str | os.PathLike[str] | None) -> np.ndarray:
    """SED edge probability, HxW float32 in [0, 1], of an RGB uint8 image (gray is made RGB first)."""
    detector = load_sed_model(model_path)
    rgb01 = to_rgb_uint8(image).astype(np.float32) / np.float32(255.0)
    return np.asarray(detector.detectEdges(rgb01), dtype=np.float32)


def sed_edges(image: np.ndarray, model_path: str | os.PathLike[str] | None) -> np.ndarray:
    """The paper's edge image: SED strength x 255, rounded, as HxWx3 uint8."""
    strength = sed_edge_strength(image, model_path).astype(np.float64)
    return to_rgb_uint8(matlab_uint8(strength * 255.0))


# MATLAB rgb2gray's luminance weights (the first row of the inverse of the NTSC YIQ matrix).
RGB2GRAY_WEIGHTS = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


def luminance(image: np.ndarray) -> np.ndarray:
    """MATLAB `rgb2gray`'s weighted sum in double, before its rounding: HxW float64 (gray is made RGB first).

    OpenCV's `COLOR_RGB2GRAY` uses the rounded weights 0.299/0.587/0.114 and rounds to uint8.
    """
    return to_rgb_uint8(image).astype(np.float64) @ RGB2GRAY_WEIGHTS


def sobel_edges(image: np.ndarray) -> np.ndarray:
    """Model-free edges (`edges_sobel`): 3x3 Sobel gradient magnitude of the luminance, / its max, x 255, HxWx3 uint8.

    Not the paper's detector: no learned structure, thicker and noisier
    lines. A constant image gives all zeros.
    """
    import cv2

    gray = luminance(image)
    gx = cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    mag = np.hypot(gx, gy)
    peak = mag.max()
    scaled = mag / peak * 255.0 if peak > 0 else mag
    return to_rgb_uint8(matlab_uint8(scaled))
