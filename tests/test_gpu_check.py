"""`benchmarks/gpu_check.py --device cpu --quick`: the GPU check's every step runs, at toy sizes, and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

from conftest import ROOT


def test_gpu_check_quick_on_cpu_writes_every_section(tmp_path, parity_dir):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "gpu_check.json"
    rc = gpu_check.main(["--device", "cpu", "--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert rc == 0 and result["parity"]["failed"] == 0 and result["parity"]["passed"] > 0
    assert result["versions"]["torch"] and result["quick"] is True
    fb = result["vggm_forward_backward"]
    assert fb["fp32_images_per_s"] > 0 and fb["tf32_images_per_s"] > 0
    for name in ("vggm_epoch", "vgg16_epoch"):
        epoch = result[name]
        assert epoch["end_to_end_images_per_s"] > 0 and epoch["model_only_images_per_s"] > 0 and epoch["eval_images_per_s"] > 0
        assert epoch["end_to_end_over_model_only"] == epoch["end_to_end_images_per_s"] / epoch["model_only_images_per_s"]
        # the steady-state figures: the first epoch, the epoch boundary's fixed cost, the checkpoint apart
        assert math.isfinite(epoch["first_epoch_seconds"]) and epoch["checkpoint_seconds"] > 0 and epoch["epochs"] == 2  # first epoch less paired model-only steps: noise can make a tiny net's negative
        assert math.isfinite(epoch["per_epoch_fixed_seconds"]) and math.isfinite(epoch["fixed_share_of_epoch_without_checkpoint"])
    assert result["projection"]["table1"]["runs"] == 44 and result["projection"]["table1"]["hours"] > 0
    assert result["projection"]["table2"]["hours"] > 0
