"""Shared pieces of the benchmark harness: FLOP model, timing, matmul peak, memory, output.

FLOP convention (as in PERFORMANCE_ANCHORS): 2 FLOPs per multiply-add, counting every matmul (the
Linear layers, the patch-embedding convolution) plus attention scores (Q·Kᵀ) and mixing (P·V);
elementwise work (norms, softmax, GELU, modulation) is not counted. A train step is credited with
3 × forward ("model FLOPs", the figure MFU is quoted on); `train_flops` also gives the matmul FLOPs
a step really executes, which is less when the backbone is frozen (no weight gradients there).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TEXT_LEN = 32  # data.text_max_length in dit3d_jax.train.config.default_config()


# ---------------------------------------------------------------------------------------------
# Analytic FLOP model
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Term:
    """One matmul family of a forward pass.

    flops: forward FLOPs. kind: "weight" (activation × parameter) or "attention" (activation ×
    activation: scores or mixing). new: the layer is not part of the image DiT (temporal, text).
    input_grad: a backward pass must propagate a gradient to this matmul's activation input even
    when nothing upstream of it is trainable in the image-DiT sense (False only for layers fed by
    data: the patch embedding and the timestep MLP's first layer).
    """
    name: str
    flops: int
    kind: str = "weight"
    new: bool = False
    input_grad: bool = True


def forward_terms(model, batch: int, text_len: int = DEFAULT_TEXT_LEN) -> list[Term]:
    """The forward pass of a DiT / DiT3D on `batch` samples (clips), term by term.

    Derived from the module fields: input_size, patch_size, in_channels, hidden_size, depth,
    mlp_ratio, learn_sigma; for DiT3D also num_frames, temporal_every and text_dim (with `text_len`
    caption tokens). Label embedding is a gather (0 FLOPs).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    if isinstance(text_len, bool) or not isinstance(text_len, int) or text_len < 1:
        raise ValueError(f"text_len: expected a positive int, got {text_len!r}")
    B, D, p = batch, model.hidden_size, model.patch_size
    M = int(D * model.mlp_ratio)
    N = (model.input_size // p) ** 2                      # tokens per frame
    C_out = model.in_channels * (2 if model.learn_sigma else 1)
    spec = model.input_spec
    video = spec.video
    F = spec.shape[0] if video else 1
    text = spec.text_dim > 0
    L = text_len
    rows = B * F                                          # images the spatial layers see
    mm = lambda m, k, n: 2 * m * k * n                    # (m×k)·(k×n)

    terms = [Term("patch_embed", mm(rows * N, p * p * model.in_channels, D), input_grad=False),
             Term("t_embedder.mlp_0", mm(B, 256, D), input_grad=False),
             Term("t_embedder.mlp_2", mm(B, D, D))]
    if text:
        T = spec.text_dim
        # The captions are data, but training swaps in the learned null caption (a parameter)
        # for dropped rows, so these layers pass gradients back to their inputs too.
        terms += [Term("text_proj_fc1", mm(B * L, T, D), new=True),
                  Term("text_proj_fc2", mm(B * L, D, D), new=True),
                  Term("text_pool", mm(B, T, D), new=True)]
    for i in range(model.depth):
        blk = f"blocks_{i}"
        terms += [Term(f"{blk}.adaLN_modulation_1", mm(B, D, 6 * D)),
                  Term(f"{blk}.attn.qkv", mm(rows * N, D, 3 * D)),
                  Term(f"{blk}.attn.scores", mm(rows * N, D, N), "attention"),
                  Term(f"{blk}.attn.mixing", mm(rows * N, N, D), "attention"),
                  Term(f"{blk}.attn.proj", mm(rows * N, D, D))]
        if video and i % model.temporal_every == 0:
            terms += [Term(f"{blk}.temporal_adaLN", mm(B, D, 3 * D), new=True),
                      Term(f"{blk}.temporal_attn.qkv", mm(B * N * F, D, 3 * D), new=True),
                      Term(f"{blk}.temporal_attn.scores", mm(B * N * F, D, F), "attention", True),
                      Term(f"{blk}.temporal_attn.mixing", mm(B * N * F, F, D), "attention", True),
                      Term(f"{blk}.temporal_attn.proj", mm(B * N * F, D, D), new=True)]
        if text:
            terms += [Term(f"{blk}.cross_attn.q", mm(rows * N, D, D), new=True),
                      Term(f"{blk}.cross_attn.kv", mm(B * L, D, 2 * D), new=True),
                      Term(f"{blk}.cross_attn.scores", mm(rows * N, D, L), "attention", True),
                      Term(f"{blk}.cross_attn.mixing", mm(rows * N, L, D), "attention", True),
                      Term(f"{blk}.cross_attn.proj", mm(rows * N, D, D), new=True)]
        terms += [Term(f"{blk}.mlp.fc1", mm(rows * N, D, M)),
                  Term(f"{blk}.mlp.fc2", mm(rows * N, M, D))]
    # DiT3D's head runs on the B·F frames with the conditioning repeated per frame.
    terms += [Term("final_layer.adaLN_modulation_1", mm(rows if video else B, D, 2 * D)),
              Term("final_layer.linear", mm(rows * N, D, p * p * C_out))]
    return terms


def dit_flops(model, batch: int, text_len: int = DEFAULT_TEXT_LEN) -> int:
    """Forward FLOPs of `model` on `batch` samples (clips): matmuls + attention scores/mixing."""
    return sum(term.flops for term in forward_terms(model, batch, text_len))


def train_flops(model, batch: int, text_len: int = DEFAULT_TEXT_LEN,
                freeze: str = "none") -> dict:
    """{"forward", "model" (= 3 × forward, the MFU convention), "executed"} for one train step.

    executed = forward + activation gradients (each weight matmul's input gradient costs its
    forward FLOPs, skipped where `input_grad` is False; attention needs both operand gradients,
    2 × forward) + weight gradients (forward FLOPs, trainable layers only). freeze: "none" or
    "backbone" (only the `new` layers train). With the backbone frozen the text layers still pass
    gradients into the conditioning, so the timestep MLP's second layer then needs no input grad.
    """
    if freeze not in ("none", "backbone"):
        raise ValueError(f"freeze: expected 'none' or 'backbone', got {freeze!r}")
    terms = forward_terms(model, batch, text_len)
    fwd = sum(t.flops for t in terms)
    executed = fwd
    for t in terms:
        trainable = freeze == "none" or t.new
        if t.kind == "attention":
            executed += 2 * t.flops
            continue
        needs_input_grad = t.input_grad and not (freeze == "backbone"
                                                 and t.name == "t_embedder.mlp_2")
        executed += t.flops * (int(needs_input_grad) + int(trainable))
    return {"forward": fwd, "model": 3 * fwd, "executed": executed}


def jaxpr_matmul_flops(fn: Callable, *args, **kwargs) -> int:
    """Matmul FLOPs (dot_general, convolutions) in the jaxpr of fn(*args): what the traced program
    asks XLA to compute, before XLA's own simplifications. Walks nested jaxprs (jit, remat, scan ×
    its length, custom_jvp/vjp)."""
    import jax
    import numpy as np
    from jax.extend.core import jaxprs_in_params

    def count(jaxpr, mult=1) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "dot_general":
                lhs, rhs = (v.aval.shape for v in eqn.invars)
                (_, rc), (_, rb) = eqn.params["dimension_numbers"]
                free_rhs = [s for i, s in enumerate(rhs) if i not in rc and i not in rb]
                total += mult * 2 * int(np.prod(lhs)) * int(np.prod(free_rhs, dtype=np.int64))
            elif name == "conv_general_dilated":
                out = eqn.outvars[0].aval.shape
                kernel = eqn.invars[1].aval.shape
                dn = eqn.params["dimension_numbers"]
                k_out = kernel[dn.rhs_spec[0]]
                total += mult * 2 * int(np.prod(out)) * int(np.prod(kernel)) // k_out \
                    // eqn.params["batch_group_count"]
            inner = mult * (eqn.params["length"] if name == "scan" else 1)
            for sub in jaxprs_in_params(eqn.params):
                total += count(sub, inner)
        return total

    return count(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


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
    f = jax.jit(lambda a, b: a @ b)
    timing = time_calls(lambda: f(a, b), steps=reps, warmup=2, sync=jax.block_until_ready)
    return {"dtype": dtype, "n": n, "flops_per_s": 2 * n ** 3 / timing["min_s"],
            "median_flops_per_s": 2 * n ** 3 / timing["median_s"]}


# ---------------------------------------------------------------------------------------------
# Memory, machine, output
# ---------------------------------------------------------------------------------------------

def torch_setup(mode: str):
    """Seeds torch, sets TF32 for a "tf32…" mode; -> the device (CUDA when present, else CPU)."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = mode.startswith("tf32")
    torch.backends.cudnn.allow_tf32 = mode.startswith("tf32")
    torch.manual_seed(0)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_peak_bytes() -> Optional[int]:
    """Peak bytes in use on device 0 since process start (None where the backend has no stats,
    e.g. CPU)."""
    import jax
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def compiled_memory(compiled) -> Optional[dict]:
    """XLA's static memory estimate for one call of a compiled function, in bytes: arguments,
    outputs, temporaries, aliased (outputs written into donated arguments) and their total
    arguments + outputs + temporaries − aliased; None where the backend does not implement it."""
    try:
        m = compiled.memory_analysis()
        out = {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
               "temporaries": int(m.temp_size_in_bytes), "aliased": int(m.alias_size_in_bytes)}
    except Exception:  # not every backend implements it
        return None
    out["total"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
    return out


def saved_activation_bytes(model, params, batch: int, text_len: int = DEFAULT_TEXT_LEN,
                           freeze: str = "none") -> int:
    """Bytes of activations that autodiff keeps from a batch's forward for the backward pass:
    the residuals held by `jax.vjp` of the model's summed output, with the leaves that `freeze`
    freezes behind stop_gradient as in the train step. Only the part that grows with the batch
    is counted (residuals at batch 2 minus batch 1, times `batch`), so params and per-step
    copies of them (compute-dtype kernels) are left out. Platform-independent: it counts the
    jaxpr's residuals, before XLA's fusion may recompute cheap elementwise ones; the remat policy
    and the compute dtype of `model` decide it. Traced only (jax.eval_shape), nothing runs."""
    import jax
    from dit3d_jax.train.optim import FROZEN, freeze_labels

    labels = freeze_labels(model, freeze)

    def residuals(p, x, cond):
        def forward(p, x):
            p = jax.tree_util.tree_map(
                lambda label, w: jax.lax.stop_gradient(w) if label == FROZEN else w, labels, p)
            return model.apply({"params": p}, x, **cond).sum()
        return jax.tree_util.tree_leaves(jax.vjp(forward, p, x)[1])

    def total(b: int) -> int:
        cond = model.input_spec.zeros(b, text_len)
        x = cond.pop("x")
        leaves = jax.eval_shape(residuals, params, x, cond)
        return sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)

    return (total(2) - total(1)) * batch


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


def finish(args, info: dict, peaks: dict, results: list[dict], table: str) -> int:
    """Writes the run (machine, matmul peaks, flags, results, table) to --json when given;
    returns the exit status: 1 when any case failed."""
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": info, "matmul_peak": peaks, "args": vars(args),
                       "results": results, "table": table}, f, indent=2, default=str)
        print(f"wrote {args.json}", flush=True)
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
                   help="JAX compute dtype (auto: bfloat16 on GPU/TPU, float32 on CPU)")
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
    bfloat16 on accelerators (float32 on CPU), and the models' own "auto" attention rule."""
    from dit3d_jax.models.layers import resolve_attn_impl
    dtype = args.dtype if args.dtype != "auto" else ("float32" if backend == "cpu" else "bfloat16")
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
