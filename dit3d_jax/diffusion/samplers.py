"""Samplers: DDPM ancestral and DDIM for GaussianDiffusion, Euler and Heun for RectifiedFlow.

Each sampler is one jitted `lax.fori_loop` over its steps; the update rule of one step belongs
to the objective (`ddpm_step`, `ddim_step`, `euler_step`, `heun_step`), which also lists the
samplers it offers (`objective.samplers`) and the chain they run (`objective.for_sampler`).
A sampler drives a model function `model(x (B, ..., C), t_model (B,)) -> (B, ..., C or 2C)`
and never knows which network it is;
`sample` builds that function from `apply_fn(params, x, t, **cond)` with batched classifier-free
guidance: ONE apply_fn call per model evaluation on 2B rows (cond rows, then the same rows with
force_drop=True), guided = uncond + s * (cond - uncond) on the eps / velocity channels.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from dit3d_jax.diffusion.flow import RectifiedFlow
from dit3d_jax.diffusion.gaussian import GaussianDiffusion

SAMPLERS = GaussianDiffusion.samplers + RectifiedFlow.samplers   # each objective lists its own

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
StepFn = Callable[[jax.Array], None]


# --------------------------------------------------------------------------------------------
# Classifier-free guidance
# --------------------------------------------------------------------------------------------

def guided_model(apply_fn: Callable, params, cond: Mapping, *, channels: int,
                 cfg_scale: float = 1.0, guidance_channels: int | None = None) -> ModelFn:
    """The model function a sampler drives, with batched classifier-free guidance.

    apply_fn(params, x, t, **cond) -> (N, ..., C_out); cond: per-row kwargs for B rows.
    channels: C, the data channels (eps / velocity are out[..., :C], the rest e.g. the variance v).
    cfg_scale == 1: one call on B rows. Otherwise one call on 2B rows [cond; cond + force_drop]
    and out[..., :g] = u + s (c - u) with g = guidance_channels or C; channels g..C-1 and the
    channels past C come from the conditional half (guidance_channels=3 is DiT's quirk).
    """
    cond = dict(cond)
    if cfg_scale == 1.0:
        return lambda x, t: apply_fn(params, x, t, **cond)
    g = channels if guidance_channels is None else guidance_channels

    def model(x, t):
        B = x.shape[0]
        doubled = {k: jnp.concatenate([v, v], axis=0) for k, v in cond.items()
                   if k != "force_drop"}
        drop_c = cond.get("force_drop", jnp.zeros((B,), bool))
        doubled["force_drop"] = jnp.concatenate([jnp.asarray(drop_c, bool),
                                                 jnp.ones((B,), bool)])
        out = apply_fn(params, jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0),
                       **doubled)
        out_c, out_u = out[:B], out[B:]
        guided = out_u[..., :g] + cfg_scale * (out_c[..., :g] - out_u[..., :g])
        return jnp.concatenate([guided.astype(out.dtype), out_c[..., g:]], axis=-1)

    return model


# --------------------------------------------------------------------------------------------
# The loops (pure; jit them or call them under jit)
# --------------------------------------------------------------------------------------------

def _no_progress(k):
    del k


def _noise(rng, k, x):
    """The noise of loop step k: normal draws from fold_in(rng, k), x's shape and dtype."""
    return jax.random.normal(jax.random.fold_in(rng, k), x.shape, x.dtype)


def ddpm_loop(model: ModelFn, diffusion: GaussianDiffusion, x_T, rng, *,
              clip_denoised: bool = False, on_step: StepFn = _no_progress):
    """Ancestral sampling through every step of `diffusion` (respace it first for fewer steps).

    x_T (B, ..., C) start noise; step k (k = 0..N-1) runs `diffusion.ddpm_step` from index
    N-1-k with noise drawn from fold_in(rng, k). Returns x_0 (B, ..., C).
    """
    N = diffusion.num_timesteps

    def body(k, x):
        on_step(k)
        return diffusion.ddpm_step(model, x, N - 1 - k, _noise(rng, k, x),
                                   clip_denoised=clip_denoised)

    return jax.lax.fori_loop(0, N, body, x_T)


def ddim_loop(model: ModelFn, diffusion: GaussianDiffusion, x_T, rng, *, eta: float = 0.0,
              clip_denoised: bool = False, on_step: StepFn = _no_progress):
    """DDIM through every step of `diffusion` (`diffusion.ddim_step`); eta = 0 deterministic,
    eta = 1 ~ DDPM; noise from fold_in(rng, k) at step k. Returns x_0 (B, ..., C)."""
    N = diffusion.num_timesteps

    def body(k, x):
        on_step(k)
        return diffusion.ddim_step(model, x, N - 1 - k, _noise(rng, k, x), eta=eta,
                                   clip_denoised=clip_denoised)

    return jax.lax.fori_loop(0, N, body, x_T)


def euler_loop(model: ModelFn, flow: RectifiedFlow, noise, steps: int, *,
               on_step: StepFn = _no_progress):
    """`flow.euler_step` from t = 0 (noise (B, ..., C)) to t = 1 (the data x0) in equal
    steps."""
    dt = 1.0 / steps

    def body(k, x):
        on_step(k)
        return flow.euler_step(model, x, k.astype(x.dtype) * dt, dt)

    return jax.lax.fori_loop(0, steps, body, noise)


def heun_loop(model: ModelFn, flow: RectifiedFlow, noise, steps: int, *,
              on_step: StepFn = _no_progress):
    """`flow.heun_step` (2 model evaluations per step) from t = 0 (noise) to t = 1."""
    dt = 1.0 / steps

    def body(k, x):
        on_step(k)
        return flow.heun_step(model, x, k.astype(x.dtype) * dt, dt)

    return jax.lax.fori_loop(0, steps, body, noise)


# --------------------------------------------------------------------------------------------
# Progress and the public entry point
# --------------------------------------------------------------------------------------------

class _Progress:
    """A tqdm bar on stderr, advanced from inside the jitted loop through jax.debug.callback.

    The compiled loop calls the module-level `_report_step`, which feeds the bar of the sample()
    call in flight, so one compiled loop serves every call.
    """
    active: "_Progress | None" = None

    def __init__(self, total: int, desc: str):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=total, desc=desc, file=sys.stderr, mininterval=0.5,
                        dynamic_ncols=True)
        self.done = 0
        _Progress.active = self

    def update(self, k):
        n = int(np.asarray(k)) + 1
        if n > self.done:  # callbacks may arrive out of order
            self.bar.update(n - self.done)
            self.done = n

    def close(self):
        jax.effects_barrier()
        self.bar.close()
        _Progress.active = None


def _report_step(k):
    if _Progress.active is not None:
        _Progress.active.update(k)


def _on_step(k):
    jax.debug.callback(_report_step, k)


def _check_cond(cond, batch):
    if cond is None:
        return {}
    if not isinstance(cond, Mapping):
        raise TypeError(f"cond: expected a dict of per-row model kwargs, got {type(cond).__name__}")
    out = {}
    for key, value in cond.items():
        if value is None:
            continue
        value = jnp.asarray(value)
        if value.ndim == 0 or value.shape[0] != batch:
            raise ValueError(f"cond[{key!r}]: expected leading dim B={batch} (shape[0]), got "
                             f"shape {value.shape}")
        out[key] = value
    return out


@functools.lru_cache(maxsize=16)
def _compiled_loop(apply_fn, objective, shape, sampler, steps, cfg_scale, eta, guidance_channels,
                   clip_denoised, state_dtype, progress):
    """-> (jitted run(params, cond, rng), number of steps); cached so repeated sample() calls
    with the same apply_fn, objective and settings compile once."""
    C = shape[-1]
    on_step = _on_step if progress else _no_progress
    chain, n_steps = objective.for_sampler(sampler, steps)

    def run(params, cond, rng):
        model = guided_model(apply_fn, params, cond, channels=C, cfg_scale=cfg_scale,
                             guidance_channels=guidance_channels)
        rng_init, rng_loop = jax.random.split(rng)
        x = jax.random.normal(rng_init, shape, state_dtype)
        if sampler == "ddpm":
            return ddpm_loop(model, chain, x, rng_loop, clip_denoised=clip_denoised,
                             on_step=on_step)
        if sampler == "ddim":
            return ddim_loop(model, chain, x, rng_loop, eta=eta, clip_denoised=clip_denoised,
                             on_step=on_step)
        if sampler == "euler":
            return euler_loop(model, chain, x, n_steps, on_step=on_step)
        return heun_loop(model, chain, x, n_steps, on_step=on_step)

    return jax.jit(run), n_steps


def sample(apply_fn: Callable, params, shape, cond, rng, *, objective, sampler: str = "ddpm",
           steps: int = 250, cfg_scale: float = 1.0, eta: float = 0.0, progress: bool = True,
           guidance_channels: int | None = None, clip_denoised: bool = False,
           state_dtype=jnp.float32):
    """Draw samples of `shape` (B, ..., C) from a trained model.

    apply_fn(params, x, t, **cond) -> (B', ..., C or 2C); cond: dict of per-row kwargs (y, text,
    text_mask) for the B rows, or None. objective: one whose `samplers` include `sampler`:
    GaussianDiffusion ('ddpm', or 'ddim' with eta; `steps` respaces it, "N" resp. "ddimN"
    spacing) or RectifiedFlow ('euler', 'heun'; `steps` integration steps). cfg_scale != 1:
    batched CFG, one call on 2B rows per model evaluation; guidance_channels=3 reproduces DiT's
    guidance of the first 3 channels only.
    progress: show a tqdm bar on stderr fed from inside the loop. state_dtype: the dtype of the
    sampler's x from the start noise on (the model computes in its own dtype; generate()'s
    `dtype`). Returns x (shape), state_dtype.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {SAMPLERS}, got {sampler!r}")
    offered = getattr(objective, "samplers", ())
    if sampler not in offered:
        raise TypeError(f"objective: sampler {sampler!r} needs an objective that offers it; "
                        f"{type(objective).__name__} offers {offered}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape: expected (B, ..., C), got {shape}")
    C = shape[-1]
    if guidance_channels is not None and not 1 <= guidance_channels <= C:
        raise ValueError(f"guidance_channels: expected an int in [1, {C}] or None, "
                         f"got {guidance_channels!r}")
    if not 0.0 <= eta:
        raise ValueError(f"eta: expected >= 0, got {eta!r}")
    cond = _check_cond(cond, shape[0])
    cfg_scale = float(cfg_scale)

    run, n_steps = _compiled_loop(apply_fn, objective, shape, sampler, int(steps), cfg_scale,
                                  float(eta), guidance_channels, clip_denoised, state_dtype,
                                  progress)
    bar = _Progress(n_steps, f"{sampler} x{shape[0]}") if progress else None
    try:
        x = run(params, cond, rng)
        jax.block_until_ready(x)
    finally:
        if bar is not None:
            bar.close()
    return x
