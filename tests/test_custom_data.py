"""Your own data: the ImageFolder reader and degradation plugins (contract, prepare)."""

from __future__ import annotations

import json
import sys
import textwrap

import cv2
import numpy as np
import pytest

from cqd_port.data.degrade import DegradationConfig, check_plugin, degrade, load_plugin
from cqd_port.data.imagefolder import read_image_folder
from cqd_port.data.prepare import image_seed, prepare_dataset, read_dataset, read_prepared
from cqd_port.errors import CqdError
from cqd_port.plugins.blur import gaussian_blur

BLUR = "cqd_port.plugins.blur:gaussian_blur"


def make_image_folder(root, classes=("cat", "dog", "owl"), per_class=4, size=32, seed=0):
    """A tiny ImageFolder dataset: per class a different colour and stripe direction, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            stripes = ((xx if label % 2 else yy) // 4 + label) % 2
            colour = np.array([(80 * label) % 256, 200 - 60 * label, 40 + 70 * label], dtype=np.float64)
            image = stripes[..., None] * colour + rng.normal(0, 20, (size, size, 3)) + 30
            image = np.clip(image, 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return root


def test_reader_classes_labels_and_seeded_stratified_split(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=5)
    index = read_image_folder(root, seed=3)
    assert index.class_names == ["cat", "dog", "owl"]
    assert [r.path for r in index.records][:2] == ["cat/000.png", "cat/001.png"]
    assert [r.label for r in index.records] == [0] * 5 + [1] * 5 + [2] * 5
    assert all(r.box is None for r in index.records)
    for label in range(3):  # round(5 * 0.3) = 2 test images per class
        assert sum(1 for r in index.test_records() if r.label == label) == 2
    assert "seeded stratified split" in index.split and "seed 3" in index.split
    again = read_image_folder(root, seed=3)
    other = read_image_folder(root, seed=4)
    assert [r.train for r in again.records] == [r.train for r in index.records]
    assert [r.train for r in other.records] != [r.train for r in index.records]


def test_reader_provided_lists_and_boxes(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2)
    (root / "train.txt").write_text("cat/000.png\ndog/000.png\nowl/000.png\n")
    (root / "test.txt").write_text("cat/001.png\nowl/001.png\n")
    (root / "boxes.txt").write_text("cat/000.png 2 3 20 30\n")
    index = read_image_folder(root)
    assert [(r.path, r.train) for r in index.records] == [
        ("cat/000.png", True), ("cat/001.png", False), ("dog/000.png", True), ("owl/000.png", True), ("owl/001.png", False)
    ]  # dog/001.png is in neither list: left out
    assert index.records[0].box == (2, 3, 20, 30) and index.records[1].box is None
    assert index.split.startswith("provided split")


@pytest.mark.parametrize(
    "files, message",
    [
        ({"train.txt": "cat/000.png\n"}, "without its partner"),
        ({"train.txt": "cat/000.png\n", "test.txt": "cat/000.png\n"}, "listed in both"),
        ({"train.txt": "cat/009.png\n", "test.txt": ""}, "cat/009.png"),
        ({"boxes.txt": "cat/000.png 1 2 3\n"}, "boxes.txt:1"),
    ],
)
def test_reader_errors_are_one_line(tmp_path, files, message):
    root = make_image_folder(tmp_path / "data", per_class=2)
    for name, text in files.items():
        (root / name).write_text(text)
    with pytest.raises(CqdError, match=message) as info:
        read_image_folder(root)
    assert "\n" not in str(info.value)


def test_reader_rejects_empty_folder(tmp_path):
    (tmp_path / "cat").mkdir()
    with pytest.raises(CqdError, match="no images"):
        read_image_folder(tmp_path)


def test_blur_plugin_is_deterministic_and_blurs():
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, 16:] = 255
    out = gaussian_blur(image, seed=5, sigma=2.0, sigma_jitter=0.5)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert 0 < out[0, 15, 0] < 255  # the edge is smeared
    assert np.array_equal(out, gaussian_blur(image, seed=5, sigma=2.0, sigma_jitter=0.5))
    assert not np.array_equal(out, gaussian_blur(image, seed=6, sigma=2.0, sigma_jitter=0.5))


def test_degrade_runs_a_plugin_after_resizing_with_its_parameters():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    config = DegradationConfig(out_size=32, plugin_params={"sigma": 1.5})
    out = degrade(BLUR, image, None, config, image_seed=7)
    expected = gaussian_blur(degrade("original", image, None, config), seed=7, sigma=1.5)
    assert np.array_equal(out, expected)


@pytest.fixture
def bad_plugins(tmp_path, monkeypatch):
    (tmp_path / "my_bad_plugins.py").write_text(textwrap.dedent("""
        import numpy as np
        def float_out(image, seed):
            return image.astype(np.float32)
        def small_out(image, seed):
            return image[::2, ::2]
        def gray_out(image, seed):
            return image[..., 0]
        def list_out(image, seed):
            return image.tolist()
        def no_seed(image):
            return image
        def good(image, seed, amount=0):
            return np.clip(image.astype(int) + amount, 0, 255).astype(np.uint8)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_bad_plugins"
    sys.modules.pop("my_bad_plugins", None)


@pytest.mark.parametrize(
    "function, message",
    [
        ("float_out", "dtype float32"),
        ("small_out", r"shape \(16, 16, 3\)"),
        ("gray_out", r"shape \(32, 32\)"),
        ("list_out", "a list"),
        ("no_seed", "cannot be called"),
        ("missing", "has no function missing"),
    ],
)
def test_plugin_contract_breaches_are_one_line_errors_naming_it(bad_plugins, function, message):
    spec = f"{bad_plugins}:{function}"
    with pytest.raises(CqdError, match=message) as info:
        check_plugin(spec, DegradationConfig(out_size=32))
    assert spec in str(info.value) and "\n" not in str(info.value)


def test_plugin_that_cannot_be_imported(bad_plugins):
    with pytest.raises(CqdError, match="cannot import no_such_package.mod"):
        load_plugin("no_such_package.mod:blur")
    with pytest.raises(CqdError, match="package.module:function"):
        load_plugin(":blur")
    with pytest.raises(CqdError, match="unexpected keyword argument .amout"):
        check_plugin(f"{bad_plugins}:good", DegradationConfig(out_size=32, plugin_params={"amout": 3}))


def test_prepare_a_plugin_into_the_prepared_store(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=3)
    config = DegradationConfig(out_size=32, plugin_params={"sigma": 1.0, "sigma_jitter": 0.5})
    target = prepare_dataset("folder", BLUR, root, tmp_path / "prepared", config=config, progress=False)
    assert target.parent.name == "folder" and target.name.startswith("cqd_port.plugins.blur.gaussian_blur-")
    prepared = read_prepared(target)
    assert [r.path for r in prepared.records] == [r.path for r in read_dataset("folder", root).records]
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["parameters"]["plugin_params"] == {"sigma": 1.0, "sigma_jitter": 0.5}
    assert "seeded stratified split" in manifest["split"] and prepared.split == manifest["split"]
    record = prepared.records[0]
    source = cv2.cvtColor(cv2.imread(str(root / record.path)), cv2.COLOR_BGR2RGB)
    expected = degrade(BLUR, source, None, config, image_seed(config.seed, record.path))
    written = cv2.cvtColor(cv2.imread(str(target / record.path)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(written, expected)  # PNG: lossless, so the file is the plugin's output
    other = prepare_dataset("folder", BLUR, root, tmp_path / "prepared", config=DegradationConfig(out_size=32, plugin_params={"sigma": 2.0}), progress=False)
    assert other != target  # other parameters, other folder


def test_prepare_refuses_a_broken_plugin_before_writing(bad_plugins, tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2)
    with pytest.raises(CqdError, match="float_out"):
        prepare_dataset("folder", f"{bad_plugins}:float_out", root, tmp_path / "prepared", config=DegradationConfig(out_size=32), progress=False)
    assert not (tmp_path / "prepared").exists()


def test_prepare_cli_folder_and_plugin(cli, tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2)
    result = cli("prepare", "--dataset", "folder", "--degradation", BLUR, "--param", "sigma=1.0", "--data-root", str(root),
                 "--out", str(tmp_path / "prepared"), "--no-progress")
    assert result.exit_code == 0, result.stderr
    target = next((tmp_path / "prepared" / "folder").iterdir())
    assert json.loads((target / "manifest.json").read_text())["parameters"]["plugin_params"] == {"sigma": 1.0}
    result = cli("prepare", "--dataset", "folder", "--degradation", "no_such_mod:blur", "--data-root", str(root), "--out", str(tmp_path / "p2"))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "no_such_mod:blur" in result.stderr


@pytest.fixture
def gate_plugins(tmp_path, monkeypatch):
    (tmp_path / "my_gate_plugins.py").write_text(textwrap.dedent("""
        import functools
        from os import system
        from subprocess import call as run_it
        import numpy as np
        def scaled(image, seed, sigma=1.0):
            return np.clip(image * float(sigma), 0, 255).astype(np.uint8)
        def needs_sigma(image, seed, sigma):
            return image
        def any_params(image, seed, **options):
            return image
        def img_first(img, seed):
            return img
        def picky(image, seed):
            if seed % 2:
                raise RuntimeError("odd seed")
            return image
        def shape_of(image, seed):
            return np.full_like(image, min(image.shape[0], 255))
        partial_scaled = functools.partial(scaled, sigma=2.0)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_gate_plugins"
    sys.modules.pop("my_gate_plugins", None)


@pytest.mark.parametrize("spec", ["os:system", "subprocess:call", "builtins:eval", "posix:system", "my_gate_plugins:system", "my_gate_plugins:run_it"])
def test_builtin_and_standard_library_callables_are_refused_before_any_call(gate_plugins, tmp_path, spec):
    marker = tmp_path / "called"
    config = DegradationConfig(out_size=32, plugin_params={"command": f"touch {marker}", "args": ["touch", str(marker)]})
    with pytest.raises(CqdError, match="standard-library|standard library") as info:
        check_plugin(spec, config)
    assert spec in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_plugin_signature_is_checked_before_the_call(gate_plugins):
    spec = f"{gate_plugins}:scaled"
    with pytest.raises(CqdError) as info:
        check_plugin(spec, DegradationConfig(out_size=32, plugin_params={"sigmaa": 2, "gain": 1}))
    message = str(info.value)
    assert "'sigmaa'" in message and "'gain'" in message and "its parameters: sigma" in message
    assert "data.parameters" in message and "--param" in message and "\n" not in message
    with pytest.raises(CqdError, match=r"needs parameter 'sigma' without a default.*data.parameters"):
        check_plugin(f"{gate_plugins}:needs_sigma", DegradationConfig(out_size=32))
    with pytest.raises(CqdError, match="first parameter must be image"):
        load_plugin(f"{gate_plugins}:img_first")
    check_plugin(f"{gate_plugins}:any_params", DegradationConfig(out_size=32, plugin_params={"whatever": 1}))  # **options takes any
    check_plugin(f"{gate_plugins}:partial_scaled", DegradationConfig(out_size=32))  # a partial of a user function is user code


def test_any_exception_inside_a_plugin_is_one_line_naming_plugin_image_and_exception(gate_plugins):
    spec = f"{gate_plugins}:scaled"
    with pytest.raises(CqdError) as info:
        check_plugin(spec, DegradationConfig(out_size=32, plugin_params={"sigma": "abc"}))
    message = str(info.value)
    assert spec in message and "the test image" in message and "ValueError" in message and "'abc'" in message
    assert "\n" not in message and "data.parameters" in message
    # on one real image, named as the caller names it (the catalog checks a plugin on the dataset's first image)
    image = np.full((40, 50, 3), 100, np.uint8)
    with pytest.raises(CqdError, match="failed on cat/0.png"):
        check_plugin(spec, DegradationConfig(out_size=32, plugin_params={"sigma": "abc"}), image, "cat/0.png")
    check_plugin(f"{gate_plugins}:shape_of", DegradationConfig(out_size=32), image, "cat/0.png")


def test_prepare_blames_a_failing_plugin_not_the_images(gate_plugins, tmp_path, cli):
    root = make_image_folder(tmp_path / "data", per_class=3)
    spec = f"{gate_plugins}:picky"
    result = cli("prepare", "--dataset", "folder", "--degradation", spec, "--data-root", root, "--out", tmp_path / "out", "--workers", "0", "--no-progress")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"degradation plugin '{spec}' failed on" in result.stderr and "RuntimeError: odd seed" in result.stderr
    assert "--param" in result.stderr and "replace or remove" not in result.stderr
