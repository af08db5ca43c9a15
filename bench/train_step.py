"""Train-step throughput: the full dit3d_jax train step against a PyTorch baseline.

    .venv/bin/python bench/train_step.py --small --json runs/bench/train_small.json   # CPU sizes
    .venv/bin/python bench/train_step.py --json runs/bench/train.json                  # GPU suite
    .venv/bin/python bench/train_step.py --model DiT3D-S/2 --batch 32 --freeze backbone
    .venv/bin/python bench/train_step.py --compile-only --no-torch [--no-donate] [--scan --remat dots]

JAX side: `dit3d_jax.train.make_train_step` exactly as training runs it (hybrid DDPM loss, grads,
freeze partition, AdamW, EMA, importance sampler, NaN guard), compiled once (compile time reported),
then timed over --steps calls after --warmup, each synchronised with block_until_ready; the median
is reported. Model FLOPs = 3 × forward (bench/flops.py); MFU against a large matmul timed in JAX
in the same run. Memory: device peak where the backend keeps statistics (GPU/TPU), else "n/a", plus
XLA's static estimate of the compiled step (arguments, outputs, temporaries, donated aliases).
--compile-only times nothing: it reports the compile time, that estimate and the activations
autodiff saves for the backward pass (device-independent), e.g. to plan memory on a CPU.

PyTorch side (same shapes, same layers, `bench/torch_models.py`): AdamW (lr 1e-4, wd 0) + EMA each
step, ε-MSE loss on uniform timesteps (the VLB term is left out: elementwise work only), label and
text dropout 0.1; modes fp32, tf32 (CUDA), bf16 autocast, and + torch.compile with --compile.
Every measurement runs in its own subprocess (clean memory peaks; JAX and PyTorch never share a
GPU).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flops  # noqa: E402
import harness  # noqa: E402
import memory  # noqa: E402
from harness import TEXT_DIM, build_model, peak_worker  # noqa: E402

SCRIPT = os.path.abspath(__file__)

# The GPU suite (docs/performance.md, "The goals") and the CPU stand-in (--small): same
# families, tiny shapes.
SUITE = ([dict(model="DiT-S/2", batch=256, frames=0, size=32, freeze="none")]
         + [dict(model="DiT3D-S/2", batch=b, frames=16, size=32, freeze=f)
            for b in (8, 16, 32) for f in ("none", "backbone")])
SMALL_SUITE = [dict(model="DiT-S/2", depth=2, batch=4, frames=0, size=16, freeze="none"),
               dict(model="DiT3D-S/2", depth=2, batch=2, frames=4, size=16, freeze="none"),
               dict(model="DiT3D-S/2", depth=2, batch=2, frames=4, size=16, freeze="backbone")]


# ---------------------------------------------------------------------------------------------
# Shared between the workers
# ---------------------------------------------------------------------------------------------

def host_batch(model, batch: int, text_len: int, seed: int = 0) -> dict:
    """A random host batch in the "Host batches" layout (channels last, captions of random
    length ≥ 1)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    spec = model.input_spec
    out = {"label": rng.integers(0, spec.num_classes, batch).astype(np.int32)}
    if spec.video:
        out["video"] = rng.uniform(-1, 1, spec.batch_shape(batch)).astype(np.float32)
        out["text_emb"] = rng.standard_normal((batch, text_len, spec.text_dim)).astype(np.float32)
        lengths = rng.integers(1, text_len + 1, batch)
        out["text_mask"] = np.arange(text_len)[None] < lengths[:, None]
    else:
        out["image"] = rng.uniform(-1, 1, spec.batch_shape(batch)).astype(np.float32)
    return out


def case_label(case: dict) -> str:
    extra = f", text L={case['text_len']}, freeze {case['freeze']}" if case["frames"] else ""
    extra += (", scan" if case.get("scan") else "") + (
        f", remat {case['remat']}" if case.get("remat", "none") != "none" else "")
    return harness.case_label(case, extra)


# ---------------------------------------------------------------------------------------------
# Workers (each runs in its own process)
# ---------------------------------------------------------------------------------------------

def jax_worker(case: dict) -> dict:
    import jax
    from dit3d_jax.diffusion.objective import make_objective
    from dit3d_jax.train import (create_train_state, make_mesh, make_step_fn, make_train_step,
                                 shard_batch)
    from dit3d_jax.train.config import default_config
    from dit3d_jax.train.step import compute_dtype

    model = build_model(case)
    config = default_config()
    config.compute_dtype = case["dtype"]
    config.optim.freeze = case["freeze"]
    config.data.global_batch_size = case["batch"]
    objective = make_objective(config.objective, model.learn_sigma)
    mesh = make_mesh(config.mesh)
    t0 = time.perf_counter()
    state, sharding = create_train_state(config, model, objective, mesh, jax.random.key(0))
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    step = make_train_step(config, model, objective, mesh, sharding, donate=case["donate"])
    batch = shard_batch(mesh, host_batch(model, case["batch"], case["text_len"]))

    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    dtype = str(jax.numpy.dtype(compute_dtype(case["dtype"])))
    out = {"framework": "jax", "precision": f"{dtype} {case['attn_impl']}", "dtype": dtype,
           "compile_s": compile_s, "init_s": init_s, "memory": memory.compiled_memory(compiled),
           "flops": flops.train_flops(model, case["batch"], case["text_len"], case["freeze"])}
    if case["compile_only"]:
        net = model.clone(dtype=compute_dtype(case["dtype"]))
        return {**out, "saved_activation_bytes": memory.saved_activation_bytes(
            net, state.params, case["batch"], text_len=case["text_len"], freeze=case["freeze"]),
            "step_matmul_flops": flops.jaxpr_matmul_flops(
                make_step_fn(config, model, objective), state, batch)}
    holder = {"state": state}

    def call():
        holder["state"], metrics = compiled(holder["state"], batch)
        return holder["state"].step, metrics

    out["timing"] = harness.time_calls(call, case["steps"], case["warmup"], jax.block_until_ready)
    _, metrics = call()
    return {**out, "loss": float(metrics["loss"]), "peak_bytes": memory.device_peak_bytes()}


def torch_worker(case: dict) -> dict:
    import torch
    import torch.nn.functional as F
    from torch_models import torch_model_like

    mode = case["torch_mode"]
    device = harness.torch_setup(mode)
    cuda = device.type == "cuda"
    jax_model = build_model(case)
    model = torch_model_like(jax_model).to(device)
    video = jax_model.input_spec.video
    if case["freeze"] == "backbone":
        for p in model.backbone_parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, **({"fused": True} if cuda else {}))
    forward = torch.compile(model) if mode.endswith("+compile") else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=mode.startswith("bf16"))

    b, c, L = case["batch"], jax_model.in_channels, case["text_len"]
    x0 = torch.rand(harness.channels_first(jax_model, b), device=device) * 2 - 1
    y = torch.randint(0, jax_model.num_classes, (b,), device=device)
    text = torch.randn(b, L, TEXT_DIM, device=device) if video else None
    mask = (torch.arange(L, device=device)[None] < torch.randint(1, L + 1, (b, 1),
                                                                 device=device)) if video else None
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0).float().to(device)

    def step():
        t = torch.randint(0, 1000, (b,), device=device)
        noise = torch.randn_like(x0)
        a = abar[t].view(-1, *([1] * (x0.dim() - 1)))
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        drop = torch.rand(b, device=device) < 0.1
        with autocast:
            if video:
                out = forward(xt, t.float(), y, text, mask, drop)
            else:
                out = forward(xt, t.float(), torch.where(drop, jax_model.num_classes, y))
        eps = out[:, :, :c] if video else out[:, :c]
        loss = F.mse_loss(eps.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1 - 0.9999)
        return loss

    sync = (lambda out: torch.cuda.synchronize()) if cuda else (lambda out: out)
    t0 = time.perf_counter()
    sync(step())  # first call: allocation, and the whole torch.compile
    first_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timing = harness.time_calls(step, case["steps"], max(case["warmup"] - 1, 0), sync)
    loss = float(step())
    return {"framework": "torch", "precision": mode, "dtype": "bfloat16" if "bf16" in mode
            else "float32", "timing": timing, "compile_s": first_s if "compile" in mode else None,
            "loss": loss, "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "threads": torch.get_num_threads(),
            "flops": flops.train_flops(jax_model, case["batch"], case["text_len"],
                                        case["freeze"])}


WORKERS = {"peak": peak_worker, "jax": jax_worker, "torch": torch_worker}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def resolve_cases(args, backend: str) -> list[dict]:
    if args.model:
        video, frames = harness.model_frames(args)
        default_batch = (2 if video else 4) if args.small else (8 if video else 256)
        cases = [dict(model=args.model, batch=args.batch or default_batch, frames=frames,
                      size=args.size or (16 if args.small else 32), freeze=freeze,
                      depth=args.depth if args.depth else (2 if args.small else None))
                 for freeze in args.freeze.split(",")]
    else:
        cases = [dict(c) for c in (SMALL_SUITE if args.small else SUITE)]
        if args.depth:
            for c in cases:
                c["depth"] = args.depth
    dtype, attn = harness.resolve_precision(args, backend)
    for c in cases:
        c.setdefault("depth", None)
        if c["freeze"] not in ("none", "backbone"):
            raise ValueError(f"--freeze: expected none, backbone or both comma-separated, got "
                             f"{c['freeze']!r}")
        if not c["frames"] and c["freeze"] != "none":
            raise ValueError(f"--freeze: an image DiT has no backbone/new split; expected 'none', "
                             f"got {c['freeze']!r}")
        c.update(dtype=dtype, attn_impl=attn, steps=args.steps, warmup=args.warmup,
                 scan=args.scan, remat=args.remat, donate=args.donate,
                 compile_only=args.compile_only,
                 text_len=args.text_len or (8 if args.small else flops.DEFAULT_TEXT_LEN))
    return cases


def summarise(case: dict, result: dict, peaks: dict, jax_ms: float | None) -> dict:
    if "error" in result:
        return {**result, "case": case}
    med = result["timing"]["median_s"]
    model_flops = result["flops"]["model"]
    peak = peaks.get(result["dtype"], {}).get("flops_per_s")
    return {**result, "case": case, "ms_per_step": 1e3 * med,
            "samples_per_s": case["batch"] / med, "model_flops_per_s": model_flops / med,
            "mfu": model_flops / med / peak if peak else None,
            "executed_flops_per_s": result["flops"]["executed"] / med,
            "jax_speedup": (1e3 * med / jax_ms) if jax_ms and result["framework"] == "torch"
            else None}


def memory_report(cases: list[dict], args, info: dict, peaks: dict) -> int:
    """--compile-only: compile each case's JAX step and tabulate XLA's memory estimate."""
    results, rows = [], []
    for case in cases:
        label = case_label(case)
        run = harness.run_case(SCRIPT, case, label, [], on_gpu=False)[0]
        results.append({**run, "case": case, "label": label})
        if "error" in run:
            rows.append([label, "", "", "error: " + run["error"][:80]] + [""] * 7)
            continue
        m = run["memory"] or {}
        rows.append([label, run["precision"], "yes" if case["donate"] else "no",
                     f"{run['compile_s']:.1f}",
                     f"{run['step_matmul_flops'] / run['flops']['model']:.3f}",
                     harness.gib(run["saved_activation_bytes"])]
                    + [harness.gib(m.get(k)) for k in ("arguments", "outputs", "temporaries",
                                                       "aliased", "total")])
    table = harness.print_table(
        ["case", "precision", "donated", "compile s", "matmul work", "saved for backward",
         "arguments",
         "outputs", "temporaries", "aliased", "XLA total"], rows,
        title="Train step memory (no step run): matmul FLOPs in the step's jaxpr ÷ 3 × forward "
              "(> 1: recomputation), activations autodiff saves for the backward (jaxpr "
              "residuals, any device), XLA's static estimate of the compiled step on this "
              "backend")
    return harness.finish(args, info, peaks, results, table)


def main(argv=None) -> int:
    p = harness.bench_parser(__doc__, WORKERS)
    p.add_argument("--batch", type=int, help="global batch (clips for DiT3D)")
    p.add_argument("--freeze", default="none",
                   help="none, backbone, or none,backbone (one case each; with --model)")
    p.add_argument("--scan", action="store_true", help="nn.scan over the blocks (scan_blocks)")
    p.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    p.add_argument("--donate", action=argparse.BooleanOptionalAction, default=True,
                   help="donate the train state to the step (--no-donate: measure what it saves)")
    p.add_argument("--compile-only", action="store_true",
                   help="compile the JAX step and report its memory (saved activations, XLA's "
                        "estimate); no timing")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 50; --small 8)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 10; --small 2)")
    args = p.parse_args(argv)
    if harness.serve_worker(args, WORKERS):
        return 0

    args.steps = args.steps or (8 if args.small else 50)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.small else 10)
    started = harness.start(SCRIPT, p, args, resolve_cases)
    if started is None:
        return 1
    info, peaks, cases = started
    if args.compile_only:
        return memory_report(cases, args, info, peaks)
    on_gpu = peaks["backend"] == "gpu"
    scale, unit = harness.flops_unit(peaks)
    print("matmul peak (JAX): " + ", ".join(
        f"{d} {peaks[d]['n']}³ {peaks[d]['flops_per_s'] / scale:.1f} {unit}"
        for d in ("float32", "bfloat16")), flush=True)

    results, rows = [], []
    for case in cases:
        label = case_label(case)
        modes = harness.torch_modes(args, on_gpu, case["dtype"])
        raw = harness.run_case(SCRIPT, case, label, modes, on_gpu)
        jax_res = summarise(case, raw[0], peaks, None)
        runs = [jax_res] + [summarise(case, res, peaks, jax_res.get("ms_per_step"))
                            for res in raw[1:]]
        for run in runs:
            results.append({**run, "label": label})
            if "error" in run:
                rows.append([label, run.get("framework", "?"), "", "error: " + run["error"][:80]]
                            + [""] * 8)
                continue
            peak_mem = harness.gib(run["peak_bytes"])
            if run["framework"] == "jax" and run.get("memory"):
                peak_mem += f" (XLA est. {harness.gib(run['memory']['total'])})"
            rows.append([label, run["framework"], run["precision"],
                         f"{run['ms_per_step']:.1f}", f"{1e3 * run['timing']['min_s']:.1f}",
                         f"{run['samples_per_s']:.1f}",
                         f"{run['model_flops_per_s'] / scale:.2f}",
                         harness.fmt(run["mfu"] and 100 * run["mfu"], ".1f") + "%",
                         peak_mem, harness.compile_note(run),
                         harness.fmt(run["jax_speedup"], ".2f", "—") + ("×" if run["jax_speedup"]
                                                                       else "")])
            label = ""
    table = harness.print_table(
        ["case", "framework", "precision", "ms/step", "min ms", "samples/s", f"model {unit}", "MFU",
         "peak memory", "compile s", "JAX speedup"], rows,
        title=f"Train step (median of {args.steps} after {args.warmup} warm-up; model FLOPs = "
              f"3 × forward; MFU vs the JAX matmul peak of the row's dtype)")
    return harness.finish(args, info, peaks, results, table)


if __name__ == "__main__":
    sys.exit(main())
