"""Corrupted copies of the real MatConvNet files (../shared/real-models): issue 17's model-file classes.

NaN, Inf, strings, sparse matrices, structs, complex numbers in numeric
fields (stride, pad, pool size, numGroups, imageSize, keepAspect,
meta.inputs size, pool `method`...), wrong types, NaN or short weights,
channel counts that do not fit their producer, DagNN graphs with dangling,
nested or missing inputs, two outputs, two writers of a variable and cycles,
cells nested 5,000 and 100,000 deep, truncations. `inspect` and
`convert-weights` run on each in-process in a worker subprocess (so a
segfault or a hang is seen, not suffered), and each converted checkpoint
must load. Then a few through the console entry point. The larger set:
benchmarks/fuzz_models.py.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

from model_corruptions import classify, corrupt_models, run_cases

# the cheap files to re-save (lapsrn_x2 is the DagNN graph); the set is kept small for CI's two cores
SMALL_FILES = ("dcfnet_net-7-125-2.mat", "lapsrn_x2.mat", "player_net_stage_2.mat", "brando_textsmall_net-epoch-20.mat")
LARGE_FILES = ("dncnn_sigma25.mat", "ffdnet_gray.mat")  # v7.3: truncations only (re-saving them costs seconds)


def _listing(folder: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime) for p in folder.rglob("*")}


def test_corrupted_real_models_end_in_one_line_never_a_crash(tmp_path: Path, real_models_dir: Path) -> None:
    cases_dir, out = tmp_path / "cases", tmp_path / "out"
    cases_dir.mkdir()
    cases = corrupt_models(real_models_dir, cases_dir, numeric_per_file=8, files=SMALL_FILES, truncations_per_file=1,
                           depths=(5_000, 100_000))
    cases += corrupt_models(real_models_dir, cases_dir, files=LARGE_FILES, depths=(), kinds=("truncated",), truncations_per_file=2)
    kinds = collections.Counter(case.kind for case in cases)
    assert all(kinds[k] >= 4 for k in ("numeric", "weights", "channels", "graph", "types", "nesting", "truncated")), kinds
    before_cases, before_models = _listing(cases_dir), _listing(real_models_dir)

    outcomes = run_cases(sys.executable, cases, out)

    bad = [(o.case.what, o.command, classify(o), o.stderr.strip()[-300:]) for o in outcomes if classify(o) not in ("ok", "refused")]
    assert not bad, bad[:5]
    refused = {o.case.path for o in outcomes if o.command == "convert-weights" and classify(o) == "refused"}
    must = [case for case in cases if case.must_refuse]
    assert len(must) >= 30
    accepted = [case.what for case in must if case.path not in refused]
    assert not accepted, accepted[:10]
    for outcome in outcomes:  # every refusal names the file it refuses
        if classify(outcome) == "refused":
            assert outcome.case.path.name in outcome.stderr, outcome.stderr
    # nothing written outside the output folder, and nothing left in it
    assert _listing(cases_dir) == before_cases and _listing(real_models_dir) == before_models
    assert not [p for p in out.rglob("*")], list(out.rglob("*"))[:5]

    messages = {o.case.what: o.stderr for o in outcomes if o.command == "convert-weights"}
    cycle = next(m for w, m in messages.items() if w.endswith(": cycle"))
    assert "cycle through layers '" in cycle and not any(f"'{i}'" in cycle for i in range(30))
    assert "written by two layers" in next(m for w, m in messages.items() if w.endswith(": two writers"))
    assert "nested more than 64 deep" in next(m for w, m in messages.items() if "100000 deep (compressed)" in w)
    stride = [m for w, m in messages.items() if " stride = NaN" in w or " pad = NaN" in w]
    assert all("layer '" in m and ("'stride'" in m or "'pad'" in m) for m in stride)


def test_cli_refuses_deep_nesting_and_broken_graphs_in_one_line(tmp_path: Path, real_models_dir: Path) -> None:
    cases = corrupt_models(real_models_dir, tmp_path, files=("lapsrn_x2.mat",), kinds=("graph",), depths=(300_000,))
    deep = next(c for c in cases if c.kind == "nesting" and "compressed" in c.what)
    dangling = next(c for c in cases if c.what.endswith("dangling input"))
    convert = lambda case: ["convert-weights", str(case.path), "-o", str(tmp_path / "x.pt")]  # noqa: E731
    for case, args in ((deep, ["inspect", str(deep.path)]), (deep, convert(deep)), (dangling, convert(dangling))):
        proc = subprocess.run([sys.executable, "-m", "cqd_port_cli.main", *args], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (case.what, proc.returncode, proc.stderr[-500:])
        assert case.path.name in lines[0]
    assert not (tmp_path / "x.pt").exists()
