"""prepare: every degradation on a small synthetic dataset, source rule, resume, failures, CLI."""

from __future__ import annotations

import gzip
import json
import shutil

import cv2
import numpy as np
import pytest

from cqd_port.data.batches import read_image_rgb
from cqd_port.data.cub import read_cub
from cqd_port.data.degrade import DEGRADATIONS, DegradationConfig, crop_to_box, degrade
from cqd_port.data.prepare import image_seed, output_dir, prepare_dataset, read_prepared
from cqd_port.data.synth import make_synthetic_dataset
from cqd_port.errors import CqdError

# The paper's pixel parameters scaled from 224 to 64 output pixels, to keep the tests fast.
SMALL = DegradationConfig(out_size=64, lowres_size=14, distortion_grid_start=2, distortion_grid_step=5, distortion_sigma=1.2)


@pytest.fixture(scope="module")
def birds(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "birds", classes=3, train_per_class=2, test_per_class=1, size=64, seed=2)


@pytest.fixture(scope="module")
def sed_model(tmp_path_factory):
    from test_edges import tiny_model_text  # helper D's tiny, valid SED forest

    path = tmp_path_factory.mktemp("sed") / "model.yml.gz"
    path.write_bytes(gzip.compress(tiny_model_text().encode()))
    return path


def _jpeg_q75_bytes(image_rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 75])
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("name", list(DEGRADATIONS))
def test_every_degradation(birds, sed_model, shared_dir, tmp_path, name):
    models = {"edges": shared_dir / "release-parity" / "sed" / "sed_model_synth.mat", "edges_opencv": sed_model}
    config = SMALL if name not in models else DegradationConfig(**{**SMALL.as_dict(), "sed_model": str(models[name])})
    target = prepare_dataset("cub", name, birds, tmp_path, workers=0, config=config, progress=False)
    assert target == tmp_path / "cub" / name
    source = read_cub(birds)
    prepared = read_prepared(target)
    assert [r.path for r in prepared.records] == [r.path for r in source.records]
    assert [(r.label, r.train, r.image_id) for r in prepared.records] == [(r.label, r.train, r.image_id) for r in source.records]
    assert prepared.class_names == source.class_names
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["synthetic"] is True and manifest["degradation"] == name
    assert manifest["counts"] == {"images": 9, "train": 6, "test": 3, "classes": 3}
    assert manifest["parameters"]["out_size"] == 64 and manifest["jpeg_quality"] == 75
    crops = name in ("lowres", "edges", "edges_opencv", "edges_sobel", "distorted", "gray", "localized", "localized_lowres")
    box_first = ("lowres", "edges", "edges_opencv", "edges_sobel", "distorted", "gray")
    assert manifest["source"] == ("box" if name in box_first else "full")
    for src, out in zip(source.records, prepared.records):
        written = cv2.imread(str(prepared.resolve(out)))
        assert written.shape == (64, 64, 3)
        if crops:
            assert out.box == (1, 1, 64, 64)
        else:
            assert out.box != (1, 1, 64, 64) and 1 <= out.box[0] < out.box[2] <= 64
    # The file is exactly degrade() of the (cropped) source, JPEG quality 75, with the path-derived seed.
    record = source.records[4]
    image = read_image_rgb(source.resolve(record))
    box = record.box
    if manifest["source"] == "box":
        image = crop_to_box(image, record.box)
        box = (1, 1, image.shape[1], image.shape[0])
    expected = degrade(name, image, box, config, image_seed(config.seed, record.path))
    assert prepared.resolve(record).read_bytes() == _jpeg_q75_bytes(expected)


def test_default_output_is_224_jpeg_quality_75(tmp_path):
    data = make_synthetic_dataset(tmp_path / "d", classes=2, train_per_class=1, test_per_class=0, size=96)
    target = prepare_dataset("cub", "localized", data, tmp_path / "out", progress=False)
    files = sorted(target.rglob("*.jpg"))
    assert len(files) == 2
    for path in files:
        raw = path.read_bytes()
        assert cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR).shape == (224, 224, 3)
        # First luminance quantisation value of libjpeg's standard table at quality 75 is 8 (16 * 50 / 100).
        dqt = raw.index(b"\xff\xdb")
        assert raw[dqt + 4] == 0 and raw[dqt + 5] == 8


def test_source_override_and_box_mapping(birds, tmp_path):
    target = prepare_dataset("cub", "lowres", birds, tmp_path, source="full", config=SMALL, progress=False)
    assert target.name == "lowres-full" and target == output_dir(tmp_path, "cub", "lowres", "full")
    prepared = read_prepared(target)
    assert json.loads((target / "manifest.json").read_text())["source"] == "full"
    source = read_cub(birds)
    for src, out in zip(source.records, prepared.records):
        w = cv2.imread(str(source.resolve(src))).shape[1]
        # x scales by 64 / w, y by 64 / 64: the box moves with the resize of the whole image
        assert abs(out.box[0] - ((src.box[0] - 0.5) * 64 / w + 0.5)) <= 0.5 + 1e-9
        assert out.box[1] == src.box[1] and out.box[3] == src.box[3]
    # the default source gives no suffix; --source box is refused for the degradations that crop themselves
    assert output_dir(tmp_path, "cub", "lowres", "box").name == "lowres"
    assert output_dir(tmp_path, "cars", "lowres", "box").name == "lowres-box"
    assert output_dir(tmp_path, "cub", "lowres", None, "bicubic").name == "lowres-bicubic"
    assert output_dir(tmp_path, "cub", "lowres", None, "bilinear").name == "lowres"
    assert output_dir(tmp_path, "cub", "edges", None, "bicubic").name == "edges"  # the kernel is a low-res setting only
    with pytest.raises(CqdError, match="crops to the box itself"):
        prepare_dataset("cub", "localized", birds, tmp_path, source="box", config=SMALL, progress=False)
    with pytest.raises(CqdError, match="--degradation 'blur'"):
        prepare_dataset("cub", "blur", birds, tmp_path, config=SMALL, progress=False)


def test_cars_start_from_the_full_image(tmp_path):
    data = make_synthetic_dataset(tmp_path / "cars", style="cars", classes=2, train_per_class=1, test_per_class=1, size=64)
    target = prepare_dataset("cars", "edges_sobel", data, tmp_path / "out", config=SMALL, progress=False)
    assert target == tmp_path / "out" / "cars" / "edges_sobel"
    prepared = read_prepared(target)
    assert json.loads((target / "manifest.json").read_text())["source"] == "full"
    assert all(r.box != (1, 1, 64, 64) for r in prepared.records)


def test_resume_skips_finished_files_and_redoes_deleted_ones(birds, tmp_path):
    target = prepare_dataset("cub", "distorted", birds, tmp_path, config=SMALL, progress=False)
    files = sorted(p for p in target.rglob("*.jpg"))
    assert len(files) == 9
    original = {p: p.read_bytes() for p in files}
    files[0].unlink()
    files[1].write_bytes(b"marker: a finished file is never rewritten")
    (target / "manifest.json").unlink()
    prepare_dataset("cub", "distorted", birds, tmp_path, config=SMALL, progress=False)
    assert files[0].read_bytes() == original[files[0]]  # redone, identically (seed from the path)
    assert files[1].read_bytes().startswith(b"marker")  # skipped
    assert (target / "manifest.json").is_file()
    # different settings into the same folder are refused, not mixed
    with pytest.raises(CqdError, match="different settings"):
        prepare_dataset("cub", "distorted", birds, tmp_path, config=DegradationConfig(**{**SMALL.as_dict(), "seed": 9}), progress=False)


def test_parallel_workers_give_the_same_files(birds, tmp_path):
    serial = prepare_dataset("cub", "distorted", birds, tmp_path / "a", workers=0, config=SMALL, progress=False)
    parallel = prepare_dataset("cub", "distorted", birds, tmp_path / "b", workers=2, config=SMALL, progress=False)
    a = {p.relative_to(serial): p.read_bytes() for p in serial.rglob("*.jpg")}
    b = {p.relative_to(parallel): p.read_bytes() for p in parallel.rglob("*.jpg")}
    assert a == b and len(a) == 9
    assert len(set(a.values())) == 9


def test_image_seed_depends_on_seed_and_path_only():
    assert image_seed(0, "images/a.jpg") == image_seed(0, "images/a.jpg")
    assert len({image_seed(0, "images/a.jpg"), image_seed(1, "images/a.jpg"), image_seed(0, "images/b.jpg")}) == 3
    assert 0 <= image_seed(123, "x") < 2**32


def test_unreadable_image_exit_2_and_nothing_half_written(birds, tmp_path, cli):
    data = tmp_path / "data"
    shutil.copytree(birds, data)
    index = read_cub(data)
    bad = index.resolve(index.records[3])
    bad.write_bytes(b"\xff\xd8 this is not really a jpeg")
    result = cli("prepare", "--dataset", "cub", "--degradation", "gray", "--data-root", data, "--out", tmp_path / "out", "--workers", "2", "--no-progress")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: 1 images could not be prepared") and result.stderr.count("\n") == 1
    assert index.records[3].path in result.stderr
    target = tmp_path / "out" / "cub" / "gray"
    assert not (target / "manifest.json").exists()
    written = [p for p in target.rglob("*") if p.is_file() and p.suffix == ".jpg"]
    assert len(written) == 8  # every other image finished and kept
    assert not [p for p in target.rglob("*") if ".tmp" in p.name]
    for path in written:
        assert cv2.imread(str(path)).shape == (224, 224, 3)
    # a missing image is reported before any work, together with the others
    bad.unlink()
    index.resolve(index.records[5]).unlink()
    result = cli("prepare", "--dataset", "cub", "--degradation", "gray", "--data-root", data, "--out", tmp_path / "out2")
    assert result.exit_code == 2 and result.stderr.startswith("error: 2 of 9 images")


def test_cli_prepare_prints_paths_and_says_synthetic(birds, tmp_path, cli):
    result = cli("prepare", "--dataset", "cub", "--degradation", "lowres", "--data-root", birds, "--out", tmp_path,
                 "--source", "full", "--lowres-kernel", "bicubic", "--seed", "3", "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    target = tmp_path / "cub" / "lowres-bicubic-full"  # its own folder: never mixed with the bilinear default
    assert str(target) in result.stdout and "SYNTHETIC" in result.stdout
    parameters = json.loads((target / "manifest.json").read_text())["parameters"]
    assert parameters["lowres_kernel"] == "bicubic" and parameters["seed"] == 3 and parameters["out_size"] == 224
    result = cli("prepare", "--dataset", "cub", "--degradation", "edges", "--data-root", birds, "--out", tmp_path)
    assert result.exit_code == 2 and "--sed-model" in result.stderr


def test_read_prepared_errors(tmp_path):
    with pytest.raises(CqdError, match="run `cqd-port prepare`"):
        read_prepared(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CqdError, match="corrupt"):
        read_prepared(tmp_path)


def test_distorted_box_follows_the_aspect_keeping_resize_and_top_left_canvas():
    from dataclasses import replace

    from cqd_port.data.prepare import _output_box

    # 100 x 200 image -> 64 x 128 (shorter side 64); the release's canvas is its top-left 64 x 64
    assert _output_box((1, 1, 200, 100), (100, 200), False, 64, "distorted", SMALL) == (1, 1, 64, 64)
    assert _output_box((1, 1, 50, 100), (100, 200), False, 64, "distorted", SMALL) == (1, 1, 32, 64)
    assert _output_box((101, 1, 200, 100), (100, 200), False, 64, "distorted", SMALL) is None  # right of the canvas
    # placement="center" (not the release): the central window starts at x = 33
    centred = replace(SMALL, distortion_placement="center")
    assert _output_box((101, 1, 200, 100), (100, 200), False, 64, "distorted", centred) == (33, 1, 64, 64)
    assert _output_box((1, 1, 50, 100), (100, 200), False, 64, "distorted", centred) is None
    # every other degradation resizes the whole image (aspect not kept)
    assert _output_box((101, 1, 200, 100), (100, 200), False, 64, "lowres", SMALL) == (33, 1, 64, 64)
    assert _output_box((1, 1, 50, 100), (100, 200), False, 64, "lowres", SMALL) == (1, 1, 16, 64)


def test_prepare_on_a_full_disk_gives_the_disk_full_line(birds, tmp_path, monkeypatch, cli):
    """ENOSPC while an image is written: the one-line disk-full error every other writer gives, no temporary left."""
    import errno

    from cqd_port import fileio

    real = fileio.Path.write_bytes

    def full(self, data):
        if self.suffix == ".jpg":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(fileio.Path, "write_bytes", full)
    result = cli("prepare", "--dataset", "cub", "--degradation", "gray", "--data-root", birds, "--out", tmp_path / "out", "--workers", "0", "--no-progress")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert ": disk full: writing it needs" in result.stderr and "free some space" in result.stderr
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp" in p.name]


def test_resumed_prepare_removes_a_killed_run_s_half_written_images(birds, tmp_path):
    import subprocess
    import sys

    from cqd_port import fileio

    target = prepare_dataset("cub", "gray", birds, tmp_path, config=SMALL, progress=False)
    first = sorted(target.rglob("*.jpg"))[0]
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a writer that is dead
    leftover = first.parent / f".{first.name}.{child.pid}@{fileio._host()}.abcd1234.tmp.jpg"
    leftover.write_bytes(b"half an image")
    first.unlink()
    (target / "manifest.json").unlink()  # the killed run had not finished
    prepare_dataset("cub", "gray", birds, tmp_path, config=SMALL, progress=False)
    assert first.is_file() and not leftover.exists()
    assert not [p for p in target.rglob("*") if ".tmp" in p.name]
    # a finished folder too: a rerun that has nothing to redo still clears a dead writer's file
    stray = target / f".manifest.json.{child.pid}@{fileio._host()}.zyxw9876.tmp.json"
    stray.write_text("{")
    prepare_dataset("cub", "gray", birds, tmp_path, config=SMALL, progress=False)
    assert not stray.exists()
