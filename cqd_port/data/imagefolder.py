"""Reader for any dataset in the ImageFolder layout: `root/<class>/<image>`.

Classes are the sub-folders of `root` in sorted order (torchvision's
`ImageFolder` convention; hidden folders are skipped), images every file
with an image suffix below a class folder (recursively, sorted). Labels are
0-based class positions; `image_id` is the 1-based position of the image in
that sorted list.

Split:
- `train.txt` and `test.txt` in `root` (one path relative to `root` per
  line, e.g. `cat/001.jpg`): the provided split; images listed in neither
  are left out; an image listed in both, or missing, is an error;
- otherwise a seeded stratified split: `test_fraction` of each class
  (rounded half away from zero, at least one training and, with two or more
  images, at least one test image) chosen by a generator seeded with `seed`.
  `DatasetIndex.split` says which was used (it goes into the run description).

Boxes (optional, only needed by the degradations that crop): `boxes.txt` in
`root`, lines `relative/path x1 y1 x2 y2` in the project's 1-based inclusive
pixel convention; images without a line have no box.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cqd_port.data.records import Box, DatasetIndex, ImageRecord, safe_join
from cqd_port.matlab import matlab_round
from cqd_port.errors import CqdError
from cqd_port.seeds import check_seed

__all__ = ["IMAGE_SUFFIXES", "is_image_folder", "read_image_folder"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
TRAIN_LIST = "train.txt"
TEST_LIST = "test.txt"
BOXES_FILE = "boxes.txt"
DEFAULT_TEST_FRACTION = 0.3


def _class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def is_image_folder(root: str | Path) -> bool:
    """True when `root` has at least one non-hidden sub-folder holding an image file."""
    root = Path(root)
    if not root.is_dir():
        return False
    for name in _class_folders(root):
        if any(f.suffix.lower() in IMAGE_SUFFIXES for f in (root / name).rglob("*") if f.is_file()):
            return True
    return False


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CqdError(f"cannot read split list {path} ({exc}); it must be UTF-8 text, one relative image path per line") from exc
    return [line.strip().replace("\\", "/") for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _read_boxes(path: Path) -> dict[str, Box]:
    boxes: dict[str, Box] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CqdError(f"cannot read {path} ({exc}); lines must be 'relative/path x1 y1 x2 y2'") from exc
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(None, 4)
        try:
            if len(parts) != 5:
                raise ValueError
            x1, y1, x2, y2 = (matlab_round(float(v)) for v in parts[1:])
        except ValueError:
            raise CqdError(f"{path}:{lineno}: expected 'relative/path x1 y1 x2 y2' (1-based, inclusive), got '{line.strip()}'") from None
        if x2 < x1 or y2 < y1:
            raise CqdError(f"{path}:{lineno}: box {x1} {y1} {x2} {y2} is empty (x2 < x1 or y2 < y1); fix the line")
        boxes[parts[0].strip().replace("\\", "/")] = (x1, y1, x2, y2)
    return boxes


def _stratified_test(labels: list[int], test_fraction: float, seed: int) -> set[int]:
    """Positions chosen for testing: round(n * fraction) of each class, seeded, class by class."""
    rng = np.random.default_rng(check_seed(seed, "data.split_seed in a train config"))
    by_class: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        by_class.setdefault(label, []).append(position)
    chosen: set[int] = set()
    for label in sorted(by_class):
        positions = by_class[label]
        n = len(positions)
        count = matlab_round(n * test_fraction)
        count = min(max(count, 1 if n >= 2 else 0), n - 1)
        chosen.update(positions[i] for i in rng.permutation(n)[:count])
    return chosen


def read_image_folder(
    root: str | Path, name: str = "folder", test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0
) -> DatasetIndex:
    """Read `root/<class>/<image>` into a `DatasetIndex` (see the module docstring for split and boxes)."""
    root = Path(root)
    if not root.is_dir():
        raise CqdError(f"dataset folder {root} does not exist; give the folder holding one sub-folder per class")
    if not 0.0 < test_fraction < 1.0:
        raise CqdError(f"test_fraction {test_fraction} must lie strictly between 0 and 1 (e.g. 0.3)")
    class_names = _class_folders(root)
    paths: list[str] = []
    labels: list[int] = []
    for label, cname in enumerate(class_names):
        files = sorted(
            f.relative_to(root).as_posix()
            for f in (root / cname).rglob("*")
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise CqdError(
            f"no images under {root}: the ImageFolder layout is root/<class>/<image> with suffixes {', '.join(IMAGE_SUFFIXES)}"
        )
    empty = [c for c, count in zip(class_names, np.bincount(labels, minlength=len(class_names))) if count == 0]
    if empty:
        raise CqdError(f"class folder(s) {', '.join(empty[:5])} under {root} hold no images; remove them or add images")

    train_list, test_list = root / TRAIN_LIST, root / TEST_LIST
    if train_list.is_file() != test_list.is_file():
        present = train_list if train_list.is_file() else test_list
        raise CqdError(f"{present} without its partner: give both {TRAIN_LIST} and {TEST_LIST}, or neither (seeded split)")
    train_flags: dict[str, bool] = {}
    if train_list.is_file():
        known = set(paths)
        for flag, path in ((True, train_list), (False, test_list)):
            for rel in _read_list(path):
                safe_join(root, rel)
                if rel not in known:
                    raise CqdError(f"{path} lists '{rel}', which is not an image under a class folder of {root}; fix the list")
                if rel in train_flags:
                    raise CqdError(f"'{rel}' is listed in both {TRAIN_LIST} and {TEST_LIST}; keep it in one")
                train_flags[rel] = flag
        split = f"provided split ({TRAIN_LIST}, {TEST_LIST})"
    else:
        test_positions = _stratified_test(labels, test_fraction, seed)
        train_flags = {p: i not in test_positions for i, p in enumerate(paths)}
        split = f"seeded stratified split: {test_fraction:g} of each class for testing, seed {seed}"

    boxes = _read_boxes(root / BOXES_FILE) if (root / BOXES_FILE).is_file() else {}
    unknown_boxes = sorted(set(boxes) - set(paths))
    if unknown_boxes:
        raise CqdError(f"{root / BOXES_FILE} has a box for '{unknown_boxes[0]}', which is not an image under {root}; fix the line")

    records = [
        ImageRecord(path=p, label=label, box=boxes.get(p), train=train_flags[p], image_id=i + 1)
        for i, (p, label) in enumerate(zip(paths, labels))
        if p in train_flags
    ]
    index = DatasetIndex(root=root, name=name, class_names=class_names, records=records, split=split)
    if not index.train_records():
        raise CqdError(f"the split of {root} leaves no training image; list some in {TRAIN_LIST} or lower test_fraction")
    return index
