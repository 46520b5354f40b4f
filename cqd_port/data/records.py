"""The dataset index every reader produces and every later stage consumes.

A `DatasetIndex` is a root folder plus a list of `ImageRecord`s. Paths are
POSIX and relative to the root, so a prepared (degraded) copy of a dataset
keeps the same record paths and the A and B domains pair up by path.
Labels are 0-based (MATLAB's are 1-based); boxes stay in MATLAB's 1-based
inclusive pixel convention `[x1 y1 x2 y2]`, as the original code used them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cqd_port.errors import CqdError
from cqd_port.matlab import matlab_round

# Where a user names the dataset folder, in each command: hints name them all, so the one the user ran is there.
DATA_ROOT_HINT = "data.root in a train config, --data-root for prepare, --cub-root/--cars-root for reproduce, --data for evaluate"

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class ImageRecord:
    """One image: `path` relative to the dataset root (POSIX), 0-based `label`,
    `box` 1-based inclusive `(x1, y1, x2, y2)` or None, `train` split flag and
    the dataset's own `image_id`."""

    path: str
    label: int
    box: Box | None
    train: bool
    image_id: int

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "label": self.label,
            "box": list(self.box) if self.box is not None else None,
            "train": self.train,
            "image_id": self.image_id,
        }

    @staticmethod
    def from_dict(data: dict) -> "ImageRecord":
        box = data.get("box")
        return ImageRecord(
            path=str(data["path"]),
            label=int(data["label"]),
            box=tuple(int(v) for v in box) if box is not None else None,  # type: ignore[arg-type]
            train=bool(data["train"]),
            image_id=int(data["image_id"]),
        )


@dataclass
class DatasetIndex:
    """A dataset on disk: its root, name, class names and image records.

    `split` says where the train/test flags came from when a reader chose them
    (e.g. the ImageFolder reader's seeded split); empty for the datasets' own splits.
    """

    root: Path
    name: str
    class_names: list[str]
    records: list[ImageRecord] = field(default_factory=list)
    split: str = ""

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def train_records(self) -> list[ImageRecord]:
        return [r for r in self.records if r.train]

    def test_records(self) -> list[ImageRecord]:
        return [r for r in self.records if not r.train]

    def resolve(self, record: ImageRecord | str) -> Path:
        """The absolute path of a record's image; refuses paths that leave the root."""
        rel = record.path if isinstance(record, ImageRecord) else record
        return safe_join(self.root, rel)

    def check_paths(self) -> None:
        """Raise a CqdError on the first record whose path escapes the root (see `safe_join`)."""
        for record in self.records:
            self.resolve(record)

    def check_images_exist(self) -> None:
        """Raise one CqdError listing every missing image (count + first few)."""
        missing = [r.path for r in self.records if not self.resolve(r).is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise CqdError(
                f"{len(missing)} of {len(self.records)} images of dataset '{self.name}' are missing under "
                f"{self.root} ({shown}); point the dataset folder ({DATA_ROOT_HINT}) at the complete dataset or restore the images"
            )


def safe_join(root: Path, relative: str) -> Path:
    """`root / relative`, refusing absolute paths and `..` that would escape `root`."""
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or any(part == ".." for part in pure.parts) or relative.strip() == "":
        raise CqdError(
            f"image path '{relative}' escapes the dataset root {root}; index files must list paths relative to the root"
        )
    return Path(root) / Path(*pure.parts)


def clip_box(box: Box, width: int, height: int) -> Box:
    """Clip a 1-based inclusive box to an image of `width` x `height` pixels.

    The original cropped with `im(y1:y2, x1:x2, :)`; annotation boxes that
    stick out of the image by a pixel would make MATLAB error, so we clip.
    """
    x1, y1, x2, y2 = box
    x1 = min(max(1, x1), width)
    y1 = min(max(1, y1), height)
    x2 = min(max(x1, x2), width)
    y2 = min(max(y1, y2), height)
    return (x1, y1, x2, y2)


def map_box_to_resized(box: Box, in_size: tuple[int, int], out_size: tuple[int, int]) -> Box:
    """Map a 1-based inclusive box through a resize of the whole image to `out_size` (h, w).

    Uses MATLAB `imresize`'s pixel-centre mapping (`x_out = (x_in - 0.5) * s + 0.5`)
    on the outer edges of the box's first and last pixels, then clips.
    """
    in_h, in_w = in_size
    out_h, out_w = out_size
    sx, sy = out_w / in_w, out_h / in_h
    x1, y1, x2, y2 = box
    nx1 = matlab_round((x1 - 0.5) * sx + 0.5)
    ny1 = matlab_round((y1 - 0.5) * sy + 0.5)
    nx2 = matlab_round((x2 + 0.5) * sx - 0.5)
    ny2 = matlab_round((y2 + 0.5) * sy - 0.5)
    return clip_box((nx1, ny1, nx2, ny2), out_w, out_h)
