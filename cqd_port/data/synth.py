"""A SYNTHETIC fine-grained dataset in the CUB-200-2011 layout, for demos and tests.

No real birds or cars: every image is drawn. A class is a combination of a
few attributes; some are coarse (body colour, which survives low resolution
but not edge maps), some are fine (a small pattern on the wing / door, head
or headlight detail, tail or hub shape) and are partly destroyed by low
resolution, edge maps or distortion. Objects vary in scale, position,
rotation, mirror and colour, over a cluttered background that contains
distractors in the same palette, so cropping to the box matters too. Hence
each Table 1 task (localization, resolution, edges, distortion) has a
measurable gap between high- and low-quality data.

`style="birds"`: a small bird-like object anywhere in natural-looking
clutter. `style="cars"`: a boxy car-like object filling most of a wide
frame over a street-like background (the CARS columns of the demo).

The folder is a regular CUB tree (`images/`, `images.txt`,
`image_class_labels.txt`, `train_test_split.txt`, `bounding_boxes.txt` with
the true object boxes, `classes.txt`) plus `README.txt` and `synthetic.json`
saying it is SYNTHETIC. Generation is deterministic per seed and every file
is written atomically.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from cqd_port.errors import CqdError
from cqd_port.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, check_output_dir

SHIFT = 4  # cv2 sub-pixel drawing: coordinates are fixed point with 4 fractional bits
ONE = 1 << SHIFT

BIRD_ATTRIBUTES = {
    "body": {"brown": (130, 90, 55), "slate": (85, 100, 125), "olive": (120, 125, 60)},
    "head": {"red": (200, 40, 35), "yellow": (230, 200, 40), "black": (25, 25, 25)},
    "wing": ["striped", "dotted", "chevron", "barred"],
    "tail": ["forked", "round", "pointed"],
}
CAR_ATTRIBUTES = {
    "body": {"red": (175, 35, 35), "silver": (165, 170, 175), "navy": (35, 50, 110)},
    "lights": ["round", "square", "slim"],
    "trim": ["striped", "dotted", "checked", "plain"],
    "hub": ["spoked", "solid", "ring"],
}


OWN_FILES = {"images", "images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "classes.txt", "README.txt", "synthetic.json"}


@dataclass(frozen=True)
class SynthConfig:
    classes: int = 20
    train_per_class: int = 30
    test_per_class: int = 20
    size: int = 224
    seed: int = 0
    style: str = "birds"
    image_format: str = "jpg"


def _pt(x: float, y: float) -> tuple[int, int]:
    return (int(round(x * ONE)), int(round(y * ONE)))


def _ellipse(img: np.ndarray, c: tuple[float, float], axes: tuple[float, float], angle: float, color, thickness: int = -1) -> None:
    cv2.ellipse(img, _pt(*c), _pt(max(axes[0], 0.5), max(axes[1], 0.5)), angle, 0, 360, color, thickness, cv2.LINE_AA, SHIFT)


def _poly(img: np.ndarray, points, color) -> None:
    pts = np.array([_pt(x, y) for x, y in points], dtype=np.int32)
    cv2.fillPoly(img, [pts], color, cv2.LINE_AA, SHIFT)


def _line(img: np.ndarray, a, b, color, thickness: float) -> None:
    cv2.line(img, _pt(*a), _pt(*b), color, max(1, int(round(thickness))), cv2.LINE_AA, SHIFT)


def _circle(img: np.ndarray, c, r: float, color, thickness: int = -1) -> None:
    cv2.circle(img, _pt(*c), int(round(max(r, 0.5) * ONE)), color, thickness, cv2.LINE_AA, SHIFT)


def _jitter(rng: np.random.Generator, color, amount: float = 18.0) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.asarray(color, float) + rng.normal(0, amount / 2, 3) + rng.normal(0, amount / 2), 0, 255))


def _contrast(color) -> tuple[int, int, int]:
    # Light marks on dark parts, dark marks on light parts, so the pattern is a fine detail of the class.
    return (240, 235, 220) if float(np.mean(color)) < 120 else (30, 28, 25)


def _pattern(size: tuple[int, int], kind: str, period: float, color, rng: np.random.Generator, angle: float = 0.0) -> np.ndarray:
    """A `kind` pattern on a transparent layer (RGBA) covering `size` = (h, w)."""
    h, w = size
    layer = np.zeros((h, w, 4), np.uint8)
    rgba = (*color, 255)
    phase = rng.uniform(0, period)
    if kind == "striped":
        x = -w + phase
        while x < 2 * w:
            _line(layer, (x, -h), (x + np.tan(np.radians(angle)) * 3 * h, 2 * h), rgba, period * 0.38)
            x += period
    elif kind == "dotted":
        for row, y in enumerate(np.arange(phase - period, h + period, period)):
            for x in np.arange(phase - period + (row % 2) * period / 2, w + period, period):
                _circle(layer, (x, y), period * 0.24, rgba)
    elif kind == "chevron":
        y = phase - period
        while y < h + period:
            pts = np.array([_pt(0, y), _pt(w / 2, y + period * 0.6), _pt(w, y)], np.int32)
            cv2.polylines(layer, [pts], False, rgba, max(1, int(round(period * 0.3))), cv2.LINE_AA, SHIFT)
            y += period
    elif kind == "barred":
        for frac in (0.3, 0.62):
            _line(layer, (frac * w, -1), (frac * w + 0.15 * h, h + 1), rgba, period * 0.9)
    elif kind == "checked":
        for i, y in enumerate(np.arange(phase - period, h + period, period / 2)):
            for j, x in enumerate(np.arange(phase - period, w + period, period / 2)):
                if (i + j) % 2 == 0:
                    cv2.rectangle(layer, _pt(x, y), _pt(x + period / 2, y + period / 2), rgba, -1, cv2.LINE_AA, SHIFT)
    # "plain": nothing
    return layer


def _paste(dst: np.ndarray, layer: np.ndarray, mask: np.ndarray | None = None) -> None:
    """Alpha-composite an RGBA `layer` onto RGB `dst`, optionally restricted by a 0..255 mask."""
    alpha = layer[:, :, 3:4].astype(np.float32) / 255.0
    if mask is not None:
        alpha = alpha * (mask[:, :, None].astype(np.float32) / 255.0)
    dst[:] = (dst.astype(np.float32) * (1 - alpha) + layer[:, :, :3].astype(np.float32) * alpha + 0.5).astype(np.uint8)


def _draw_bird(attrs: dict[str, str], length: float, rng: np.random.Generator) -> np.ndarray:
    """A bird facing right on a transparent RGBA canvas; `length` is the body length in pixels."""
    L = length
    side = int(np.ceil(1.5 * L)) + 4
    c = side / 2.0
    obj = np.zeros((side, side, 4), np.uint8)
    body = _jitter(rng, BIRD_ATTRIBUTES["body"][attrs["body"]])
    head = _jitter(rng, BIRD_ATTRIBUTES["head"][attrs["head"]], 14)
    fat = rng.uniform(0.9, 1.1)
    dark = tuple(int(v * 0.75) for v in body)
    # Tail (drawn first, behind the body).
    tx = c - 0.42 * L
    if attrs["tail"] == "forked":
        _poly(obj, [(tx, c - 0.03 * L), (tx - 0.33 * L, c - 0.2 * L), (tx - 0.2 * L, c), (tx - 0.33 * L, c + 0.14 * L), (tx, c + 0.05 * L)], (*dark, 255))
    elif attrs["tail"] == "round":
        _ellipse(obj, (tx - 0.12 * L, c), (0.2 * L, 0.11 * L), 0, (*dark, 255))
    else:
        _poly(obj, [(tx, c - 0.06 * L), (tx - 0.42 * L, c + 0.02 * L), (tx, c + 0.07 * L)], (*dark, 255))
    # Legs.
    for dx in (-0.05, 0.08):
        _line(obj, (c + dx * L, c + 0.2 * L), (c + (dx - 0.03) * L, c + 0.38 * L), (60, 50, 40, 255), 0.025 * L)
    _ellipse(obj, (c, c), (0.5 * L, 0.25 * L * fat), 0, (*body, 255))
    # Head, beak, eye.
    hc = (c + 0.43 * L, c - 0.2 * L)
    _poly(obj, [(hc[0] + 0.1 * L, hc[1] - 0.04 * L), (hc[0] + 0.3 * L, hc[1] + 0.02 * L), (hc[0] + 0.1 * L, hc[1] + 0.06 * L)], (215, 170, 60, 255))
    _circle(obj, hc, 0.16 * L, (*head, 255))
    _circle(obj, (hc[0] + 0.06 * L, hc[1] - 0.03 * L), 0.035 * L, (250, 250, 250, 255))
    _circle(obj, (hc[0] + 0.065 * L, hc[1] - 0.03 * L), 0.018 * L, (10, 10, 10, 255))
    # Wing with the class's fine pattern, clipped to the wing.
    wing_mask = np.zeros((side, side), np.uint8)
    wc, wax, wang = (c - 0.04 * L, c - 0.01 * L), (0.31 * L, 0.15 * L * fat), -8.0
    _ellipse(obj, wc, wax, wang, (*dark, 255))
    _ellipse(wing_mask, wc, wax, wang, 255)
    _paste(obj[:, :, :3], _pattern((side, side), attrs["wing"], L / 9.0, _contrast(dark), rng, angle=15.0), wing_mask)
    return obj


def _draw_car(attrs: dict[str, str], length: float, rng: np.random.Generator) -> np.ndarray:
    """A side view of a car facing right on a transparent RGBA canvas; `length` in pixels."""
    L = length
    w, h = int(np.ceil(1.1 * L)) + 4, int(np.ceil(0.62 * L)) + 4
    cx, cy = w / 2.0, h * 0.55
    obj = np.zeros((h, w, 4), np.uint8)
    body = _jitter(rng, CAR_ATTRIBUTES["body"][attrs["body"]], 14)
    roof = rng.uniform(-0.03, 0.03) * L
    cabin = [(cx - 0.3 * L, cy - 0.04 * L), (cx - 0.2 * L, cy - 0.22 * L + roof), (cx + 0.14 * L, cy - 0.22 * L + roof), (cx + 0.3 * L, cy - 0.04 * L)]
    _poly(obj, cabin, (*body, 255))
    glass = (60, 75, 95, 255)
    _poly(obj, [(cx - 0.26 * L, cy - 0.05 * L), (cx - 0.18 * L, cy - 0.19 * L + roof), (cx - 0.03 * L, cy - 0.19 * L + roof), (cx - 0.03 * L, cy - 0.05 * L)], glass)
    _poly(obj, [(cx + 0.0 * L, cy - 0.05 * L), (cx + 0.0 * L, cy - 0.19 * L + roof), (cx + 0.12 * L, cy - 0.19 * L + roof), (cx + 0.26 * L, cy - 0.05 * L)], glass)
    x0, y0, x1, y1 = cx - 0.5 * L, cy - 0.06 * L, cx + 0.5 * L, cy + 0.16 * L
    r = 0.05 * L
    cv2.rectangle(obj, _pt(x0 + r, y0), _pt(x1 - r, y1), (*body, 255), -1, cv2.LINE_AA, SHIFT)
    cv2.rectangle(obj, _pt(x0, y0 + r), _pt(x1, y1 - r), (*body, 255), -1, cv2.LINE_AA, SHIFT)
    for corner in ((x0 + r, y0 + r), (x1 - r, y0 + r), (x0 + r, y1 - r), (x1 - r, y1 - r)):
        _circle(obj, corner, r, (*body, 255))
    # Door trim: the class's fine pattern in a band along the side.
    band = np.zeros((h, w), np.uint8)
    cv2.rectangle(band, _pt(cx - 0.28 * L, cy + 0.0 * L), _pt(cx + 0.3 * L, cy + 0.11 * L), 255, -1, cv2.LINE_AA, SHIFT)
    _paste(obj[:, :, :3], _pattern((h, w), attrs["trim"], L / 12.0, _contrast(body), rng), band)
    # Headlight (front) and a small tail light.
    light = (250, 240, 200, 255)
    hx, hy = cx + 0.47 * L, cy + 0.0 * L
    if attrs["lights"] == "round":
        _circle(obj, (hx - 0.015 * L, hy), 0.036 * L, light)
    elif attrs["lights"] == "square":
        cv2.rectangle(obj, _pt(hx - 0.06 * L, hy - 0.032 * L), _pt(hx + 0.01 * L, hy + 0.032 * L), light, -1, cv2.LINE_AA, SHIFT)
    else:
        cv2.rectangle(obj, _pt(hx - 0.12 * L, hy - 0.013 * L), _pt(hx + 0.02 * L, hy + 0.013 * L), light, -1, cv2.LINE_AA, SHIFT)
    cv2.rectangle(obj, _pt(x0, cy - 0.02 * L), _pt(x0 + 0.025 * L, cy + 0.03 * L), (200, 30, 30, 255), -1, cv2.LINE_AA, SHIFT)
    # Wheels with the class's hub style.
    for wx in (cx - 0.31 * L, cx + 0.31 * L):
        wy = cy + 0.16 * L
        _circle(obj, (wx, wy), 0.095 * L, (20, 20, 22, 255))
        hub = (190, 190, 195, 255)
        if attrs["hub"] == "spoked":
            spin = rng.uniform(0, np.pi)
            for k in range(5):
                a = spin + k * 2 * np.pi / 5
                _line(obj, (wx, wy), (wx + 0.055 * L * np.cos(a), wy + 0.055 * L * np.sin(a)), hub, 0.012 * L)
        elif attrs["hub"] == "solid":
            _circle(obj, (wx, wy), 0.05 * L, hub)
        else:
            _circle(obj, (wx, wy), 0.05 * L, hub, max(1, int(round(0.014 * L))))
    return obj


def _noise_texture(rng: np.random.Generator, h: int, w: int, blur: float, amplitude: float) -> np.ndarray:
    noise = rng.normal(0, 1, (h, w, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), blur)
    noise /= noise.std() + 1e-6
    return noise * amplitude


def _bird_background(rng: np.random.Generator, h: int, w: int, palette: list[tuple[int, int, int]]) -> np.ndarray:
    base = np.array(rng.choice([(95, 130, 70), (150, 135, 100), (120, 150, 170), (80, 95, 60)]), np.float32)
    grad = np.linspace(-1, 1, h, dtype=np.float32)[:, None, None] * rng.uniform(-25, 25, 3).astype(np.float32)
    img = base + grad + _noise_texture(rng, h, w, rng.uniform(2, 6), 14) + _noise_texture(rng, h, w, 1.0, 5)
    img = np.clip(img, 0, 255).astype(np.uint8)
    # Branches, leaves and blobs; some blobs reuse the classes' colours as distractors.
    for _ in range(rng.integers(2, 5)):
        a = (rng.uniform(-0.2, 1.2) * w, rng.uniform(0, h))
        b = (rng.uniform(-0.2, 1.2) * w, rng.uniform(0, h))
        _line(img, a, b, _jitter(rng, (85, 65, 45), 20), rng.uniform(0.015, 0.04) * min(h, w))
    for _ in range(rng.integers(6, 14)):
        color = _jitter(rng, palette[rng.integers(len(palette))] if rng.random() < 0.4 else (70, 120, 50), 25)
        c = (rng.uniform(0, w), rng.uniform(0, h))
        s = rng.uniform(0.02, 0.09) * min(h, w)
        if rng.random() < 0.5:
            _ellipse(img, c, (s, s * rng.uniform(0.3, 0.8)), rng.uniform(0, 180), color)
        else:
            k = rng.integers(3, 6)
            angles = np.sort(rng.uniform(0, 2 * np.pi, k))
            _poly(img, [(c[0] + s * np.cos(t), c[1] + s * np.sin(t)) for t in angles], color)
    return img


def _car_background(rng: np.random.Generator, h: int, w: int, palette: list[tuple[int, int, int]]) -> np.ndarray:
    horizon = int(h * rng.uniform(0.45, 0.6))
    sky = np.array(rng.choice([(150, 185, 220), (190, 195, 200), (215, 190, 160)]), np.float32)
    ground = np.array(rng.choice([(95, 95, 100), (120, 115, 105), (70, 72, 78)]), np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:horizon] = sky - np.linspace(0, 30, horizon, dtype=np.float32)[:, None, None]
    img[horizon:] = ground
    img += _noise_texture(rng, h, w, 1.5, 6)
    img = np.clip(img, 0, 255).astype(np.uint8)
    # Buildings, poles and a kerb line.
    for _ in range(rng.integers(3, 7)):
        bw, bh = rng.uniform(0.08, 0.25) * w, rng.uniform(0.15, 0.4) * h
        bx = rng.uniform(-0.1, 1.0) * w
        color = _jitter(rng, palette[rng.integers(len(palette))] if rng.random() < 0.3 else (160, 140, 120), 30)
        cv2.rectangle(img, _pt(bx, horizon - bh), _pt(bx + bw, horizon), color, -1, cv2.LINE_AA, SHIFT)
        for wy in np.arange(horizon - bh + 0.05 * h, horizon - 0.03 * h, 0.06 * h):
            _line(img, (bx + 0.1 * bw, wy), (bx + 0.9 * bw, wy), (60, 70, 90), max(1.0, 0.012 * h))
    for _ in range(rng.integers(0, 3)):
        px = rng.uniform(0, w)
        _line(img, (px, horizon - rng.uniform(0.2, 0.4) * h), (px, horizon + 0.05 * h), (50, 50, 55), 0.012 * w)
    _line(img, (0, horizon + 0.02 * h), (w, horizon + 0.02 * h), (180, 180, 175), max(1.0, 0.01 * h))
    return img


def _rotate_into(scene: np.ndarray, obj: np.ndarray, center: tuple[float, float], angle: float) -> np.ndarray:
    """Composite RGBA `obj` rotated by `angle` degrees with its centre at `center`; return its alpha in the scene."""
    oh, ow = obj.shape[:2]
    matrix = cv2.getRotationMatrix2D((ow / 2.0, oh / 2.0), angle, 1.0)
    matrix[0, 2] += center[0] - ow / 2.0
    matrix[1, 2] += center[1] - oh / 2.0
    h, w = scene.shape[:2]
    warped = cv2.warpAffine(obj, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    _paste(scene, warped)
    return warped[:, :, 3]


COARSE_KEYS = {"birds": ("body", "head"), "cars": ("body",)}


def _class_attributes(style: str, classes: int, seed: int) -> list[dict[str, str]]:
    """Classes in groups that share their coarse attributes (colours) and differ only in fine ones.

    Like sister species, the classes of a group can only be told apart by
    small details (wing pattern and tail, or lights, trim and hubs), which is
    what low resolution destroys; colours tell the groups apart, which is
    what edge maps destroy.
    """
    table = BIRD_ATTRIBUTES if style == "birds" else CAR_ATTRIBUTES
    coarse_keys = COARSE_KEYS[style]
    fine_keys = tuple(k for k in table if k not in coarse_keys)
    coarse = list(itertools.product(*[list(table[k]) for k in coarse_keys]))
    fine = list(itertools.product(*[list(table[k]) for k in fine_keys]))
    if classes > len(coarse) * len(fine):
        most = len(coarse) * len(fine)
        raise CqdError(f"--classes {classes} is more than the {most} distinct synthetic {style} classes; use at most {most}")
    rng = np.random.default_rng([seed, 7919])
    group_size = max(4, -(-classes // len(coarse)))  # at least 4 sister classes per colour group
    groups = -(-classes // group_size)
    chosen: list[dict[str, str]] = []
    for g, c in enumerate(rng.permutation(len(coarse))[:groups]):
        count = min(group_size, classes - g * group_size)
        for f in rng.permutation(len(fine))[:count]:
            attrs = dict(zip(coarse_keys, coarse[c])) | dict(zip(fine_keys, fine[f]))
            chosen.append({k: attrs[k] for k in table})
    return chosen


def _class_name(style: str, attrs: dict[str, str]) -> str:
    if style == "birds":
        return f"{attrs['body']}_{attrs['head']}-headed_{attrs['wing']}-wing_{attrs['tail']}-tail"
    return f"{attrs['body']}_{attrs['lights']}-lights_{attrs['trim']}-trim_{attrs['hub']}-hubs"


def render_image(style: str, attrs: dict[str, str], size: int, rng: np.random.Generator, palette: list) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One RGB image and its object's box (1-based inclusive x1 y1 x2 y2)."""
    if style == "birds":
        h = size
        w = int(round(size * rng.uniform(1.0, 1.33)))
        scene = _bird_background(rng, h, w, palette)
        length = rng.uniform(0.28, 0.55) * min(h, w)
        obj = _draw_bird(attrs, length, rng)
        angle = rng.uniform(-25, 25)
    else:
        h = size
        w = int(round(size * rng.uniform(1.3, 1.5)))
        scene = _car_background(rng, h, w, palette)
        length = rng.uniform(0.7, 0.92) * w
        obj = _draw_car(attrs, length, rng)
        angle = rng.uniform(-4, 4)
    if rng.random() < 0.5:
        obj = obj[:, ::-1].copy()
    oh, ow = obj.shape[:2]
    margin_x = max(0.0, w / 2 - ow * 0.45)
    margin_y = max(0.0, h / 2 - oh * 0.45)
    center = (w / 2 + rng.uniform(-margin_x, margin_x), h / 2 + rng.uniform(-margin_y, margin_y))
    if style == "cars":
        center = (center[0], h * rng.uniform(0.5, 0.62))
    alpha = _rotate_into(scene, obj, center, angle)
    # Mild sensor noise over everything.
    scene = np.clip(scene.astype(np.float32) + rng.normal(0, 3, scene.shape), 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(alpha > 64)
    box = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
    return scene, box


def _drawn_class_folder(name: str) -> bool:
    """`007.Synth_...`: a class folder `make_synthetic_dataset` writes (see `class_names` below)."""
    number, _, rest = name.partition(".")
    return number.isdigit() and rest.startswith("Synth_")


def _clear_previous_images(out: Path) -> None:
    """Remove the images of an earlier synthetic dataset in `out`, so none of its classes is left behind.

    Only class folders this generator draws are removed; a folder holding
    anything else under `images/` (a real dataset) is refused untouched.
    """
    images = out / "images"
    if not images.is_dir():
        return
    entries = [p for p in images.iterdir() if not p.name.startswith(".")]
    foreign = [p.name for p in entries if not (p.is_dir() and _drawn_class_folder(p.name))]
    if foreign:
        raise CqdError(
            f"{images} holds images synth did not draw ({', '.join(sorted(foreign)[:3])}); choose an empty or new --out folder"
        )
    (out / "synthetic.json").unlink(missing_ok=True)  # never looks finished while half cleared
    shutil.rmtree(images)


def _sync_all() -> None:
    """Flush every written file to disk (`os.sync`; where it does not exist, Windows, the images are not forced out first)."""
    if hasattr(os, "sync"):
        os.sync()


def make_synthetic_dataset(
    out: str | Path,
    classes: int = 20,
    train_per_class: int = 30,
    test_per_class: int = 20,
    size: int = 224,
    seed: int = 0,
    style: str = "birds",
    image_format: str = "jpg",
) -> Path:
    """Write a SYNTHETIC fine-grained dataset in the CUB-200-2011 layout under `out`; return `out`.

    `size` is the image height in pixels (widths vary: birds 1-1.33x, cars 1.3-1.5x).
    Images are JPEG quality 95 (`image_format="jpg"`) or PNG. Deterministic per `seed`.
    """
    config = SynthConfig(classes, train_per_class, test_per_class, size, seed, style, image_format)
    if style not in ("birds", "cars"):
        raise CqdError(f"unknown --style '{style}'; use birds or cars")
    if image_format not in ("jpg", "png"):
        raise CqdError(f"unknown image format '{image_format}'; use jpg or png")
    if classes < 2 or train_per_class < 1 or test_per_class < 0 or size < 32:
        raise CqdError("synthetic dataset needs --classes >= 2, --train-per-class >= 1, --test-per-class >= 0 and --size >= 32")
    out = check_output_dir(out)
    # Refuse to write into a folder holding anything else; an interrupted run (no synthetic.json yet) is redone.
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OWN_FILES and not p.name.startswith("."))
    if foreign:
        raise CqdError(f"{out} holds files that are not a synthetic dataset ({', '.join(foreign[:3])}); choose an empty or new --out folder")
    _clear_previous_images(out)
    # The marker is written last: remove a stale one first so an interrupted regeneration never looks finished.
    (out / "synthetic.json").unlink(missing_ok=True)
    table = BIRD_ATTRIBUTES if style == "birds" else CAR_ATTRIBUTES
    palette = [tuple(v) for v in table["body"].values()] + ([tuple(v) for v in table["head"].values()] if style == "birds" else [])
    class_attrs = _class_attributes(style, classes, seed)
    class_names = [f"{i + 1:03d}.Synth_{_class_name(style, a)}" for i, a in enumerate(class_attrs)]

    images, labels, splits, boxes = [], [], [], []
    image_id = 0
    encode_params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    for label, (name, attrs) in enumerate(zip(class_names, class_attrs)):
        for k in range(train_per_class + test_per_class):
            image_id += 1
            rng = np.random.default_rng([seed, label, k])
            image, box = render_image(style, attrs, size, rng, palette)
            rel = f"{name}/Synth_{label + 1:03d}_{k + 1:04d}.{image_format}"
            ok, encoded = cv2.imencode(f".{image_format}", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), encode_params)
            if not ok:
                raise CqdError(f"could not encode synthetic image {rel}")
            atomic_write_bytes(out / "images" / rel, encoded.tobytes(), durable=False)  # synced at once below
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {label + 1}")
            splits.append(f"{image_id} {1 if k < train_per_class else 0}")
            x1, y1, x2, y2 = box
            boxes.append(f"{image_id} {float(x1):.1f} {float(y1):.1f} {float(x2 - x1 + 1):.1f} {float(y2 - y1 + 1):.1f}")
    # one sync for all the images (an fsync per image cost about a third of the generation) before any
    # index file and the marker: a dataset that looks finished has every image on disk
    _sync_all()
    atomic_write_text(out / "classes.txt", "".join(f"{i + 1} {n}\n" for i, n in enumerate(class_names)))
    atomic_write_text(out / "images.txt", "\n".join(images) + "\n")
    atomic_write_text(out / "image_class_labels.txt", "\n".join(labels) + "\n")
    atomic_write_text(out / "train_test_split.txt", "\n".join(splits) + "\n")
    atomic_write_text(out / "bounding_boxes.txt", "\n".join(boxes) + "\n")
    atomic_write_text(
        out / "README.txt",
        "SYNTHETIC DATASET - not CUB-200-2011 and not Stanford Cars.\n"
        f"Drawn by cqd_port.data.synth (style={style}, seed={seed}) in the CUB-200-2011 file layout so the\n"
        "same readers and commands run on it. Numbers measured on it say nothing about the paper's datasets.\n",
    )
    atomic_write_json(
        out / "synthetic.json",
        {
            "synthetic": True,
            "generator": "cqd_port.data.synth.make_synthetic_dataset",
            "config": asdict(config),
            "images": image_id,
            "classes": [{"name": n, "attributes": a} for n, a in zip(class_names, class_attrs)],
        },
    )
    return out


def is_synthetic(root: str | Path) -> bool:
    """True when `root` (a dataset or a prepared copy of one) says it is synthetic."""
    root = Path(root)
    marker = root / "synthetic.json"
    if marker.is_file():
        try:
            return bool(json.loads(marker.read_text()).get("synthetic", False))
        except (OSError, ValueError):
            return True
    return False
