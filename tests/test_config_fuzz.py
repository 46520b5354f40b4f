"""Config fuzz (issue 17): bad `cqd-port train` configs end in one line and exit 2, never a traceback, hang or stray write.

Each generated config is valid but for one defect (wrong type, negative, huge
or non-finite value, path escape, alias bomb, duplicate key, unknown key,
non-mapping root, binary garbage). It goes through the real CLI entry
in-process (`run_cli`), under an alarm (a hang fails the case), from a
working folder three levels below the tmp root so that a `../../../x` path
escape would land beside it: after all cases nothing but the tmp root's own
entries may exist there. A few cases run as a subprocess (the console script
as a user starts it).
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_custom_data import make_image_folder

BLUR = "cqd_port.plugins.blur:gaussian_blur"
CASE_TIMEOUT_S = 20


def _base(root: Path, images: Path) -> dict:
    return {
        "method": "B",
        "out": str(root / "out"),
        "data": {"root": str(images), "size": 32, "prepared": str(root / "prepared"), "degradation": BLUR, "parameters": {"sigma": 1.5}},
        "teacher": {"arch": "mobilenet_v3_small", "weights": "random", "input_size": 32},
        "train": {"epochs": 1, "batch_size": 5, "schedule": [0.01], "device": "cpu"},
    }


def _set(config: dict, key: str, value) -> dict:
    config = copy.deepcopy(config)
    *sections, last = key.split(".")
    node = config
    for part in sections:
        node = node.setdefault(part, {})
    node[last] = value
    return config


BAD_VALUES = {
    # wrong types
    "method": [3, ["A"], {"x": 1}],
    "out": [7, ["a"]],
    "data.root": [1.5, None],
    "data.size": ["big", 1.5, True, [224]],
    "data.test_fraction": ["half", 0, 1, -0.2, float("nan")],
    "data.seed": [-1, 2**64, "abc", 1.5],
    "data.split_seed": [-1, 10**20],
    "data.workers": [-3, 10**12],
    "data.parameters": ["sigma", [1, 2]],
    "data.degradation": [5, "os:system", "builtins:eval", "no.such.module:f"],
    "data.name": ["../../../escaped", "../../escaped", "/", "..", "a/../../../escaped"],
    "teacher.arch": [5, "resnet999"],
    "teacher.weights": [5, "missing.pt"],
    "teacher.input_size": [-1, 10**9, "big"],
    "train.epochs": [0, -1, 10**20, "5", 2.5],
    "train.batch_size": [0, -5, 10**20],
    "train.schedule": ["fast", [], [-0.1], [float("nan")], [float("inf")], ["x"]],
    "train.lr_scale": [-1.0, float("inf"), float("nan")],
    "train.momentum": [-1, float("nan"), "fast"],
    "train.weight_decay": [-1, float("inf")],
    "train.temperature": [0, -10, float("nan")],
    "train.lambda": [-1, float("nan")],
    "train.seed": [-1, 10**20, 2**32, "abc", float("nan")],
    "train.optimizer": ["adam", 3],
    "train.tf32": ["yes"],
    "unknown_key": [1],
    "data.unknown_key": [1],
}

COMBINED = [  # defects that show only with another setting
    {"train.optimizer": "torch", "train.momentum": -1},
    {"train.optimizer": "torch", "train.weight_decay": -1},
    {"method": "CQD", "train.temperature": float("inf")},
    {"method": "CQD", "train.lambda": float("inf")},
    {"data.format": "cub", "data.name": "../../escaped"},
]

RAW_TEXTS = {
    "list root": "- a\n- b\n",
    "scalar root": "42\n",
    "string root": "hello\n",
    "duplicate key": "method: B\nmethod: A\n",
    "alias bomb": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
    "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
    "deep nesting": "a: " + "[" * 5000 + "]" * 5000 + "\n",
    "tab indent": "data:\n\troot: x\n",
    "unclosed": "data: {root: [x\n",
}


def _cases(root: Path, images: Path) -> list[tuple[str, bytes]]:
    base = _base(root, images)
    cases = []
    for key, values in BAD_VALUES.items():
        for value in values:
            cases.append((f"{key}={value!r}", yaml.safe_dump(_set(base, key, value)).encode()))
    for changes in COMBINED:
        config = base
        for key, value in changes.items():
            config = _set(config, key, value)
        cases.append((f"{changes}", yaml.safe_dump(config).encode()))
    for name, text in RAW_TEXTS.items():
        cases.append((name, text.encode()))
    rng = __import__("random").Random(17)
    for i in range(6):
        cases.append((f"binary garbage {i}", bytes(rng.randrange(256) for _ in range(200 + 100 * i))))
    # the alias bomb inside a plugin's parameters, where issue 17 found a MemoryError after 66 s
    bomb = yaml.safe_dump(base).replace("sigma: 1.5", "sigma: &s [1, 1, 1, 1, 1, 1, 1, 1, 1]\n    x: [*s, *s, *s, *s]")
    cases.append(("alias in data.parameters", bomb.encode()))
    return cases


class _Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Hang()


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory):
    top = tmp_path_factory.mktemp("configfuzz")
    images = make_image_folder(top / "root" / "pets", per_class=4, size=32)
    cwd = top / "root" / "w1" / "w2" / "w3"
    cwd.mkdir(parents=True)
    return top, images, cwd


def test_bad_train_configs_exit_2_with_one_line(fuzz_root, monkeypatch, cli):
    top, images, cwd = fuzz_root
    root = top / "root"
    monkeypatch.chdir(cwd)
    from cqd_port.experiments.custom import parse_config

    parse_config(_base(root, images))  # the base is valid: each case fails by its own defect only
    before = _listing(top)
    cases = _cases(root, images)
    problems, tracebacks = [], 0
    old = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        for n, (name, body) in enumerate(cases):
            path = cwd / f"case{n}.yaml"
            # each case its own out folder: a refusal to reuse another case's run must not hide a defect
            path.write_bytes(body.replace(str(root / "out").encode(), str(root / "out" / f"c{n}").encode()))
            signal.alarm(CASE_TIMEOUT_S)
            try:
                result = cli("train", path, "--no-progress")
            except _Hang:
                problems.append(f"{name}: no answer within {CASE_TIMEOUT_S} s")
                continue
            except BaseException as exc:  # noqa: BLE001 - a traceback is what this test looks for
                tracebacks += 1
                problems.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
                continue
            finally:
                signal.alarm(0)
            lines = result.stderr.strip().splitlines()
            if result.exit_code != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or "made with other settings" in lines[0]:
                problems.append(f"{name}: exit {result.exit_code}, stderr {result.stderr[-300:]!r}")
    finally:
        signal.signal(signal.SIGALRM, old)
    created = {p for p in _listing(top) - before if not p.startswith("root/w1/w2/w3/case")}
    stray = {p for p in created if not p.startswith(("root/out", "root/prepared"))}
    if os.environ.get("CQD_FUZZ_REPORT"):
        print(f"\nconfig fuzz: {len(cases)} configs, {tracebacks} tracebacks, {len(problems)} problems, {len(stray)} stray paths")
        print("\n".join(problems))
    assert not stray, f"written outside out/prepared: {sorted(stray)[:10]}"
    assert not problems, f"{len(problems)} of {len(cases)} bad configs misbehaved:\n" + "\n".join(problems)
    assert len(cases) >= 90


@pytest.mark.parametrize(
    "body, expected",
    [
        ("method: B\nmethod: A\n", "duplicate key"),
        ("- 1\n", "must be a YAML mapping"),
        ("\x00\x01\x02\xff\xfe", "cannot read"),
    ],
)
def test_a_few_bad_configs_through_the_console_script(tmp_path, body, expected):
    path = tmp_path / "bad.yaml"
    path.write_bytes(body.encode("latin-1"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(
        [sys.executable, "-c", "from cqd_port_cli.main import main; main()", "train", str(path)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, result.stderr
