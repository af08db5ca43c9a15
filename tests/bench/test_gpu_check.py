"""bench/gpu_check.sh: the dry run (every part at tiny sizes on the CPU) and the part runner."""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

from dit3d_jax.train.step import cpu_has_fast_bf16

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = gpu_check
spec.loader.exec_module(gpu_check)

PART_NAMES = ["gpu_tests", "train_dit_s2", "train_dit3d_b32", "sample_dit_xl2"]


def test_dry_run_runs_every_part_and_writes_json_and_table(tmp_path):
    out = tmp_path / "check"
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    # The part timeouts guard a GPU's 10 minutes; here a CPU shared with other jobs may be slow.
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out",
                           str(out), "--timeout-scale", "3"], capture_output=True, text=True,
                          env=env, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "gpu_check.json").read_text())
    assert record["dry_run"] is True and list(record["parts"]) == PART_NAMES
    assert all(part["status"] == "ok" for part in record["parts"].values())
    # On the CPU the cuDNN tests are collected and skipped, not silently dropped.
    assert re.fullmatch(r"\d+ skipped in [\d.]+s", record["parts"]["gpu_tests"]["summary"])

    def runs(part):
        return [(r["framework"], r["precision"], r["case"].get("freeze"))
                for r in record["parts"][part]["results"]]

    jax_auto = ("bfloat16" if cpu_has_fast_bf16() else "float32") + " xla"  # --dtype auto
    assert runs("train_dit_s2") == [("jax", jax_auto, "none"), ("torch", "fp32", "none")]
    assert runs("train_dit3d_b32") == [("jax", jax_auto, "backbone"),
                                       ("torch", "fp32", "backbone")]
    assert [r[:2] for r in runs("sample_dit_xl2")] == [("jax", jax_auto), ("torch", "fp32")]
    for part in PART_NAMES[1:]:
        for r in record["parts"][part]["results"]:
            assert r["timing"]["median_s"] > 0
            assert r.get("finite", True) and math.isfinite(r.get("loss", 0.0))
    table = (out / "gpu_check.md").read_text()
    assert all(f"| {name}" in table for name in PART_NAMES)
    assert "(dry run: n/a)" in table and "DiT-XL/2 (depth 1)" in table
    log = (out / "gpu_check.log").read_text()
    assert all(f"== {name} (timeout" in log for name in PART_NAMES)


def test_a_part_over_its_timeout_is_stopped_with_its_children(tmp_path):
    log_path = tmp_path / "log"
    with open(log_path, "w") as log:
        status, _, output, seconds = gpu_check.run_part(
            ["sh", "-c", "sleep 60 & echo child $!; wait"], dict(os.environ), 2.0, log)
    assert status == "timeout" and seconds < 30
    child = Path(f"/proc/{int(output.split()[1])}")
    try:  # gone, a dead zombie, or its pid already reused by another program (a busy machine)
        alive = (child / "stat").read_text().split()[2] != "Z"
        still_our_sleep = (child / "cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"60"]
    except (FileNotFoundError, ProcessLookupError):
        alive = still_our_sleep = False
    assert not (alive and still_our_sleep)
    assert "child" in log_path.read_text()


def test_results_survive_a_bench_stopped_before_its_json():
    line = gpu_check.RESULT_MARK + json.dumps({"framework": "jax", "timing": {"median_s": 0.5}})
    record = gpu_check.results_from("-- case: JAX …\n" + line + "\n", "/nonexistent.json")
    assert record["partial"] and record["results"][0]["timing"]["median_s"] == 0.5


def test_goal_verdicts():
    parts = {p.name: p for p in gpu_check.PARTS}
    jax_row = {"framework": "jax"}
    assert gpu_check.verdict(parts["train_dit_s2"], jax_row, 0.0279, False).endswith(": met")
    assert gpu_check.verdict(parts["train_dit_s2"], jax_row, 0.0281, False).endswith("NOT met")
    assert gpu_check.verdict(parts["train_dit3d_b32"], {**jax_row, "mfu": 0.41}, 0.1,
                             False).endswith(": met")
    assert gpu_check.verdict(parts["sample_dit_xl2"], jax_row, 2.1, False).endswith("NOT met")
    assert gpu_check.verdict(parts["sample_dit_xl2"], {"framework": "torch"}, 1.0, False) == ""
