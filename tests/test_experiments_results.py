"""results.json (schema, atomic writing), the Markdown table, the paper's transcribed numbers."""

from __future__ import annotations

import json
import re

import pytest

from cqd_port.errors import CqdError
from cqd_port.experiments.paper import paper_table
from cqd_port.experiments.results import Cell, load_results, markdown_table, validate_results, write_results

ROW_TO_METHOD = {
    "Upper bound": "upper_bound",
    "No adaptation": "no_adaptation",
    "Fine-tuning": "fine_tuning",
    "Data augmentation": "data_augmentation",
    "Staged training": "staged",
    "CQD": "cqd",
}


def test_paper_table1_matches_shared_readme(paper_dir):
    text = (paper_dir / "README.md").read_text()
    table = paper_table(1)
    rows = 0
    for line in text.splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if cols and cols[0] in ROW_TO_METHOD and len(cols) == 10:
            method = ROW_TO_METHOD[cols[0]]
            assert [table.value(t, method) for t in table.tasks] == [float(v) for v in cols[3:]]
            rows += 1
    assert rows == 6


def test_paper_table2_matches_shared_readme(paper_dir):
    text = (paper_dir / "README.md").read_text()
    table = paper_table(2)
    found = re.findall(r"^\| (vgg-\w+) → (vgg-\w+) \| ([\d.-]+) \| ([\d.-]+) \| ([\d.-]+) \|", text, re.M)
    names = {("vgg-m", "vgg-m"): "vggm_vggm", ("vgg-vd", "vgg-m"): "vgg16_vggm", ("vgg-vd", "vgg-vd"): "vgg16_vgg16"}
    assert len(found) == 3
    for f, g, *values in found:
        task = names[(f, g)]
        expected = [None if v == "-" else float(v) for v in values]
        assert [table.value(task, m) for m in ("upper_bound", "fine_tuning", "cqd")] == expected


def test_write_and_read_results(tmp_path):
    cells = [Cell("res_cub", "cqd", 61.0, 64.4), Cell("res_cub", "fine_tuning", None, 61.0), Cell("res_cub", "a_cqd", 50.0, None)]
    json_path, md_path = write_results(tmp_path, 1, True, cells)
    obj = json.loads(json_path.read_text())
    assert obj == {
        "table": 1,
        "synthetic": True,
        "cells": [
            {"task": "res_cub", "method": "cqd", "accuracy": 61.0, "paper": 64.4},
            {"task": "res_cub", "method": "fine_tuning", "accuracy": None, "paper": 61.0},
            {"task": "res_cub", "method": "a_cqd", "accuracy": 50.0, "paper": None},
        ],
    }
    assert load_results(json_path) == obj
    md = md_path.read_text()
    assert "SYNTHETIC" in md
    assert "| CQD | CQD | B | **61.0** / 64.4 (-3.4) |" in md
    assert "| Fine-tuning | B | B | pending / 61.0 |" in md
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_markdown_made_from_file_shapes_like_paper(tmp_path):
    cells = [Cell(t, m, 50.0, paper_table(2).value(t, m)) for t in paper_table(2).tasks for m in paper_table(2).methods]
    json_path, _ = write_results(tmp_path, 2, False, cells)
    md = markdown_table(load_results(json_path))
    assert "| f -> g | A -> A | B -> B | CQD -> B |" in md
    assert "| vgg-vd -> vgg-m | **50.0** | **50.0** | **50.0** / 64.6 (-14.6) |" in md
    assert "SYNTHETIC" not in md


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"table": 1, "synthetic": False}, "expected the keys"),
        ({"table": 4, "synthetic": False, "cells": []}, "'table'"),
        ({"table": 1, "synthetic": "no", "cells": []}, "'synthetic'"),
        ({"table": 1, "synthetic": False, "cells": [{"task": "x", "method": "cqd", "accuracy": 1, "paper": None}]}, "unknown task"),
        ({"table": 2, "synthetic": False, "cells": [{"task": "vggm_vggm", "method": "staged", "accuracy": 1, "paper": None}]}, "unknown method"),
        ({"table": 1, "synthetic": False, "cells": [{"task": "res_cub", "method": "cqd", "accuracy": 0.9 * 200, "paper": None}]}, "percentage"),
        ({"table": 1, "synthetic": False, "cells": [{"task": "res_cub", "method": "cqd", "accuracy": 1.0}]}, "must have the keys"),
        ({"table": 1, "synthetic": False, "cells": [{"task": "res_cub", "method": "cqd", "accuracy": 1.0, "paper": None, "values": {"0": 120}}]}, "values"),
    ],
)
def test_schema_violations(obj, message):
    with pytest.raises(CqdError, match=message):
        validate_results(obj)


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"table": 1, "synthetic": False, "settings": {"a": [1]}, "cells": []}, "'settings'"),
        ({"table": 1, "synthetic": False, "cells": [{"task": "res_cub", "method": "cqd", "accuracy": 1.0, "paper": None, "notes": "x"}]}, "'notes'"),
        ({"table": 1, "synthetic": False, "extra": 1, "cells": []}, "the keys"),
    ],
)
def test_settings_and_notes_schema(obj, message):
    with pytest.raises(CqdError, match=message):
        validate_results(obj)


def test_corrupt_results_file(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(CqdError, match="not valid JSON"):
        load_results(tmp_path / "results.json")


def test_differences_from_rounded_numbers_and_a_cqd_note(tmp_path):
    """34.24 vs 29.46 shows 34.2 / 29.5 (+4.7), never a difference that disagrees with the numbers shown;
    the a_cqd note only comes with an a_cqd row."""
    json_path, _ = write_results(tmp_path, 1, True, [Cell("res_cub", "cqd", 34.24, 29.46)])
    md = markdown_table(load_results(json_path))
    assert "**34.2** / 29.5 (+4.7)" in md
    assert "a_cqd" not in md
    json_path, _ = write_results(tmp_path, 1, True, [Cell("res_cub", "a_cqd", 50.0, None)])
    assert "a_cqd row has no paper number" in markdown_table(load_results(json_path))
    assert "CPU demo" not in markdown_table(load_results(json_path))  # synthetic numbers need not come from the demo


def test_seeds_mean_std_and_paired_difference(tmp_path):
    from cqd_port.experiments.collect import paired_difference

    cqd = {0: 60.0, 1: 62.0, 2: 61.0}
    ft = {0: 58.0, 1: 59.0, 2: 60.0}
    d = paired_difference(cqd, ft)
    assert d["n"] == 3 and d["mean"] == pytest.approx(2.0)
    # differences 2, 3, 1: sd 1, t(0.975, 2) = 4.3027 -> half width 4.3027 / sqrt(3)
    assert d["high"] - d["mean"] == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-5)
    assert paired_difference({0: 1.0}, {1: 2.0})["n"] == 0 and paired_difference({0: 3.0}, {0: 1.0})["low"] is None
    cells = [Cell("res_cub", "cqd", 61.0, 64.4, cqd, 1.0), Cell("res_cub", "fine_tuning", 59.0, 61.0, ft, 1.0)]
    extra = {"seeds": [0, 1, 2], "differences": [{"task": "res_cub", **d}], "selection": []}
    json_path, md_path = write_results(tmp_path, 1, False, cells, extra)
    results = load_results(json_path)
    assert results["cells"][0]["values"] == {"0": 60.0, "1": 62.0, "2": 61.0}
    md = md_path.read_text()
    assert "**61.0 ± 1.0** (n=3) / 64.4 (-3.4)" in md
    assert "+2.0 [-0.5, +4.5], n=3" in md
def test_notes_become_numbered_footnotes_and_settings_are_recorded(tmp_path):
    lowres = "low resolution: bilinear (the user's specification)"
    a_cqd = "A-CQD: from the A model (the paper's text)"
    cells = [
        Cell("res_cub", "cqd", 61.0, 64.4, notes=(lowres,)),
        Cell("res_cub", "a_cqd", 62.0, None, notes=(lowres, a_cqd)),
        Cell("local_cub", "cqd", 60.0, 64.4),
    ]
    settings = {"lowres_kernel": "bilinear", "a_cqd_start": "a_model"}
    json_path, md_path = write_results(tmp_path, 1, False, cells, settings=settings)
    results = load_results(json_path)
    assert results["settings"] == settings
    assert results["cells"][1]["notes"] == [lowres, a_cqd] and "notes" not in results["cells"][2]
    md = md_path.read_text()
    assert "**61.0** / 64.4 (-3.4) [1]" in md and "**62.0** [1][2]" in md
    assert f"[1] {lowres}" in md and f"[2] {a_cqd}" in md
    assert "lowres_kernel = bilinear" in md
