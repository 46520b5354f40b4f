"""Dataset readers: CUB (a tiny tree written here, and a synthetic one), Stanford Cars (real devkit files, written cars_annos.mat)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from cqd_port.data.cars import read_cars
from cqd_port.data.cub import read_cub
from cqd_port.data.records import DatasetIndex, ImageRecord, map_box_to_resized
from cqd_port.matlab import matlab_round
from cqd_port.errors import CqdError


def write_cub_tree(root: Path, boxes: list[tuple[float, float, float, float]] | None = None) -> Path:
    """A 4-image, 2-class CUB-200-2011 tree (index files + 1-byte placeholder images)."""
    paths = ["001.Black_footed_Albatross/a_1.jpg", "001.Black_footed_Albatross/a_2.jpg",
             "002.Laysan_Albatross/b_1.jpg", "002.Laysan_Albatross/b_2.jpg"]  # fmt: skip
    boxes = boxes or [(60.0, 27.0, 325.0, 304.0), (138.5, 30.0, 153.0, 264.0), (14.0, 112.0, 388.0, 186.0), (1.0, 1.0, 10.0, 10.0)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "images.txt").write_text("".join(f"{i + 1} {p}\n" for i, p in enumerate(paths)))
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n4 2\n")
    (root / "train_test_split.txt").write_text("1 1\n2 0\n3 0\n4 1\n")
    (root / "bounding_boxes.txt").write_text("".join(f"{i + 1} {x} {y} {w} {h}\n" for i, (x, y, w, h) in enumerate(boxes)))
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    for p in paths:
        (root / "images" / p).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / p).write_bytes(b"x")
    return root


def test_cub_reader_labels_split_and_boxes(tmp_path):
    index = read_cub(write_cub_tree(tmp_path / "CUB_200_2011"))
    assert index.num_classes == 2
    assert index.class_names == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    assert [r.path for r in index.records][0] == "images/001.Black_footed_Albatross/a_1.jpg"
    assert [r.label for r in index.records] == [0, 0, 1, 1]
    assert [r.train for r in index.records] == [True, False, False, True]
    assert [r.image_id for r in index.records] == [1, 2, 3, 4]
    # round([x y x+w-1 y+h-1]) as the MATLAB code read them, halves away from zero:
    # 138.5 -> 139 and 138.5 + 153 - 1 = 290.5 -> 291 (Python's round would give 138 and 290).
    assert index.records[0].box == (60, 27, 384, 330)
    assert index.records[1].box == (139, 30, 291, 293)
    assert len(index.train_records()) == 2 and len(index.test_records()) == 2
    index.check_images_exist()
    assert index.resolve(index.records[2]) == tmp_path / "CUB_200_2011" / "images/002.Laysan_Albatross/b_1.jpg"


def test_matlab_round_is_half_away_from_zero():
    assert [matlab_round(v) for v in (0.5, 1.5, 2.5, -0.5, -2.5, 2.4999)] == [1, 2, 3, -1, -3, 2]
    # Python's round would give 2 for 2.5: a box edge at x + w - 1 = 12.5 must become 13 as in MATLAB.
    assert matlab_round(12.5) == 13


@pytest.mark.parametrize(
    "name, content, expect",
    [
        ("bounding_boxes.txt", "1 60 27 325\n", "bounding_boxes.txt:1"),
        ("image_class_labels.txt", "1 1\n2 one\n", "image_class_labels.txt:2"),
        ("image_class_labels.txt", "1 1\n2 1\n3 2\n4 7\n", "outside 1..2"),
        ("train_test_split.txt", "1 1\n2 0\n3 0\n", "no entry for image id 4"),
    ],
)
def test_cub_garbled_files_name_file_and_line(tmp_path, name, content, expect):
    root = write_cub_tree(tmp_path / "cub")
    (root / name).write_text(content)
    with pytest.raises(CqdError, match=expect.replace(".", r"\.")) as err:
        read_cub(root)
    assert "\n" not in str(err.value)


def test_cub_missing_index_file(tmp_path):
    root = write_cub_tree(tmp_path / "cub")
    (root / "classes.txt").unlink()
    with pytest.raises(CqdError, match="classes.txt"):
        read_cub(root)
    with pytest.raises(CqdError, match="does not exist"):
        read_cub(tmp_path / "nowhere")


def test_cub_path_escaping_the_root_is_refused(tmp_path):
    root = write_cub_tree(tmp_path / "cub")
    (root / "images.txt").write_text("1 ../../etc/passwd\n2 a\n3 b\n4 c\n")
    with pytest.raises(CqdError, match="escapes the dataset root"):
        read_cub(root)


def test_resolve_refuses_absolute_and_parent_paths(tmp_path):
    index = DatasetIndex(tmp_path, "x", ["a"], [])
    for bad in ("/etc/passwd", "../x.jpg", "images/../../x.jpg", ""):
        with pytest.raises(CqdError, match="escapes"):
            index.resolve(ImageRecord(bad, 0, None, True, 1))
    assert index.resolve("images/a.jpg") == tmp_path / "images" / "a.jpg"


def test_missing_images_are_reported_together(tmp_path):
    root = write_cub_tree(tmp_path / "cub")
    index = read_cub(root)
    for r in index.records[1:]:
        index.resolve(r).unlink()
    with pytest.raises(CqdError) as err:
        index.check_images_exist()
    message = str(err.value)
    assert message.startswith("3 of 4 images")
    assert "a_2.jpg" in message and "b_1.jpg" in message and "b_2.jpg" in message
    assert "--data-root" in message and "\n" not in message


def test_map_box_to_resized_follows_imresize_pixel_centres():
    # The whole image maps to the whole output; a half-width box maps to half the output.
    assert map_box_to_resized((1, 1, 400, 300), (300, 400), (224, 224)) == (1, 1, 224, 224)
    assert map_box_to_resized((1, 1, 200, 300), (300, 400), (224, 224)) == (1, 1, 112, 224)
    assert map_box_to_resized((201, 151, 400, 300), (300, 400), (224, 224)) == (113, 113, 224, 224)


# ---------------------------------------------------------------- Stanford Cars


def test_cars_real_devkit_train_annotations(cars_devkit_dir):
    index = read_cars(cars_devkit_dir, allow_unlabelled_test=True)
    assert index.num_classes == 196
    assert index.class_names[0] == "AM General Hummer SUV 2000"
    assert len(index.records) == 8144 and all(r.train for r in index.records)
    first = index.records[0]
    assert first.path == "cars_train/00001.jpg"
    assert first.box == (39, 116, 569, 375)  # the devkit's bbox_x1..y2 (uint8/uint16 in the file)
    assert first.label == 13  # class 14, 0-based
    assert {r.label for r in index.records} == set(range(196))
    assert all(r.box[0] <= r.box[2] and r.box[1] <= r.box[3] for r in index.records)
    # no images are shipped with the annotations: reported together, with the count
    with pytest.raises(CqdError, match="8144 of 8144 images"):
        index.check_images_exist()


def test_cars_devkit_without_test_labels_is_a_clear_error(cars_devkit_dir):
    with pytest.raises(CqdError, match="cars_test_annos_withlabels.mat") as err:
        read_cars(cars_devkit_dir)
    assert "\n" not in str(err.value)


def _struct_array(rows: list[dict]) -> np.ndarray:
    keys = list(rows[0])
    array = np.zeros((1, len(rows)), dtype=[(k, object) for k in keys])
    for i, row in enumerate(rows):
        for k in keys:
            array[0, i][k] = row[k]
    return array


def test_cars_devkit_with_labelled_test_annotations(tmp_path):
    devkit = tmp_path / "cars" / "devkit"
    devkit.mkdir(parents=True)
    names = np.array([np.array(["Car A 2012"]), np.array(["Car B 2010"])], dtype=object).reshape(1, 2)
    scipy.io.savemat(devkit / "cars_meta.mat", {"class_names": names})
    ann = lambda f, c: {"bbox_x1": np.uint8(3), "bbox_y1": np.uint8(4), "bbox_x2": np.uint16(300), "bbox_y2": np.uint16(200), "class": np.uint8(c), "fname": f}  # noqa: E731
    scipy.io.savemat(devkit / "cars_train_annos.mat", {"annotations": _struct_array([ann("00001.jpg", 1), ann("00002.jpg", 2)])})
    scipy.io.savemat(devkit / "cars_test_annos_withlabels.mat", {"annotations": _struct_array([ann("00001.jpg", 2)])})
    index = read_cars(tmp_path / "cars")
    assert [r.path for r in index.records] == ["cars_train/00001.jpg", "cars_train/00002.jpg", "cars_test/00001.jpg"]
    assert [r.label for r in index.records] == [0, 1, 1]
    assert [r.train for r in index.records] == [True, True, False]
    assert [r.image_id for r in index.records] == [1, 2, 3]
    assert index.records[2].box == (3, 4, 300, 200)


def write_cars_annos(root: Path) -> Path:
    """The `cars_annos.mat` distribution, as the original code read it (3 images, 2 classes)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [
        {"relative_im_path": "car_ims/000001.jpg", "bbox_x1": 112, "bbox_y1": 7, "bbox_x2": 853, "bbox_y2": 717, "class": 1, "test": 0},
        {"relative_im_path": "car_ims/000002.jpg", "bbox_x1": 48, "bbox_y1": 24, "bbox_x2": 441, "bbox_y2": 202, "class": 2, "test": 1},
        {"relative_im_path": "car_ims/000003.jpg", "bbox_x1": 7, "bbox_y1": 4, "bbox_x2": 277, "bbox_y2": 180, "class": 2, "test": 0},
    ]
    names = np.array([np.array(["AM General Hummer SUV 2000"]), np.array(["Acura RL Sedan 2012"])], dtype=object).reshape(1, 2)
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": _struct_array(rows), "class_names": names})
    return root


def test_cars_annos_mat_reader(tmp_path):
    index = read_cars(write_cars_annos(tmp_path / "stanford_cars"))
    assert index.class_names == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]
    assert [r.path for r in index.records] == ["car_ims/000001.jpg", "car_ims/000002.jpg", "car_ims/000003.jpg"]
    assert [r.label for r in index.records] == [0, 1, 1]
    assert [r.train for r in index.records] == [True, False, True]
    assert index.records[1].box == (48, 24, 441, 202)


def test_cars_annos_bad_class_and_missing_files(tmp_path):
    root = write_cars_annos(tmp_path / "c")
    data = scipy.io.loadmat(root / "cars_annos.mat")
    data["annotations"][0, 2]["class"] = np.array([[9]])
    scipy.io.savemat(root / "cars_annos.mat", {k: v for k, v in data.items() if not k.startswith("__")})
    with pytest.raises(CqdError, match=r"annotation 3 has class 9 outside 1\.\.2"):
        read_cars(root)
    (root / "cars_annos.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(CqdError, match="cars_annos.mat"):
        read_cars(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CqdError, match="no Stanford Cars annotations"):
        read_cars(empty)
