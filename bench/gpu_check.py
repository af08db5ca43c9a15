"""The GPU check: one command to run first on a machine with a GPU.

    bash bench/gpu_check.sh                      # one H100/H200, real sizes, < 10 minutes
    bash bench/gpu_check.sh --dry-run            # the same parts at tiny sizes on the CPU
    bash bench/gpu_check.sh --out DIR --only train_dit3d_b32,sample_dit_xl2

Runs, in order, each part in its own process group under its own timeout (a part that runs
over is stopped and reported; the next one starts):
  1. gpu_tests       the model tests on the GPU (cuDNN/bf16 paths included): pytest tests/models
                     with the backend unpinned and full-precision float32 matmuls;
  2. train_dit_s2    train step DiT-S/2, 32²×4, batch 256 (goal ≤ 28 ms/step) beside PyTorch;
  3. train_dit3d_b32 train step DiT3D-S/2, 16×32²×4, batch 32, frozen backbone and not, with peak
                     memory (goal ≥ 40% MFU) beside PyTorch;
  4. sample_dit_xl2  DiT-XL/2 256², 250 DDPM steps, CFG, batch 8 (goal ≤ 2.0 s) beside PyTorch.
Writes DIR/gpu_check.json (machine, every part's command, status, seconds and results),
DIR/gpu_check.md (one table) and DIR/gpu_check.log (every part's output). DIR: --out, else $OUT
(set by the device tool), else runs/gpu_check. Exit status 1 when any part failed.
--dry-run pins JAX to the CPU, compiles with XLA's optimisations off and shrinks every case
(depth 1, 8² latents, a few steps, PyTorch fp32 only, the frozen DiT3D case only); the test
suite runs it (tests/bench/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
from harness import (RESULT_MARK, compile_note, fmt, gib, print_table,  # noqa: E402
                     worker_pythonpath)

# What the parts import: checked (not imported) before anything runs.
NEEDED = ["jax", "flax", "optax", "orbax.checkpoint", "ml_collections", "absl", "einops",
          "numpy", "torch", "pytest"]
VERSIONS = ["jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml_collections", "torch",
            "numpy"]


@dataclasses.dataclass(frozen=True)
class Part:
    """One part: its command (real sizes / dry run), timeout in seconds, and its goal: the text
    and `meets(jax result, median s)`, whether a JAX row reaches it."""
    name: str
    argv: list
    dry_argv: list
    timeout: float
    dry_timeout: float
    goal: str = ""
    meets: Optional[Callable[[dict, float], bool]] = None


# PyTorch's best mode on a GPU is bf16 autocast (anchors: DiT-S/2 b256 95 ms vs 155 ms tf32);
# tf32 only where it is cheap, so that the whole check fits in 10 minutes.
TORCH_GPU = ["--torch-modes", "bf16-autocast"]
TORCH_DRY = ["--torch-modes", "fp32"]
TINY = ["--depth", "1", "--size", "8"]
PARTS = [
    Part("gpu_tests",
         ["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/models",
          "--ignore=tests/models/test_text.py"],   # needs the MiniLM weights package
         ["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
          "tests/models/test_attention_gpu.py"],
         timeout=90, dry_timeout=60),
    Part("train_dit_s2",
         ["bench/train_step.py", "--model", "DiT-S/2", "--batch", "256", "--steps", "30",
          "--warmup", "5", "--torch-modes", "tf32,bf16-autocast"],
         ["bench/train_step.py", "--model", "DiT-S/2", "--batch", "2", *TINY, "--steps", "2",
          "--warmup", "1", *TORCH_DRY],
         timeout=120, dry_timeout=120, goal="≤ 28 ms/step",
         meets=lambda result, median: 1e3 * median <= 28.0),
    Part("train_dit3d_b32",
         ["bench/train_step.py", "--model", "DiT3D-S/2", "--batch", "32",
          "--freeze", "none,backbone", "--steps", "20", "--warmup", "5", *TORCH_GPU],
         ["bench/train_step.py", "--model", "DiT3D-S/2", "--batch", "1", "--frames", "2",
          *TINY, "--text-len", "4", "--freeze", "backbone", "--steps", "2", "--warmup", "1",
          *TORCH_DRY],
         timeout=190, dry_timeout=150, goal="≥ 40% MFU",
         meets=lambda result, median: (result.get("mfu") or 0.0) >= 0.40),
    Part("sample_dit_xl2",
         ["bench/sample.py", "--model", "DiT-XL/2", "--batch", "8", "--repeats", "2",
          "--warmup", "1", *TORCH_GPU],
         ["bench/sample.py", "--model", "DiT-XL/2", "--batch", "1", *TINY, "--sample-steps", "3",
          "--repeats", "1", "--warmup", "0", *TORCH_DRY],
         timeout=160, dry_timeout=120, goal="≤ 2.0 s",
         meets=lambda result, median: median <= 2.0),
]


def out_dir(args) -> str:
    return os.path.abspath(args.out or os.environ.get("OUT") or os.path.join(REPO, "runs",
                                                                               "gpu_check"))


def preflight() -> dict:
    """Machine, library versions and the modules the parts need (found or missing)."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "executable": sys.executable, "cpu_cores": os.cpu_count()}
    for name in VERSIONS:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = None
    info["missing"] = [m for m in NEEDED if not _found(m)]
    try:
        info["gpus"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                      timeout=30).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        info["gpus"] = []
    return info


def _found(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def run_part(cmd: list, env: dict, timeout: float, log) -> tuple[str, int, str, float]:
    """Runs cmd in its own process group, streaming its output to `log`; on timeout the whole
    group (the bench's workers too) is killed. -> (status, exit code, output, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=REPO, start_new_session=True)
    lines: list[str] = []
    timer = _Deadline(proc, timeout)
    for line in proc.stdout:
        lines.append(line)
        log.write(line)
        log.flush()
    code = proc.wait()
    timer.cancel()
    status = "timeout" if timer.fired else ("ok" if code == 0 else "failed")
    return status, code, "".join(lines), time.perf_counter() - start


class _Deadline:
    """Kills a process group after `timeout` seconds unless cancelled."""

    def __init__(self, proc, timeout: float):
        import threading
        self.fired = False
        self._proc = proc
        self._timer = threading.Timer(timeout, self._kill)
        self._timer.daemon = True
        self._timer.start()

    def _kill(self):
        self.fired = True
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def cancel(self):
        self._timer.cancel()


def bench_rows(part: Part, record: dict, dry: bool) -> list[list[str]]:
    """Table rows of a bench part: one per framework/mode and case."""
    rows = []
    for r in record.get("results", []):
        label = r.get("label", "?")
        if "error" in r:
            rows.append([part.name, label, r.get("framework", "?"), "", "error: "
                         + r["error"][:100], "", "", "", "", ""])
            continue
        median = r["timing"]["median_s"]
        train = "ms_per_step" in r or part.name.startswith("train")
        time_cell = f"{1e3 * median:.1f} ms/step" if train else f"{median:.2f} s"
        mfu = r.get("mfu")
        rows.append([part.name, label, r["framework"], r["precision"], time_cell,
                     fmt(mfu and 100 * mfu, ".1f") + ("%" if mfu else ""),
                     gib(r.get("peak_bytes")), compile_note(r),
                     fmt(r.get("jax_speedup"), ".2f") + ("×" if r.get("jax_speedup") else ""),
                     verdict(part, r, median, dry)])
    return rows


def verdict(part: Part, result: dict, median: float, dry: bool) -> str:
    """The goal and whether this JAX row meets it ("" for PyTorch rows)."""
    if result["framework"] != "jax" or part.meets is None:
        return ""
    if dry:
        return f"{part.goal} (dry run: n/a)"
    return f"{part.goal}: {'met' if part.meets(result, median) else 'NOT met'}"


def results_from(output: str, json_path: str) -> dict:
    """The bench's --json, or (a part stopped early) the results it echoed as they came."""
    if os.path.isfile(json_path):
        with open(json_path) as f:
            return json.load(f)
    echoed = [json.loads(line[len(RESULT_MARK):]) for line in output.splitlines()
              if line.startswith(RESULT_MARK)]
    return {"results": echoed, "partial": True}


def pytest_summary(output: str) -> str:
    """'12 passed, 1 skipped in 40.2s' from pytest's last line, or ''."""
    found = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|errors?|deselected)\b.*? in "
                       r"[\d.]+s.*?)\s*=*$", output, re.M)
    return found[-1] if found else ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[1:]))
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--out", help="output folder (default: $OUT, else runs/gpu_check)")
    p.add_argument("--only", help="comma-separated part names (default: all, in order)")
    p.add_argument("--timeout-scale", type=float, default=1.0,
                   help="multiply every part's timeout (e.g. 1.5 on a slower GPU)")
    args = p.parse_args(argv)
    names = [part.name for part in PARTS]
    chosen = args.only.split(",") if args.only else names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        p.error(f"--only: unknown part(s) {', '.join(unknown)}; expected some of "
                f"{', '.join(names)}")

    out = out_dir(args)
    os.makedirs(out, exist_ok=True)
    info = preflight()
    env = dict(os.environ, PYTHONUNBUFFERED="1", DIT3D_BENCH_ECHO="1",
               PYTHONPATH=worker_pythonpath())
    if args.dry_run:  # plumbing, not speed: XLA's cheapest CPU compiles (-40% CPU time)
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(
            [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0",
             "--xla_llvm_disable_expensive_passes=true"]).strip())
    else:  # unpin the backend for the tests (tests/conftest.py pins the CPU by default)
        env.update(JAX_PLATFORMS="cuda", JAX_DEFAULT_MATMUL_PRECISION="highest")
    print(f"gpu_check{' (dry run)' if args.dry_run else ''}: {', '.join(chosen)} -> {out}",
          flush=True)
    if info["missing"]:
        print(f"missing Python modules: {', '.join(info['missing'])} (see docs/performance.md, "
              f"'The GPU check')", flush=True)

    record = {"dry_run": args.dry_run, "machine": info, "parts": {}}
    rows, start = [], time.perf_counter()
    with open(os.path.join(out, "gpu_check.log"), "w") as log, \
            tempfile.TemporaryDirectory() as tmp:
        for part in PARTS:
            if part.name not in chosen:
                continue
            argv = list(part.dry_argv if args.dry_run else part.argv)
            bench = argv[0].startswith("bench/")
            json_path = os.path.join(tmp, part.name + ".json")
            if bench:
                argv += ["--json", json_path]
            cmd = [sys.executable, *argv]
            timeout = (part.dry_timeout if args.dry_run else part.timeout) * args.timeout_scale
            part_env = env if not bench else {k: v for k, v in env.items()
                                              if k != "JAX_DEFAULT_MATMUL_PRECISION"}
            if bench and not args.dry_run:
                part_env.pop("JAX_PLATFORMS")  # the benches pick the GPU themselves
                # one worker at a time holds the GPU: let JAX use 90% of it (DiT3D b32 keeps
                # 50.5 GiB of activations; the default 75% of an 80 GB H100 is 60 GB)
                part_env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
            banner = f"== {part.name} (timeout {timeout:.0f} s): {' '.join(cmd)}"
            print(banner, flush=True)
            log.write(banner + "\n")
            status, code, output, seconds = run_part(cmd, part_env, timeout, log)
            print(f"== {part.name}: {status} in {seconds:.1f} s", flush=True)
            entry = {"command": " ".join(argv), "status": status, "exit_code": code,
                     "seconds": seconds, "timeout_s": timeout}
            if bench:
                entry.update(results_from(output, json_path))
                part_rows = bench_rows(part, entry, args.dry_run)
                rows += part_rows or [[part.name, "", "", "", status, "", "", "", "", ""]]
            else:
                entry["summary"] = pytest_summary(output)
                rows.append([part.name, entry["summary"] or "no pytest summary", "", "",
                             status, "", "", "", "", ""])
            record["parts"][part.name] = entry
    record["seconds"] = time.perf_counter() - start

    table = print_table(["part", "case", "framework", "precision", "time", "MFU", "peak memory",
                         "compile s", "JAX speedup", "goal"], rows,
                        title=f"GPU check{' (dry run, CPU)' if args.dry_run else ''}: "
                              f"{record['seconds']:.0f} s; train = median ms/step, sampling = "
                              f"median s per run; JAX speedup = PyTorch time ÷ JAX time")
    record["table"] = table
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(record, f, indent=2, default=str)
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write(table.lstrip() + "\n")
    print(f"wrote {out}/gpu_check.json, gpu_check.md, gpu_check.log", flush=True)
    return 0 if all(e["status"] == "ok" for e in record["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
