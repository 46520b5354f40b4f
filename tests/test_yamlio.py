"""Strict YAML: duplicate keys, anchors/aliases (alias bombs) and deep nesting refused in one line naming the line."""

from __future__ import annotations

import pytest

from cqd_port.errors import CqdError
from cqd_port.yamlio import load_yaml_file, load_yaml_text

BOMB = "\n".join(
    ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
)


def test_plain_configs_load_as_safe_load_does():
    text = "method: CQD\ndata:\n  root: pets\n  parameters: {sigma: 2.0}\ntrain:\n  schedule: [0.1, 0.01]\n  device: null\n"
    assert load_yaml_text(text) == {"method": "CQD", "data": {"root": "pets", "parameters": {"sigma": 2.0}}, "train": {"schedule": [0.1, 0.01], "device": None}}


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  epochs: 5\n  lr: 1\n  epochs: 30\n", r"run.yaml:4: duplicate key 'epochs' \(first at line 2\)"),
        ("method: A\ndata: {root: x}\nmethod: B\n", r"run.yaml:3: duplicate key 'method' \(first at line 1\)"),
        ("data:\n  parameters: {sigma: 1, sigma: 2}\n", "run.yaml:2: duplicate key 'sigma'"),
        (BOMB, "run.yaml:1: anchor &a"),
        ("base: {x: 1}\ntrain:\n  <<: *base\n", r"run.yaml:3: alias \*base"),
        ("x: " + "[" * 200 + "]" * 200 + "\n", "run.yaml:1: nested more than 64 levels"),
        ("a: [1, 2\n", r"run.yaml:2: .*fix the YAML syntax"),
        ("a: !!python/object/apply:os.system ['touch x']\n", "run.yaml:1: could not determine a constructor"),
    ],
)
def test_refusals_are_one_line_naming_the_line(text, message):
    with pytest.raises(CqdError, match=message) as info:
        load_yaml_text(text, "run.yaml")
    assert "\n" not in str(info.value)


def test_train_config_is_read_strictly(tmp_path, cli):
    """`cqd-port train`: a duplicate key and an alias bomb in data.parameters are refused before anything runs."""
    config = tmp_path / "run.yaml"
    config.write_text(f"method: CQD\nout: {tmp_path / 'run'}\ndata:\n  root: {tmp_path}\n  degradation: lowres\n  degradation: distorted\n")
    result = cli("train", str(config))
    assert result.exit_code == 2 and result.stderr == f"error: {config}:6: duplicate key 'degradation' (first at line 5); keep one of them\n"
    bomb = "\n".join("  " + line for line in BOMB.splitlines())
    config.write_text(f"method: CQD\nout: {tmp_path / 'run'}\ndata:\n  root: {tmp_path}\n  degradation: cqd_port.plugins.blur:gaussian_blur\n  parameters:\n{bomb}\n")
    result = cli("train", str(config))
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {config}:7: anchor &a") and result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_unreadable_file_is_one_line(tmp_path):
    with pytest.raises(CqdError, match="cannot read"):
        load_yaml_file(tmp_path)
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CqdError, match="cannot read"):
        load_yaml_file(tmp_path / "bin.yaml")
