"""Sampling throughput: DDPM with batched classifier-free guidance, JAX against a PyTorch loop.

    .venv/bin/python bench/sample.py --small --json runs/bench/sample_small.json   # CPU sizes
    .venv/bin/python bench/sample.py --json runs/bench/sample.json                  # GPU suite

JAX: the ancestral DDPM sampler of `dit3d_jax.diffusion` over a respaced chain (250 steps by
default), CFG scale 4 on 2B rows per step (one model call). `sample()` compiles its loop once per
model function, objective, shape and settings and keeps it (dit3d_jax.diffusion.samplers), so:
  - "sample() s" is the first call, as a user's first call runs: tracing, compiling, running;
  - "total s" is the steady state: the median of --repeats further calls after --warmup, which
    reuse the compiled loop and only run it;
  - "compile s" is the difference of the two.
PyTorch: the same model (`bench/torch_models.py`), a Python loop over the same respaced chain:
one forward on [cond; uncond] rows, guided ε, learned-range variance, ancestral noise; under
inference_mode in fp32 and bf16 autocast (tf32 too on CUDA; + torch.compile with --compile).
Model FLOPs per step = forward on 2B rows (bench/flops.py). Each measurement runs in its own
subprocess.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flops  # noqa: E402
import harness  # noqa: E402
import memory  # noqa: E402
from harness import TEXT_DIM, build_model, peak_worker  # noqa: E402

SCRIPT = os.path.abspath(__file__)
CFG_SCALE = 4.0

SUITE = [dict(model="DiT-XL/2", batch=8, frames=0, size=32, steps=250),
         dict(model="DiT3D-S/2", batch=4, frames=16, size=32, steps=250)]
SMALL_SUITE = [dict(model="DiT-S/2", batch=2, frames=0, size=32, steps=10),
               dict(model="DiT3D-S/2", depth=2, batch=2, frames=4, size=16, steps=10)]


def case_label(case: dict) -> str:
    cond = f"text L={case['text_len']}" if case["frames"] else "class"
    return harness.case_label(case, f" (+{case['batch']} uncond), {case['steps']} steps, {cond}")


def respaced(steps: int):
    from dit3d_jax.diffusion import create_gaussian_diffusion
    return create_gaussian_diffusion(1000, "linear", learn_sigma=True), str(steps)


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------

def jax_worker(case: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from dit3d_jax.diffusion import sample
    from dit3d_jax.models import init_params

    model = build_model(case, case["dtype"])
    params = init_params(model, jax.random.key(0))
    b = case["batch"]
    spec = model.input_spec
    rng = np.random.default_rng(0)
    if spec.text_dim:
        L = case["text_len"]
        cond = {"text": jnp.asarray(rng.standard_normal((b, L, spec.text_dim)), jnp.float32),
                "text_mask": jnp.asarray(np.arange(L)[None] < rng.integers(1, L + 1, (b, 1)))}
    else:
        cond = {"y": jnp.asarray(rng.integers(0, spec.num_classes, b), jnp.int32)}

    def apply_fn(p, x, t, **kw):
        return model.apply({"params": p}, x, t, **kw)

    objective, _ = respaced(case["steps"])

    def call():
        return sample(apply_fn, params, spec.batch_shape(b), cond, jax.random.key(1),
                      objective=objective, sampler="ddpm", steps=case["steps"],
                      cfg_scale=CFG_SCALE, progress=False)

    t0 = time.perf_counter()
    jax.block_until_ready(call())  # traces and compiles the loop; later calls reuse it
    first_s = time.perf_counter() - t0
    timing = harness.time_calls(call, case["repeats"], case["warmup"], jax.block_until_ready)
    out = call()
    return {"framework": "jax", "precision": f"{case['dtype']} {case['attn_impl']}",
            "dtype": case["dtype"], "timing": timing,
            "compile_s": max(first_s - timing["median_s"], 0.0),
            "sample_call_s": first_s, "finite": bool(jnp.isfinite(out).all()),
            "peak_bytes": memory.device_peak_bytes(),
            "flops": case["steps"] * flops.dit_flops(model, 2 * b, case["text_len"])}


def torch_worker(case: dict) -> dict:
    import numpy as np
    import torch
    from torch_models import torch_model_like

    mode = case["torch_mode"]
    device = harness.torch_setup(mode)
    cuda = device.type == "cuda"
    jax_model = build_model(case)
    model = torch_model_like(jax_model).to(device).eval()
    forward = torch.compile(model) if mode.endswith("+compile") else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode.startswith("bf16"))
    video = jax_model.input_spec.video
    b, c, L = case["batch"], jax_model.in_channels, case["text_len"]
    shape = harness.channels_first(jax_model, b)

    # The respaced chain's numbers (float64 NumPy); the loop below does the math in torch.
    objective, spec = respaced(case["steps"])
    d = objective.respace(spec)
    as_t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32, device=device)
    recip, recipm1 = as_t(d.sqrt_recip_alphas_cumprod), as_t(d.sqrt_recipm1_alphas_cumprod)
    coef1, coef2 = as_t(d.posterior_mean_coef1), as_t(d.posterior_mean_coef2)
    min_log, max_log = as_t(d.posterior_log_variance_clipped), as_t(np.log(d.betas))
    tmap = as_t(d.timestep_map)
    n_steps = d.num_timesteps

    y = torch.randint(0, jax_model.num_classes, (b,), device=device)
    if video:
        text = torch.randn(b, L, TEXT_DIM, device=device).repeat(2, 1, 1)
        mask = (torch.arange(L, device=device)[None]
                < torch.randint(1, L + 1, (b, 1), device=device)).repeat(2, 1)
        drop = torch.cat([torch.zeros(b, dtype=torch.bool, device=device),
                          torch.ones(b, dtype=torch.bool, device=device)])
        y2 = torch.full((2 * b,), jax_model.num_classes, device=device)  # JAX passes no y
    else:
        y2 = torch.cat([y, torch.full_like(y, jax_model.num_classes)])

    @torch.inference_mode()
    def loop():
        gen = torch.Generator(device=device).manual_seed(1)
        x = torch.randn(shape, device=device, generator=gen)
        ch = 2 if video else 1
        for i in reversed(range(n_steps)):
            t = tmap[i].expand(2 * b)
            with autocast:
                out = (forward(torch.cat([x, x]), t, y2, text, mask, drop) if video
                       else forward(torch.cat([x, x]), t, y2)).float()
            cond_out, uncond_out = out[:b], out[b:]
            eps_c, v = cond_out.split(c, dim=ch)
            eps = uncond_out.narrow(ch, 0, c) + CFG_SCALE * (eps_c - uncond_out.narrow(ch, 0, c))
            frac = (v + 1) / 2
            log_var = frac * max_log[i] + (1 - frac) * min_log[i]
            x0 = recip[i] * x - recipm1[i] * eps
            mean = coef1[i] * x0 + coef2[i] * x
            x = mean + (torch.exp(0.5 * log_var) * torch.randn(x.shape, device=device,
                                                             generator=gen) if i > 0 else 0)
        return x

    sync = (lambda out: torch.cuda.synchronize()) if cuda else (lambda out: out)
    t0 = time.perf_counter()
    sync(loop())  # first run: allocation and, with +compile, the compilation
    first_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timing = harness.time_calls(loop, case["repeats"], max(case["warmup"] - 1, 0), sync)
    out = loop()
    return {"framework": "torch", "precision": mode,
            "dtype": "bfloat16" if "bf16" in mode else "float32", "timing": timing,
            "compile_s": first_s if "compile" in mode else None,
            "finite": bool(torch.isfinite(out).all()),
            "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "flops": case["steps"] * flops.dit_flops(jax_model, 2 * b, case["text_len"])}


WORKERS = {"peak": peak_worker, "jax": jax_worker, "torch": torch_worker}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def resolve_cases(args, backend: str) -> list[dict]:
    if args.model:
        video, frames = harness.model_frames(args)
        cases = [dict(model=args.model, frames=frames,
                      batch=args.batch or (2 if args.small else (4 if video else 8)),
                      size=args.size or (16 if args.small and video else 32),
                      steps=args.sample_steps or (10 if args.small else 250),
                      depth=args.depth or (2 if args.small and video else None))]
    else:
        cases = [dict(c) for c in (SMALL_SUITE if args.small else SUITE)]
        for c in cases:
            if args.sample_steps:
                c["steps"] = args.sample_steps
            if args.depth:
                c["depth"] = args.depth
    dtype, attn = harness.resolve_precision(args, backend)
    for c in cases:
        c.setdefault("depth", None)
        c.update(dtype=dtype, attn_impl=attn, repeats=args.repeats, warmup=args.warmup,
                 text_len=args.text_len or (8 if args.small else flops.DEFAULT_TEXT_LEN))
    return cases


def main(argv=None) -> int:
    p = harness.bench_parser(__doc__, WORKERS)
    p.add_argument("--batch", type=int, help="samples (each guided: 2× rows per model call)")
    p.add_argument("--sample-steps", type=int, help="DDPM steps (default 250, --small 10)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 5; --small 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs after compiling")
    args = p.parse_args(argv)
    if harness.serve_worker(args, WORKERS):
        return 0

    args.repeats = args.repeats or (2 if args.small else 5)
    started = harness.start(SCRIPT, p, args, resolve_cases)
    if started is None:
        return 1
    info, peaks, cases = started
    on_gpu = peaks["backend"] == "gpu"
    scale, unit = harness.flops_unit(peaks)

    results, rows = [], []
    for case in cases:
        label = case_label(case)
        modes = harness.torch_modes(args, on_gpu, case["dtype"])
        runs = harness.run_case(SCRIPT, case, label, modes, on_gpu)
        jax_s = runs[0].get("timing", {}).get("median_s")
        for run in runs:
            run = {**run, "case": case, "label": label}
            if "error" in run:
                results.append(run)
                rows.append([label, run.get("framework", "?"), "error: " + run["error"][:80]]
                            + [""] * 8)
                label = ""
                continue
            med = run["timing"]["median_s"]
            peak = peaks.get(run["dtype"], {}).get("flops_per_s")
            run.update(total_s=med, steps_per_s=case["steps"] / med,
                       model_flops_per_s=run["flops"] / med,
                       mfu=run["flops"] / med / peak if peak else None,
                       jax_speedup=med / jax_s if jax_s and run["framework"] == "torch" else None)
            results.append(run)
            rows.append([label, run["framework"], run["precision"], f"{med:.2f}",
                         f"{run['steps_per_s']:.2f}", f"{run['model_flops_per_s'] / scale:.2f}",
                         harness.fmt(run["mfu"] and 100 * run["mfu"], ".1f") + "%",
                         harness.compile_note(run),
                         harness.fmt(run.get("sample_call_s"), ".2f"),
                         harness.fmt(run["jax_speedup"], ".2f") + ("×" if run["jax_speedup"]
                                                                 else ""),
                         "yes" if run["finite"] else "NO"])
            label = ""
    table = harness.print_table(
        ["case", "framework", "precision", "total s", "steps/s", f"model {unit}", "MFU",
         "compile s", "sample() s", "JAX speedup", "finite"], rows,
        title=f"DDPM sampling with batched CFG (scale {CFG_SCALE}); total = median of "
              f"{args.repeats} runs after compiling; sample() s = the first call of "
              f"dit3d_jax.diffusion.sample, compilation included; compile s = that − total")
    return harness.finish(args, info, peaks, results, table)


if __name__ == "__main__":
    sys.exit(main())
