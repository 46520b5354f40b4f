"""Reader for Stanford Cars, in either of its two distributions.

1. `cars_annos.mat` next to `car_ims/` (what the original CQD code read): one
   `annotations` struct array with `relative_im_path` (`car_ims/000001.jpg`),
   `bbox_x1..bbox_y2`, `class` (1-based) and `test` (1 = test split), plus
   `class_names`.
2. The devkit: `cars_meta.mat` (`class_names`), `cars_train_annos.mat` and
   `cars_test_annos_withlabels.mat` (`annotations` with `bbox_*`, `class`,
   `fname`), either in the root or in `devkit/`, images in `cars_train/` and
   `cars_test/`.

Boxes are 1-based inclusive pixel coordinates in both, as MATLAB used them.

The devkit's plain `cars_test_annos.mat` has no labels. By default that is an
error (a test split without labels cannot be evaluated, and silently
training on a train-only index would give a misleading experiment); pass
`allow_unlabelled_test=True` to get a train-only index instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cqd_port.data.records import DATA_ROOT_HINT, DatasetIndex, ImageRecord
from cqd_port.errors import CqdError


def _load(path: Path) -> dict[str, Any]:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except NotImplementedError:
        # MATLAB v7.3 (HDF5) files: scipy cannot read them.
        try:
            import mat73

            return mat73.loadmat(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure here means a corrupt file
            raise CqdError(f"cannot read {path} ({exc}); re-download the Stanford Cars annotations") from exc
    except Exception as exc:  # noqa: BLE001 - scipy raises many types on garbage
        raise CqdError(f"cannot read {path} ({exc}); re-download the Stanford Cars annotations") from exc


def _field(path: Path, data: dict[str, Any], key: str) -> Any:
    if key not in data:
        raise CqdError(f"{path} has no variable '{key}'; is this the right Stanford Cars annotation file?")
    return data[key]


def _as_list(value: Any) -> list:
    """A MATLAB struct array / cell array loaded by scipy or mat73 -> a Python list."""
    if isinstance(value, np.ndarray):
        return list(value.ravel())
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _annotations(path: Path, data: dict[str, Any]) -> list[dict[str, Any]]:
    raw = _field(path, data, "annotations")
    if isinstance(raw, dict):  # mat73: a struct array comes as a dict of lists
        keys = list(raw)
        columns = {k: _as_list(raw[k]) for k in keys}
        length = len(columns[keys[0]]) if keys else 0
        return [{k: columns[k][i] for k in keys} for i in range(length)]
    out = []
    for item in _as_list(raw):
        if hasattr(item, "_fieldnames"):
            out.append({name: getattr(item, name) for name in item._fieldnames})
        else:
            raise CqdError(f"{path}: 'annotations' is not a struct array; is this the right Stanford Cars annotation file?")
    return out


def _scalar(path: Path, position: int, ann: dict[str, Any], key: str) -> int:
    if key not in ann:
        raise CqdError(f"{path}: annotation {position + 1} has no field '{key}'; is this the right Stanford Cars annotation file?")
    try:
        return int(np.asarray(ann[key]).ravel()[0])  # uint8/uint16 in the files: widen before arithmetic
    except (ValueError, IndexError, TypeError):
        raise CqdError(f"{path}: annotation {position + 1} field '{key}' is not a number ({ann[key]!r})") from None


def _string(path: Path, position: int, ann: dict[str, Any], key: str) -> str:
    if key not in ann:
        raise CqdError(f"{path}: annotation {position + 1} has no field '{key}'; is this the right Stanford Cars annotation file?")
    value = ann[key]
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else ""
    return str(value)


def _class_names(path: Path, data: dict[str, Any]) -> list[str]:
    names = [str(np.asarray(n).ravel()[0]) if isinstance(n, np.ndarray) else str(n) for n in _as_list(_field(path, data, "class_names"))]
    if not names:
        raise CqdError(f"{path}: 'class_names' is empty; re-download the Stanford Cars annotations")
    return names


def _box(path: Path, position: int, ann: dict[str, Any]) -> tuple[int, int, int, int]:
    return tuple(_scalar(path, position, ann, f"bbox_{k}") for k in ("x1", "y1", "x2", "y2"))  # type: ignore[return-value]


def _check_label(path: Path, position: int, label: int, num_classes: int) -> int:
    if not 1 <= label <= num_classes:
        raise CqdError(f"{path}: annotation {position + 1} has class {label} outside 1..{num_classes}; re-download the annotations")
    return label - 1


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / "devkit" / name):
        if candidate.is_file():
            return candidate
    return None


def read_cars_annos(root: Path, name: str = "cars") -> DatasetIndex:
    """The `cars_annos.mat` + `car_ims/` distribution (the original code's input)."""
    path = root / "cars_annos.mat"
    data = _load(path)
    class_names = _class_names(path, data)
    records = []
    for i, ann in enumerate(_annotations(path, data)):
        rel = _string(path, i, ann, "relative_im_path").replace("\\", "/")
        label = _check_label(path, i, _scalar(path, i, ann, "class"), len(class_names))
        test = _scalar(path, i, ann, "test")
        records.append(ImageRecord(path=rel, label=label, box=_box(path, i, ann), train=test == 0, image_id=i + 1))
    index = DatasetIndex(root=root, name=name, class_names=class_names, records=records)
    index.check_paths()
    return index


def read_cars_devkit(root: Path, name: str = "cars", allow_unlabelled_test: bool = False) -> DatasetIndex:
    """The devkit distribution: train and labelled test annotations, `cars_train/`, `cars_test/`.

    Image ids run over the training images first, then the test images.
    """
    meta = _find(root, "cars_meta.mat")
    train_path = _find(root, "cars_train_annos.mat")
    if meta is None or train_path is None:
        raise CqdError(
            f"no Stanford Cars annotations under {root}: expected cars_annos.mat (with car_ims/) or the devkit's "
            f"cars_meta.mat and cars_train_annos.mat (in the root or devkit/); point the dataset folder ({DATA_ROOT_HINT}) at the dataset"
        )
    class_names = _class_names(meta, _load(meta))
    test_path = _find(root, "cars_test_annos_withlabels.mat")
    if test_path is None and not allow_unlabelled_test:
        raise CqdError(
            f"{root}: cars_test_annos_withlabels.mat not found (cars_test_annos.mat has no labels); put the labelled "
            "test annotations in the root or devkit/, or use the cars_annos.mat distribution"
        )
    records: list[ImageRecord] = []
    parts = [(train_path, "cars_train", True)] + ([(test_path, "cars_test", False)] if test_path is not None else [])
    for path, folder, train in parts:
        data = _load(path)
        for i, ann in enumerate(_annotations(path, data)):
            fname = _string(path, i, ann, "fname")
            label = _check_label(path, i, _scalar(path, i, ann, "class"), len(class_names))
            records.append(
                ImageRecord(path=f"{folder}/{fname}", label=label, box=_box(path, i, ann), train=train, image_id=len(records) + 1)
            )
    index = DatasetIndex(root=root, name=name, class_names=class_names, records=records)
    index.check_paths()
    return index


def read_cars(root: str | Path, name: str = "cars", allow_unlabelled_test: bool = False) -> DatasetIndex:
    """Read Stanford Cars, auto-detecting the distribution (`cars_annos.mat` wins when both exist)."""
    root = Path(root)
    if not root.is_dir():
        raise CqdError(f"Stanford Cars data root {root} does not exist; point the dataset folder ({DATA_ROOT_HINT}) at the dataset")
    if (root / "cars_annos.mat").is_file():
        return read_cars_annos(root, name)
    return read_cars_devkit(root, name, allow_unlabelled_test)
