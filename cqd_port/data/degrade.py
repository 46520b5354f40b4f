"""The per-image degradations that make domain B from domain A (paper Section 4.1, Figure 3).

Each degradation is a pure function of a uint8 RGB image (a gray image is
made 3-channel first), its bounding box (1-based inclusive x1 y1 x2 y2, only
used by the ones that crop), a `DegradationConfig` and a per-image seed (only
used by the random ones); it returns the out_size x out_size x 3 uint8 image
the network is trained on. All resizing is MATLAB's `imresize`
(`cqd_port.imresize`), with its uint8 rounding after each pass.

Registry (`DEGRADATIONS`):

- `original`: the whole image resized to 224 x 224 (bicubic, antialiased:
  MATLAB's default, as the released code wrote it; aspect not kept);
- `localized`: crop to the box (clipped to the image), then as `original`;
- `lowres`: `lowres_path="code"` (default): the released code's path, the
  image shrunk straight to 50 x 50 then enlarged to 224 x 224;
  `lowres_path="paper"`: the paper's text, 224 -> 50 -> 224 (the first step
  as `original`). Both steps use `lowres_kernel`: "bilinear" (default,
  the user's specification) or "bicubic" (the release: `imresize(im,
  [50 50])` then `imresize(im, [224 224])`, MATLAB's defaults, bicubic
  and antialiased, rounded to uint8 after each pass); a non-default kernel
  is prepared into its own folder (`lowres-bicubic`, see
  `cqd_port.data.prepare.output_dir`);
- `localized_lowres`: crop to the box, then `lowres`;
- `edges`: as `save_images.m`: Piotr Dollar's Structured Edge Detector
  (`cqd_port.data.sed.edges_detect`, the toolbox's `modelBsds.mat` given as
  `sed_model`) at the image's NATIVE resolution with multiscale 0, sharpen
  2, nTreesEval 4, nms 0; the strength x 255 (float) resized to out_size
  (bicubic, antialiased, never rounded in between), then `uint8` (rounded
  half away from zero), replicated to 3 channels;
- `edges_opencv`: OpenCV's `ximgproc` detector (needs its `model.yml.gz` as
  `sed_model`) on the out_size `original` image; it has no sharpen step and
  other channels: NOT the paper's edges, for users without the MATLAB model;
- `edges_sobel`: a model-free Sobel edge map, same layout; NOT the paper's
  detector and never used in its place;
- `distorted`: the release's thin-plate-spline distortion (`cqd_port.data.tps`:
  bilinear resize to a 224 short side, forward `tpswarp` onto a 224 x 224
  canvas at the image's top-left, median hole filling, offsets
  `4 * randn` seeded per image);
- `gray`: MATLAB `rgb2gray` luminance (weights 0.298936021293775,
  0.587043074451121, 0.114020904255103, rounded half away from zero),
  resized as `original`, replicated to 3 channels.

A user's own degradation is named `package.module:function` (a *plugin*, not
in the registry): the image is made `original` (out_size x out_size x 3
uint8) and handed to `function(image, seed=image_seed, **plugin_params)`,
which must return a uint8 array of that same shape; `plugin_params` are the
config's. The contract is a gate, checked before the plugin is called: a
builtin or standard-library callable (`os:system`, `builtins:eval`) is
refused, the signature must take `image` first and a `seed`, and every
parameter name must be one it takes (required ones given). Whatever the
plugin raises becomes one error line naming it, the image and the exception.
`check_plugin` does all this and runs it once (on a test image or one the
caller gives), so a missing module or a broken contract is a one-line error
naming it before any image is written. Example: `cqd_port.plugins.blur:gaussian_blur`.

Which image a degradation starts from (the bird crop or the full picture)
is decided by the caller (`cqd_port.data.prepare`); only `localized` and
`localized_lowres` crop by themselves.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from cqd_port.data.edges import luminance, sed_edges, sobel_edges, to_rgb_uint8
from cqd_port.data.sed import edges_detect, read_sed_model
from cqd_port.data.records import clip_box
from cqd_port.matlab import matlab_round
from cqd_port.data.tps import TpsConfig, distort
from cqd_port.errors import CqdError
from cqd_port.imresize import METHODS, imresize
from cqd_port.matlab import matlab_uint8

__all__ = [
    "DegradationConfig",
    "Degradation",
    "DEGRADATIONS",
    "DEFAULT_LOWRES_KERNEL",
    "LOWRES_KERNELS",
    "LOWRES_DEGRADATIONS",
    "degrade",
    "degrade_from_source",
    "crop_to_box",
    "rgb2gray",
    "is_plugin",
    "load_plugin",
    "check_plugin",
    "PluginFailure",
    "degradation_folder",
]

Box = Sequence[float]

PARAMETERS_HINT = "data.parameters in a train config, --param for prepare and evaluate"

DEFAULT_LOWRES_KERNEL = "bilinear"  # the user's specification; the release used "bicubic"
LOWRES_KERNELS = ("bilinear", "bicubic")  # what the CLI offers: the specification and the release
LOWRES_DEGRADATIONS = ("lowres", "localized_lowres")  # the degradations `lowres_kernel` applies to


@dataclass(frozen=True)
class DegradationConfig:
    """Every parameter of the degradations; `as_dict()` goes into the prepared dataset's manifest."""

    out_size: int = 224
    resize_method: str = "bicubic"  # `original`/`localized`/`edges`/`gray`: MATLAB imresize's default
    lowres_size: int = 50
    lowres_kernel: str = DEFAULT_LOWRES_KERNEL  # "bilinear" (the user's specification) or "bicubic" (the release)
    lowres_path: str = "code"  # "code": image -> 50 -> 224; "paper": image -> 224 -> 50 -> 224
    sed_model: Optional[str] = None  # `edges`: the toolbox's modelBsds.mat; `edges_opencv`: OpenCV's model.yml.gz
    distortion_sigma: float = 4.0
    distortion_grid_start: int = 8
    distortion_grid_step: int = 16
    distortion_placement: str = "topleft"  # "topleft": the release's tpswarp; "center": the resized image's centre
    seed: int = 0  # dataset-level seed; prepare mixes it with each image's path into `image_seed`
    plugin_params: Optional[dict] = field(default=None, hash=False)  # keyword arguments of a `module:function` plugin

    def __post_init__(self) -> None:
        from cqd_port.seeds import check_seed

        if self.sed_model is not None:
            object.__setattr__(self, "sed_model", str(self.sed_model))
        object.__setattr__(self, "seed", check_seed(self.seed, "data.seed in a train config, --seed for prepare"))
        if self.plugin_params is not None:
            shown = repr(self.plugin_params)[:200]
            if not isinstance(self.plugin_params, dict):
                raise CqdError(f"plugin parameters must be name: value pairs, got {shown} ({PARAMETERS_HINT})")
            try:  # JSON-clean (tuples -> lists), so the prepared folder's record of them compares equal after a reload
                object.__setattr__(self, "plugin_params", json.loads(json.dumps(self.plugin_params, sort_keys=True)))
            except (TypeError, ValueError, RecursionError):
                raise CqdError(
                    f"plugin parameters {shown} must be numbers, strings, booleans or lists of them ({PARAMETERS_HINT})"
                ) from None
        if self.resize_method not in METHODS:
            raise CqdError(f"DegradationConfig.resize_method={self.resize_method!r}: use one of {', '.join(METHODS)}")
        if self.lowres_kernel not in METHODS:
            raise CqdError(f"low-resolution kernel {self.lowres_kernel!r} (--lowres-kernel): use {' or '.join(LOWRES_KERNELS)}")
        if self.lowres_path not in ("code", "paper"):
            raise CqdError(f"low-resolution path {self.lowres_path!r} (--lowres-path): use code or paper")
        if self.out_size < 1 or self.lowres_size < 1:
            raise CqdError(
                f"image sizes must be positive: out_size {self.out_size} (data.size in a train config), lowres_size {self.lowres_size}"
            )
        self.tps_config()  # validates the distortion options

    def tps_config(self) -> TpsConfig:
        return TpsConfig(
            out_size=self.out_size,
            grid_start=self.distortion_grid_start,
            grid_step=self.distortion_grid_step,
            sigma=self.distortion_sigma,
            placement=self.distortion_placement,
        )

    def as_dict(self) -> dict:
        data = asdict(self)
        if data["plugin_params"] is None:  # absent unless used: folders prepared before plugins existed stay valid
            del data["plugin_params"]
        return data


DegradationFn = Callable[[np.ndarray, Optional[Box], DegradationConfig, int], np.ndarray]


@dataclass(frozen=True)
class Degradation:
    name: str
    function: DegradationFn
    needs_box: bool
    random: bool
    description: str


def crop_to_box(image: np.ndarray, box: Box) -> np.ndarray:
    """MATLAB `im(y1:y2, x1:x2, :)` for a 1-based inclusive box, rounded (half away from zero) and clipped to the image."""
    if box is None or len(box) != 4 or not all(math.isfinite(float(v)) for v in box):
        raise CqdError(f"a bounding box must be 4 finite numbers x1 y1 x2 y2 (1-based, inclusive), got {box!r}")
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (matlab_round(float(v)) for v in box)
    if x2 < 1 or y2 < 1 or x1 > w or y1 > h or x2 < x1 or y2 < y1:
        raise CqdError(f"bounding box {tuple(box)} does not overlap the {w}x{h} image")
    x1, y1, x2, y2 = clip_box((x1, y1, x2, y2), w, h)
    return image[y1 - 1 : y2, x1 - 1 : x2]


def _resize_square(image: np.ndarray, size: int, method: str) -> np.ndarray:
    return imresize(image, size=[size, size], method=method)


def _original(image: np.ndarray, box: Optional[Box], config: DegradationConfig, image_seed: int) -> np.ndarray:
    return _resize_square(image, config.out_size, config.resize_method)


def _localized(image: np.ndarray, box: Optional[Box], config: DegradationConfig, image_seed: int) -> np.ndarray:
    return _original(crop_to_box(image, box), None, config, image_seed)


def _lowres(image: np.ndarray, box: Optional[Box], config: DegradationConfig, image_seed: int) -> np.ndarray:
    if config.lowres_path == "paper":
        image = _original(image, None, config, image_seed)
    small = _resize_square(image, config.lowres_size, config.lowres_kernel)
    return _resize_square(small, config.out_size, config.lowres_kernel)


def _localized_lowres(image: np.ndarray, box: Optional[Box], config: DegradationConfig, image_seed: int) -> np.ndarray:
    return _lowres(crop_to_box(image, box), None, config, image_seed)


# save_images.m's edgesDetect settings (model.opts.multiscale/sharpen/nTreesEval/nms)
RELEASE_SED_SHARPEN = 2
RELEASE_SED_TREES = 4


def _edges(image: np.ndarray, box: Optional[Box], config: DegradationConfig, image_seed: int) -> np.ndarray:
    model = read_sed_model(config.sed_model)
    strength = edges_detect(image, model, sharpen=RELEASE_SED_SHARPEN, n_trees_eval=RELEASE_SED_TREES)
    scaled = _resize_square(strength * np.float32(255), config.out_size, config.resize_method)
    return to_rgb_uint8(matlab_uint8(scaled))


def _edges_opencv(image: np.ndarray, box: Optional[Box], config: DegradationConfig, image_seed: int) -> np.ndarray:
    return sed_edges(_original(image, None, config, image_seed), config.sed_model)


def _edges_sobel(image: np.ndarray, box: Optional[Box], config: DegradationConfig, image_seed: int) -> np.ndarray:
    return sobel_edges(_original(image, None, config, image_seed))


def _distorted(image: np.ndarray, box: Optional[Box], config: DegradationConfig, image_seed: int) -> np.ndarray:
    return distort(image, image_seed, config.tps_config())


def rgb2gray(image: np.ndarray) -> np.ndarray:
    """MATLAB `rgb2gray` on uint8 RGB: weighted sum in double, rounded half away from zero, HxW uint8."""
    return matlab_uint8(luminance(image))


def _gray(image: np.ndarray, box: Optional[Box], config: DegradationConfig, image_seed: int) -> np.ndarray:
    return to_rgb_uint8(_resize_square(rgb2gray(image), config.out_size, config.resize_method))


DEGRADATIONS: dict[str, Degradation] = {
    d.name: d
    for d in (
        Degradation("original", _original, False, False, "whole image resized to out_size (bicubic)"),
        Degradation("localized", _localized, True, False, "cropped to the bounding box, resized to out_size"),
        Degradation("lowres", _lowres, False, False, "shrunk to lowres_size, enlarged back to out_size"),
        Degradation("localized_lowres", _localized_lowres, True, False, "cropped to the box, then lowres"),
        Degradation("edges", _edges, False, False, "the toolbox's Structured Edge Detector (modelBsds.mat) at native size, as save_images.m"),
        Degradation("edges_opencv", _edges_opencv, False, False, "OpenCV's SED (model.yml.gz) of the resized image: NOT the paper's edges"),
        Degradation("edges_sobel", _edges_sobel, False, False, "model-free Sobel edge magnitude (not the paper's SED)"),
        Degradation("distorted", _distorted, False, True, "thin-plate-spline distortion, 14x14 grid, N(0, sigma^2) px"),
        Degradation("gray", _gray, False, False, "MATLAB rgb2gray luminance, resized, 3 channels"),
    )
}


# --------------------------------------------------------------------------- user plugins


def is_plugin(name: str) -> bool:
    """True for a user's degradation named `package.module:function`."""
    return ":" in name


class PluginFailure(CqdError):
    """A plugin raised on one image; `detail` is the exception alone (`Type: message`), for lists of failures."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


def _defining_module(function: Callable[..., Any]) -> str:
    """The module a callable was defined in (through `functools.partial`), '' when unknown."""
    import functools

    while isinstance(function, functools.partial):
        function = function.func
    if isinstance(function, type):
        return function.__module__ or ""
    return getattr(function, "__module__", None) or getattr(type(function), "__module__", "") or ""


def _is_standard_library(module_name: str) -> bool:
    import sys

    top = module_name.partition(".")[0].lstrip("_")
    return module_name.partition(".")[0] in sys.stdlib_module_names or top in sys.stdlib_module_names or top == "builtins"


def load_plugin(spec: str) -> Callable[..., np.ndarray]:
    """Import `package.module:function`; a one-line CqdError naming it when it cannot be a degradation.

    Refused before anything is called: a module or function that cannot be
    found, a builtin or standard-library callable (`os:system`,
    `builtins:eval`: never a degradation), and a callable whose signature
    lacks the contract's `image` (first, positional) and `seed` parameters.
    """
    import inspect

    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name or ":" in function_name:
        raise CqdError(f"degradation plugin '{spec}': write it as package.module:function")
    if _is_standard_library(module_name):
        raise CqdError(f"degradation plugin '{spec}': {module_name} is Python's standard library, not a degradation; name your own package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure of user code is the user's to fix
        raise CqdError(
            f"degradation plugin '{spec}': cannot import {module_name} ({type(exc).__name__}: {exc}); "
            "put its folder on PYTHONPATH or run from the folder holding it"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise CqdError(f"degradation plugin '{spec}': {module_name} has no function {function_name}; check the name after ':'")
    origin = _defining_module(function)
    if inspect.isbuiltin(function) or _is_standard_library(origin):
        raise CqdError(
            f"degradation plugin '{spec}': {function_name} is {origin or 'a'} builtin or standard-library callable, not a degradation; "
            "write a function (image, seed, ...) that returns the degraded image"
        )
    parameters = _plugin_parameters(spec, function)
    names = list(parameters)
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not names or names[0] != "image" or parameters["image"].kind not in positional:
        raise CqdError(
            f"degradation plugin '{spec}' cannot be called as {function_name}(image, seed=...): it takes ({', '.join(names)}); "
            f"its first parameter must be image (the uint8 HxWx3 array): def {function_name}(image, seed, ...)"
        )
    seed = parameters.get("seed")
    if seed is None or seed.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
        raise CqdError(
            f"degradation plugin '{spec}' cannot be called as {function_name}(image, seed=...): it takes ({', '.join(names)}), "
            f"no seed; add one (the per-image seed, for reproducible randomness): def {function_name}(image, seed, ...)"
        )
    return function


def _plugin_parameters(spec: str, function: Callable[..., Any]) -> dict[str, Any]:
    import inspect

    try:
        return dict(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        raise CqdError(
            f"degradation plugin '{spec}': its parameters cannot be read (a compiled callable?); "
            "write it as a Python function (image, seed, ...)"
        ) from None


def _check_plugin_parameters(spec: str, function: Callable[..., Any], params: dict) -> None:
    """The user's parameters against the plugin's signature: every name known, every required one given."""
    import inspect

    parameters = _plugin_parameters(spec, function)
    keyword = {
        name: p
        for name, p in parameters.items()
        if name not in ("image", "seed") and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = [name for name in params if name not in keyword and not takes_any]
    if unknown:
        known = ", ".join(keyword) or "none besides image and seed"
        raise CqdError(
            f"degradation plugin '{spec}': unexpected keyword argument {', '.join(repr(n) for n in unknown)} "
            f"(its parameters: {known}); fix {PARAMETERS_HINT}"
        )
    missing = [name for name, p in keyword.items() if p.default is inspect.Parameter.empty and name not in params]
    if missing:
        raise CqdError(
            f"degradation plugin '{spec}' needs parameter {', '.join(repr(n) for n in missing)} without a default; "
            f"give it in {PARAMETERS_HINT}"
        )


def _run_plugin(
    spec: str, image: np.ndarray, config: DegradationConfig, image_seed: int, image_name: str = "an image"
) -> np.ndarray:
    """`original`, then the plugin; its output checked against the contract (uint8, the input's HxWx3).

    The plugin is user code: whatever it raises becomes one CqdError line
    naming the plugin, the image and the exception.
    """
    function = load_plugin(spec)
    params = dict(config.plugin_params or {})
    _check_plugin_parameters(spec, function, params)
    base = _original(image, None, config, image_seed)
    try:
        result = function(base.copy(), seed=int(image_seed), **params)
    except Exception as exc:  # noqa: BLE001 - the plugin is the user's code: any failure is reported, not a traceback
        detail = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        raise PluginFailure(
            f"degradation plugin '{spec}' failed on {image_name} ({detail}); fix the plugin or its parameters ({PARAMETERS_HINT})",
            detail,
        ) from None
    if not isinstance(result, np.ndarray) or result.dtype != np.uint8 or result.shape != base.shape:
        got = (
            f"a {type(result).__name__}"
            if not isinstance(result, np.ndarray)
            else f"dtype {result.dtype}, shape {tuple(result.shape)}"
        )
        raise CqdError(
            f"degradation plugin '{spec}' returned {got} for {image_name}; it must return a uint8 array of shape {tuple(base.shape)} "
            "(the input's HxWx3; convert with np.clip(x, 0, 255).astype(np.uint8))"
        )
    return result


def check_plugin(spec: str, config: DegradationConfig, image: np.ndarray | None = None, image_name: str = "") -> None:
    """Import the plugin, check its signature against the parameters and run it once: a CqdError naming it on any breach.

    `image` (any uint8 image, e.g. the dataset's first; `image_name` names it
    in messages) is what it runs on; by default a synthetic out_size ramp.
    Cheap, so a caller can check a plugin before any image is written or any
    training starts.
    """
    if image is None:
        n = config.out_size
        image = np.round(np.linspace(0, 255, n * n * 3).reshape(n, n, 3)).astype(np.uint8)
        image_name = image_name or "the test image"
    _run_plugin(spec, to_rgb_uint8(image), config, 0, image_name or "the check image")


def degradation_folder(name: str, plugin_params: dict | None = None) -> str:
    """The prepared folder's name for a degradation: the name itself, or for a plugin
    `module.function` plus a short hash of its parameters (different parameters, different folder)."""
    if not is_plugin(name):
        return name
    folder = name.replace(":", ".")
    params = plugin_params or {}
    if params:
        import hashlib

        folder += "-" + hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    return folder


def degrade(
    name: str,
    image: np.ndarray,
    box: Optional[Box] = None,
    config: DegradationConfig = DegradationConfig(),
    image_seed: int = 0,
    image_name: str = "an image",
) -> np.ndarray:
    """Apply the degradation `name` (or a `module:function` plugin) to one uint8 image -> out_size x out_size x 3 uint8.

    `image_name` (e.g. its relative path) names the image in a plugin's error.
    """
    if is_plugin(name):
        return _run_plugin(name, to_rgb_uint8(image), config, int(image_seed), image_name)
    entry = DEGRADATIONS.get(name)
    if entry is None:
        raise CqdError(f"unknown degradation {name!r}: use one of {', '.join(DEGRADATIONS)}")
    if entry.needs_box and box is None:
        raise CqdError(f"degradation {name!r} needs the image's bounding box")
    result = entry.function(to_rgb_uint8(image), box, config, int(image_seed))
    n = config.out_size
    assert result.shape == (n, n, 3) and result.dtype == np.uint8, (name, result.shape, result.dtype)
    return result


def degrade_from_source(
    name: str, image: np.ndarray, box: Optional[Box], crop: bool, config: DegradationConfig, image_seed: int, image_name: str = "an image"
) -> np.ndarray:
    """`degrade` from the image the source rule picks (`prepare`, `gallery`).

    `crop`: start from `image` cropped to `box` (`crop_to_box`), whose box is
    then the whole crop; otherwise from the full image, with `box` clipped to it.
    """
    if crop:
        image = crop_to_box(image, box)
        box = (1, 1, image.shape[1], image.shape[0])
    elif box is not None:
        box = clip_box(box, image.shape[1], image.shape[0])
    return degrade(name, image, box, config, image_seed, image_name)
