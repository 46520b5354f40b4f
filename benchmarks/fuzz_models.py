"""The larger model-file fuzz set (issue 17): counts of tracebacks, crashes, hangs per corruption class.

    .venv/bin/python benchmarks/fuzz_models.py [--python PYTHON] [--numeric N] [--depths 5000,100000,300000]

Writes corrupted copies of every file in ../shared/real-models to a temporary
folder (`tests/model_corruptions.py`), runs `inspect` and `convert-weights`
(and loads each converted checkpoint) on each with PYTHON (default: this
one; pass another checkout's venv python to count its behaviour on the same
set), and prints one row per class plus the cases that went wrong. Not part
of `make bench` (it measures robustness, not speed); CI runs a small set
(tests/test_weights_model_fuzz.py).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from model_corruptions import classify, corrupt_models, run_cases  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--numeric", type=int, default=40, help="numeric-field corruptions per file")
    parser.add_argument("--depths", default="5000,100000,300000")
    parser.add_argument("--truncations", type=int, default=6)
    parser.add_argument("--shared", default=os.environ.get("CQD_SHARED", str(ROOT.parent / "shared")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cases"
        folder.mkdir()
        cases = corrupt_models(Path(args.shared) / "real-models", folder, numeric_per_file=args.numeric,
                               depths=tuple(int(d) for d in args.depths.split(",")), truncations_per_file=args.truncations)
        outcomes = run_cases(args.python, cases, Path(tmp) / "out")
    per_case: dict[Path, set[str]] = collections.defaultdict(set)
    for outcome in outcomes:
        per_case[outcome.case.path].add(classify(outcome))
    kinds = sorted({c.kind for c in cases})
    labels = ("traceback", "crash", "hang", "unusable", "bad-exit", "accepted, must refuse")
    print(f"{len(cases)} corrupted files, python {args.python}")
    print(f"{'class':<10} {'files':>5} " + " ".join(f"{label:>10}" for label in labels))
    problems = []
    for kind in kinds:
        row = collections.Counter()
        members = [c for c in cases if c.kind == kind]
        for case in members:
            got = per_case[case.path]
            for label in labels[:5]:
                row[label] += label in got
            accepted = not (got & {"refused", "traceback", "crash", "hang", "bad-exit"})
            if case.must_refuse and accepted:
                row["accepted, must refuse"] += 1
                problems.append((case, "accepted, must refuse", ""))
        print(f"{kind:<10} {len(members):>5} " + " ".join(f"{row[label]:>10}" for label in labels))
    for outcome in outcomes:
        label = classify(outcome)
        if label not in ("ok", "refused"):
            problems.append((outcome.case, f"{outcome.command}: {label}", outcome.stderr.strip().splitlines()[-1:] or [""]))
    for case, label, detail in problems[:80]:
        print(f"  {case.what} [{case.path.name}]: {label} {detail[0][:160] if detail else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
