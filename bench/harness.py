"""The benchmark harness both benches share: timing and the matmul peak, the bench cases (the
model of a case, its label), one measurement per subprocess, the command line, the machine and
the output table. What is counted lives beside it: FLOPs in flops.py, memory in memory.py.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_DIM = 384  # MiniLM: the caption width of every video case


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def time_calls(call: Callable[[], Any], steps: int, warmup: int,
               sync: Callable[[Any], Any] = lambda out: out) -> dict:
    """Runs `call` warmup + steps times, synchronising each result with `sync` (e.g.
    jax.block_until_ready, or a CUDA synchronise); returns per-call seconds: median, min, max,
    mean and the list."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps/warmup: expected steps >= 1 and warmup >= 0, got {steps}/{warmup}")
    for _ in range(warmup):
        sync(call())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "mean_s": statistics.fmean(times), "times_s": times}


def matmul_peak(dtype: str = "float32", n: Optional[int] = None, reps: int = 10) -> dict:
    """FLOP/s of one n×n×n matmul in JAX on the default device: the best of `reps` timed calls
    (a ceiling: the fastest the device did this work in this run; the median is kept too).

    n defaults to 8192 on accelerators and 1024 on CPU. dtype: "float32" or "bfloat16"."""
    import jax
    import jax.numpy as jnp

    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype: expected 'float32' or 'bfloat16', got {dtype!r}")
    n = n or (1024 if jax.default_backend() == "cpu" else 8192)
    dt = jnp.dtype(dtype)
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dt)
    b = jax.random.normal(kb, (n, n), dt)
    # float32 results: how the models ask for bf16 products (models.layers.linear), and on
    # XLA:CPU the only bf16 dot on its AVX512-BF16 kernels (bf16 results run at float32 speed).
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    timing = time_calls(lambda: f(a, b), steps=reps, warmup=2, sync=jax.block_until_ready)
    return {"dtype": dtype, "n": n, "flops_per_s": 2 * n ** 3 / timing["min_s"],
            "median_flops_per_s": 2 * n ** 3 / timing["median_s"]}


# ---------------------------------------------------------------------------------------------
# Cases: the model a case measures
# ---------------------------------------------------------------------------------------------

def build_model(case: dict, dtype: Optional[str] = None):
    """The dit3d_jax module of a case: case["model"] at case["size"], with its depth, frames (a
    video model then takes TEXT_DIM-d captions), attention kernel, scan and remat; computing
    in `dtype` ("float32" | "bfloat16"; None: the module's float32)."""
    from dit3d_jax.models import get_model
    kwargs = dict(input_size=case["size"], attn_impl=case["attn_impl"],
                  scan_blocks=case.get("scan", False), remat=case.get("remat", "none"))
    if dtype is not None:
        import jax.numpy as jnp
        kwargs["dtype"] = jnp.dtype(dtype)
    if case.get("depth"):
        kwargs["depth"] = case["depth"]
    if case["frames"]:
        kwargs.update(num_frames=case["frames"], text_dim=TEXT_DIM)
    return get_model(case["model"], **kwargs)


def case_label(case: dict, extra: str = "") -> str:
    """"DiT3D-S/2 16×32²×4 b8" + extra: a case's variant, example shape (frames × size² ×
    channels) and batch; `extra` says what else the bench's rows differ in."""
    from dit3d_jax.models import variant_name
    model = build_model(case)
    *frames, size, _, channels = model.input_spec.shape
    shape = "".join(f"{f}×" for f in frames) + f"{size}²×{channels}"
    return f"{variant_name(model)} {shape} b{case['batch']}{extra}"


def channels_first(model, batch: int) -> tuple[int, ...]:
    """x of `batch` examples in PyTorch's layout: (B, F, C, H, W) or (B, C, H, W)."""
    *front, h, w, c = model.input_spec.batch_shape(batch)
    return (*front, c, h, w)


def peak_worker(case: dict) -> dict:
    """The "peak" worker: backend, device and the matmul peak of each dtype
    (case["peak_n"]: the matmul size, default `matmul_peak`'s)."""
    import jax
    out = {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
           "device_count": jax.device_count()}
    for dtype in ("float32", "bfloat16"):
        out[dtype] = matmul_peak(dtype, n=case.get("peak_n"))
    return out


# ---------------------------------------------------------------------------------------------
# Machine and output
# ---------------------------------------------------------------------------------------------

def torch_setup(mode: str):
    """Seeds torch, sets TF32 for a "tf32…" mode; -> the device (CUDA when present, else CPU)."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = mode.startswith("tf32")
    torch.backends.cudnn.allow_tf32 = mode.startswith("tf32")
    torch.manual_seed(0)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def machine() -> dict:
    """CPU model, core count, accelerator and library versions."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_cores": os.cpu_count(), "cpu_model": platform.processor() or "unknown"}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    for mod in ("jax", "jaxlib", "flax", "optax", "torch"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info


def gib(n: Optional[float]) -> str:
    return "n/a" if n is None else f"{n / 2 ** 30:.2f} GiB"


def fmt(value, spec: str = ".1f", none: str = "—") -> str:
    return none if value is None else format(value, spec)


def print_table(header: Sequence[str], rows: Iterable[Sequence[str]], title: str = "") -> str:
    """Prints a Markdown table (also readable on a terminal) and returns its text."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    text = "\n".join(([f"\n{title}\n"] if title else [])
                     + [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows])
    print(text, flush=True)
    return text


def write_json(path: str, record: dict) -> None:
    """Writes `record` to `path` (indented; folders made; non-JSON values as str) and says so."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, default=str)
    print(f"wrote {path}", flush=True)


def finish(args, info: dict, peaks: dict, results: list[dict], table: str) -> int:
    """Writes the run (machine, matmul peaks, flags, results, table) to --json when given;
    returns the exit status: 1 when any case failed."""
    if args.json:
        write_json(args.json, {"machine": info, "matmul_peak": peaks, "args": vars(args),
                               "results": results, "table": table})
    return 0 if all("error" not in r for r in results) else 1


# ---------------------------------------------------------------------------------------------
# One measurement per subprocess (clean device-memory peaks; JAX and PyTorch never share a GPU)
# ---------------------------------------------------------------------------------------------

RESULT_MARK = "BENCH_RESULT "
# PyTorch's OpenMP threads spin while they wait; on a CPU shared with other work that turns a
# 0.2 s step into 1-5 s. Passive waiting removes the pathology (JAX's own pool does not spin).
TORCH_CPU_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


_CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "hits",
                 "/jax/compilation_cache/cache_misses": "misses"}


def use_compile_cache(args) -> None:
    """--compile-cache for driver and workers: the driver hands its choice to the workers through
    the environment; a worker turns the cache on (dit3d_jax.utils.compile_cache) and counts its
    hits and misses, which `emit_result` reports (a hit makes "compile s" a load time)."""
    from dit3d_jax.utils import compile_cache
    if not args.worker:
        if args.compile_cache:
            os.environ[compile_cache.ENV_VAR] = args.compile_cache
        return
    import jax

    def count(event: str, **_) -> None:
        if event in _CACHE_EVENTS:
            _cache_stats[_CACHE_EVENTS[event]] += 1

    _cache_stats["dir"] = compile_cache.enable()
    jax.monitoring.register_event_listener(count)


_cache_stats = {"dir": None, "hits": 0, "misses": 0}


def compile_note(run: dict) -> str:
    """The "compile s" cell: seconds, marked "(cache)" when the persistent cache served any of
    the worker's compilations."""
    text = fmt(run.get("compile_s"), ".1f")
    return text + (" (cache)" if run.get("compile_cache", {}).get("hits") else "")


def emit_result(result: dict) -> None:
    """The worker side: print the result, with the compilation cache's statistics, as one marked
    JSON line on stdout."""
    print(RESULT_MARK + json.dumps({**result, "compile_cache": dict(_cache_stats)}, default=str),
          flush=True)


def serve_worker(args, workers: dict) -> bool:
    """In a --worker process: runs workers[--worker] on the --case JSON with the compilation
    cache on and prints its result (`emit_result`); True. In the driver: hands --compile-cache
    on to the workers; False."""
    use_compile_cache(args)
    if not args.worker:
        return False
    emit_result(workers[args.worker](json.loads(args.case)))
    return True


def worker_pythonpath() -> str:
    """PYTHONPATH for a bench subprocess: the repository and tests/ (the PyTorch references)
    ahead of the caller's own."""
    return os.pathsep.join([REPO, os.path.join(REPO, "tests"), os.environ.get("PYTHONPATH", "")])


def run_worker(script: str, args: Sequence[str], timeout: Optional[float] = None,
               env: Optional[dict] = None) -> dict:
    """Runs `python script args…` in a fresh process (extra environment `env`) and returns its
    marked JSON result, or {"error": …} with the tail of its output when it failed."""
    cmd = [sys.executable, script, *args]
    env = dict(os.environ, **(env or {}), PYTHONPATH=worker_pythonpath())
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    return {"error": f"exit {proc.returncode}: " + " / ".join(tail)}


# ---------------------------------------------------------------------------------------------
# The command line both benches share
# ---------------------------------------------------------------------------------------------

def bench_parser(doc: str, workers: Iterable[str]):
    """argparse parser with the flags both benches take (model case, precision, PyTorch, JSON,
    and the hidden --worker/--case of the per-case subprocesses); callers add their own."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="one case: DiT-S/2, DiT3D-S/2, DiT-XL/2, ... (default: the suite)")
    p.add_argument("--frames", type=int, help="frames (DiT3D; 0 for an image DiT)")
    p.add_argument("--size", type=int, help="latent height = width (32 for 256² images)")
    p.add_argument("--depth", type=int, help="override the variant's depth (--small: 2)")
    p.add_argument("--text-len", type=int, help="caption tokens (default 32, --small 8)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="JAX compute dtype (auto: bfloat16 on GPU/TPU and AVX512-BF16 CPUs, "
                        "else float32)")
    p.add_argument("--attn-impl", default="auto", choices=["auto", "xla", "cudnn"],
                   help="auto: cudnn on GPU in bf16, else xla")
    p.add_argument("--small", action="store_true", help="tiny CPU sizes")
    p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the PyTorch baseline")
    p.add_argument("--compile", action="store_true", help="add a torch.compile PyTorch mode")
    p.add_argument("--torch-modes", help="comma-separated PyTorch modes instead of the default "
                                         "(fp32,tf32 on CUDA,bf16-autocast[,…+compile])")
    p.add_argument("--json", help="write every result here")
    from dit3d_jax.utils import compile_cache
    compile_cache.add_flag(p)
    p.add_argument("--worker", choices=sorted(workers), help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    return p


def probe_machine(script: str) -> Optional[tuple[dict, dict]]:
    """(machine info, matmul peaks from a worker subprocess of `script`), printed as a banner;
    or None after printing why the peak probe failed."""
    info = machine()
    peaks = run_worker(script, ["--worker", "peak", "--case", json.dumps({})])
    if "error" in peaks:
        print(f"matmul peak probe failed: {peaks['error']}", file=sys.stderr)
        return None
    print(f"{info['cpu_model']} ({info['cpu_cores']} cores) · JAX {info['jax']} on "
          f"{peaks['backend']} ({peaks['device']}) · torch {info['torch']}", flush=True)
    return info, peaks


def start(script: str, parser, args, resolve_cases: Callable) -> Optional[tuple[dict, dict, list]]:
    """Probes the machine (banner printed) and resolves the cases for its backend:
    (info, peaks, cases), or None when the probe failed; bad case flags exit via parser.error."""
    probed = probe_machine(script)
    if probed is None:
        return None
    info, peaks = probed
    try:
        return info, peaks, resolve_cases(args, peaks["backend"])
    except ValueError as err:
        parser.error(str(err))


def model_frames(args) -> tuple[bool, int]:
    """(video, frames) of the --model case: --frames, else 16 for a DiT3D (4 with --small) and 0
    for an image DiT; a DiT3D needs ≥ 1 frame and an image DiT exactly 0 (ValueError)."""
    video = args.model.startswith("DiT3D")
    frames = args.frames if args.frames is not None else ((4 if args.small else 16)
                                                          if video else 0)
    if video and frames < 1:
        raise ValueError(f"--frames: {args.model} needs a positive frame count, got {frames}")
    if not video and frames:
        raise ValueError(f"--frames: {args.model} is an image model; expected 0, got {frames}")
    return video, frames


def resolve_precision(args, backend: str) -> tuple[str, str]:
    """(JAX compute dtype, attention kernel) for --dtype/--attn-impl on `backend`: "auto" is
    the trainer's rule (`dit3d_jax.train.step.compute_dtype`: bfloat16 on accelerators and on
    CPUs with AVX512-BF16, else float32), and the models' own "auto" attention rule."""
    import numpy as np
    from dit3d_jax.models.layers import resolve_attn_impl
    from dit3d_jax.train.step import compute_dtype
    dtype = np.dtype(compute_dtype(args.dtype, backend)).name
    return dtype, resolve_attn_impl(args.attn_impl, dtype, backend)


def torch_modes(args, on_gpu: bool, jax_dtype: str) -> list[str]:
    """The PyTorch baseline's modes for this run: fp32, tf32 (CUDA) and bf16 autocast, plus
    torch.compile of the mode matching JAX's dtype with --compile; none with --no-torch."""
    if not args.torch:
        return []
    if args.torch_modes:
        return args.torch_modes.split(",")
    modes = ["fp32", "tf32", "bf16-autocast"] if on_gpu else ["fp32", "bf16-autocast"]
    if args.compile:
        modes.append(("bf16-autocast" if jax_dtype == "bfloat16" else "fp32") + "+compile")
    return modes


def flops_unit(peaks: dict) -> tuple[float, str]:
    """(scale, unit) for FLOP rates on this machine: TFLOP/s on accelerators, else GFLOP/s."""
    return (1e12, "TFLOP/s") if peaks["float32"]["flops_per_s"] > 1e12 else (1e9, "GFLOP/s")


def run_case(script: str, case: dict, label: str, torch_modes: Iterable[str],
             on_gpu: bool) -> list[dict]:
    """Raw worker results for one case: JAX first, then each PyTorch mode (own subprocesses).
    With $DIT3D_BENCH_ECHO set, each result is also printed as it arrives (a marked JSON line,
    for bench/gpu_check.py: results survive a run stopped before the bench writes --json)."""
    def echo(run: dict) -> dict:
        if os.environ.get("DIT3D_BENCH_ECHO"):
            print(RESULT_MARK + json.dumps({**run, "case": case, "label": label}, default=str),
                  flush=True)
        return run

    print(f"-- {label}: JAX …", flush=True)
    runs = [echo(run_worker(script, ["--worker", "jax", "--case", json.dumps(case)]))]
    for mode in torch_modes:
        print(f"-- {label}: PyTorch {mode} …", flush=True)
        runs.append(echo(run_worker(script, ["--worker", "torch", "--case",
                                             json.dumps({**case, "torch_mode": mode})],
                                    env=None if on_gpu else TORCH_CPU_ENV)))
    return runs
