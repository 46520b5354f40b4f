"""Reader for CUB-200-2011 in its official layout.

Files read (all whitespace separated, one image per line, ids 1-based):
`images.txt` (id, path under `images/`), `image_class_labels.txt` (id,
class 1..200), `train_test_split.txt` (id, 1 = train), `bounding_boxes.txt`
(id, x, y, width, height as floats) and `classes.txt` (class id, name).

Boxes: the original code (B-CNN's `cub_get_database`, which CQD reused) read
`x y w h` and stored `round([x y x+w-1 y+h-1])`, then cropped with
`im(y1:y2, x1:x2, :)`: the numbers are taken as 1-based pixel coordinates,
inclusive at both ends. We reproduce that (with MATLAB's round-half-away
rounding); clipping to the image happens where the image size is known.
"""

from __future__ import annotations

from pathlib import Path

from cqd_port.data.records import DATA_ROOT_HINT, DatasetIndex, ImageRecord
from cqd_port.matlab import matlab_round
from cqd_port.errors import CqdError

CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "classes.txt")


def _read_table(path: Path, columns: int, kinds: tuple[type, ...]) -> list[tuple]:
    """Parse a whitespace table; the last column may contain spaces when it is a str."""
    if not path.is_file():
        raise CqdError(f"missing CUB index file {path}; point the dataset folder ({DATA_ROOT_HINT}) at CUB_200_2011 (the folder holding images.txt)")
    rows: list[tuple] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CqdError(f"cannot read CUB index file {path} ({exc}); restore it from the dataset archive") from exc
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(None, columns - 1)
        if len(parts) != columns:
            raise CqdError(f"{path}:{lineno}: expected {columns} fields, got '{line.strip()}'; restore the file from the dataset archive")
        try:
            rows.append(tuple(kind(part) for kind, part in zip(kinds, parts)))
        except ValueError:
            raise CqdError(f"{path}:{lineno}: cannot parse '{line.strip()}'; restore the file from the dataset archive") from None
    return rows


def read_cub(root: str | Path, name: str = "cub") -> DatasetIndex:
    """Read a CUB-200-2011 tree into a `DatasetIndex` (records in `images.txt` order).

    Labels become 0-based, paths are `images/<path in images.txt>`, boxes
    `round([x y x+w-1 y+h-1])` 1-based inclusive as the MATLAB code read them.
    """
    root = Path(root)
    if not root.is_dir():
        raise CqdError(f"CUB data root {root} does not exist; point the dataset folder ({DATA_ROOT_HINT}) at CUB_200_2011")
    images = _read_table(root / "images.txt", 2, (int, str))
    labels = dict(_read_table(root / "image_class_labels.txt", 2, (int, int)))
    split = dict(_read_table(root / "train_test_split.txt", 2, (int, int)))
    boxes = {row[0]: row[1:] for row in _read_table(root / "bounding_boxes.txt", 5, (int, float, float, float, float))}
    classes = _read_table(root / "classes.txt", 2, (int, str))

    class_ids = [cid for cid, _ in classes]
    if class_ids != list(range(1, len(classes) + 1)):
        raise CqdError(f"{root / 'classes.txt'}: class ids must run 1..{len(classes)} in order; restore the file")
    class_names = [cname.strip() for _, cname in classes]

    records: list[ImageRecord] = []
    for image_id, rel in images:
        for table, fname in ((labels, "image_class_labels.txt"), (split, "train_test_split.txt"), (boxes, "bounding_boxes.txt")):
            if image_id not in table:
                raise CqdError(f"{root / fname}: no entry for image id {image_id} ({rel}); restore the file from the dataset archive")
        label = labels[image_id]
        if not 1 <= label <= len(class_names):
            raise CqdError(f"{root / 'image_class_labels.txt'}: image id {image_id} has class {label} outside 1..{len(class_names)}")
        if split[image_id] not in (0, 1):
            raise CqdError(f"{root / 'train_test_split.txt'}: image id {image_id} has split {split[image_id]}, expected 0 or 1")
        x, y, w, h = boxes[image_id]
        box = (matlab_round(x), matlab_round(y), matlab_round(x + w - 1), matlab_round(y + h - 1))
        records.append(
            ImageRecord(
                path=f"images/{rel.strip()}",
                label=label - 1,
                box=box,
                train=split[image_id] == 1,
                image_id=image_id,
            )
        )
    index = DatasetIndex(root=root, name=name, class_names=class_names, records=records)
    index.check_paths()
    return index
