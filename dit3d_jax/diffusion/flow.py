"""Rectified flow / flow matching with a linear path.

x_t = t * x0 + (1 - t) * noise,  x0 the data (named as in GaussianDiffusion), noise ~ N(0, I),
t in [0, 1]; the model regresses the velocity v = dx_t/dt = x0 - noise. Sampling integrates
dx/dt = v(x, t) from t = 0 (noise) to t = 1 (data). The model is called with
t_model = time_scale * t (1000 * t), so DiT's timestep embedder sees its usual range. A model
that returns 2C channels (learned sigma) has only its first C channels used.

Layout is channels-last: x is (B, ..., C).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

T_SAMPLINGS = ("uniform", "logit_normal")


@dataclasses.dataclass(frozen=True)
class RectifiedFlow:
    """Linear-path flow matching objective.

    num_bins: number of t bins for the importance sampler (bin b covers [b/T, (b+1)/T)).
    t_sampling: 'uniform' or 'logit_normal' (t = sigmoid(N(ln_mean, ln_std^2))).
    time_scale: factor from t in [0, 1] to the timestep the model sees.
    `samplers` names the samplers whose update rules it offers (`euler_step`, `heun_step`;
    `dit3d_jax.diffusion.samplers` runs them).
    """
    samplers = ("euler", "heun")   # a class attribute, not a field
    num_bins: int = 1000
    t_sampling: str = "uniform"
    ln_mean: float = 0.0
    ln_std: float = 1.0
    time_scale: float = 1000.0

    def __post_init__(self):
        if (isinstance(self.num_bins, bool) or not isinstance(self.num_bins, int)
                or self.num_bins < 1):
            raise ValueError(f"num_bins: expected a positive int, got {self.num_bins!r}")
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"t_sampling: expected one of {T_SAMPLINGS}, got {self.t_sampling!r}")
        if not self.ln_std > 0:
            raise ValueError(f"ln_std: expected > 0, got {self.ln_std!r}")

    # ---- the path --------------------------------------------------------------------------

    @staticmethod
    def _bcast(t, x):
        t = jnp.asarray(t, x.dtype)
        return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))

    def interpolate(self, x0, noise, t):
        """x_t = t x0 + (1 - t) noise. x0 (data), noise (B, ...), t (B,) in [0, 1]."""
        tb = self._bcast(t, x0)
        return tb * x0 + (1.0 - tb) * noise

    @staticmethod
    def target(x0, noise):
        """The velocity the model regresses: x0 - noise."""
        return x0 - noise

    def model_timesteps(self, t):
        """t (B,) in [0, 1] -> the timesteps the model sees, time_scale * t."""
        return self.time_scale * t

    @staticmethod
    def velocity(model_out, x):
        """The velocity part of a model output: first C channels of (B, ..., C or 2C)."""
        C = x.shape[-1]
        if model_out.shape[:-1] != x.shape[:-1] or model_out.shape[-1] not in (C, 2 * C):
            raise ValueError(f"model_out: expected shape {x.shape[:-1] + (C,)} or "
                             f"{x.shape[:-1] + (2 * C,)} for x {x.shape}, got {model_out.shape}")
        return model_out[..., :C].astype(x.dtype)

    # ---- sampling: one step of each sampler ------------------------------------------------

    def for_sampler(self, sampler: str, steps: int) -> tuple["RectifiedFlow", int]:
        """(the objective `sampler` integrates, its number of steps): this flow, `steps`."""
        del sampler
        return self, steps

    def predict_velocity(self, model: Callable, x, t):
        """v(x, t): model(x (B, ..., C), t_model (B,)) at one time t in [0, 1] -> (B, ..., C)."""
        t_model = jnp.full((x.shape[0],), self.model_timesteps(t), x.dtype)
        return self.velocity(model(x, t_model), x)

    def euler_step(self, model: Callable, x, t, dt):
        """Euler on dx/dt = v(x, t): x + dt·v(x, t). x (B, ..., C); t, dt scalars."""
        return x + dt * self.predict_velocity(model, x, t)

    def heun_step(self, model: Callable, x, t, dt):
        """Heun (explicit trapezoid, 2 model evaluations):
        x + dt/2·(v(x, t) + v(x + dt·v(x, t), t + dt)). x (B, ..., C); t, dt scalars."""
        v1 = self.predict_velocity(model, x, t)
        v2 = self.predict_velocity(model, x + dt * v1, t + dt)
        return x + 0.5 * dt * (v1 + v2)

    # ---- training --------------------------------------------------------------------------

    def sample_t(self, rng, batch: int, dtype=jnp.float32, t_bins=None):
        """t (B,) in [0, 1]: (t_bins + U(0, 1)) / num_bins, else uniform or logit-normal."""
        if t_bins is not None:
            u = jax.random.uniform(rng, (batch,), dtype)
            return (t_bins.astype(dtype) + u) / self.num_bins
        if self.t_sampling == "uniform":
            return jax.random.uniform(rng, (batch,), dtype)
        z = self.ln_mean + self.ln_std * jax.random.normal(rng, (batch,), dtype)
        return jax.nn.sigmoid(z)

    def loss(self, model_fn: Callable, x0, rng, t_bins=None):
        """The training objective (interfaces.md).

        model_fn(x_t (B, ..., C), t_model (B,) float in [0, time_scale]) -> (B, ..., C or 2C).
        x0 (B, ..., C) clean data (the path's end at t = 1); rng a PRNG key; t_bins (B,) int in
        [0, num_bins) or None. Returns (per-sample MSE (B,), {"t_bins", "mse", "vb" (zeros)}).
        """
        x0 = jnp.asarray(x0)
        if x0.ndim < 2:
            raise ValueError(f"x0: expected (B, ..., C) with at least 2 dims, got shape {x0.shape}")
        if not jnp.issubdtype(x0.dtype, jnp.floating):
            raise TypeError(f"x0: expected a floating dtype, got {x0.dtype}")
        x0 = x0.astype(jnp.promote_types(x0.dtype, jnp.float32))
        B = x0.shape[0]
        if t_bins is not None:
            t_bins = jnp.asarray(t_bins)
            if t_bins.shape != (B,) or not jnp.issubdtype(t_bins.dtype, jnp.integer):
                raise ValueError(f"t_bins: expected int (B,)=({B},), got {t_bins.dtype} "
                                 f"{t_bins.shape}")
        rng_t, rng_noise = jax.random.split(rng)
        t = self.sample_t(rng_t, B, x0.dtype, t_bins)
        noise = jax.random.normal(rng_noise, x0.shape, x0.dtype)
        x_t = self.interpolate(x0, noise, t)
        v = self.velocity(jnp.asarray(model_fn(x_t, self.model_timesteps(t))), x_t)
        mse = jnp.mean((self.target(x0, noise) - v) ** 2, axis=tuple(range(1, x0.ndim)))
        if t_bins is None:
            t_bins = jnp.clip(jnp.floor(t * self.num_bins), 0, self.num_bins - 1)
        return mse, {"t_bins": t_bins.astype(jnp.int32), "mse": mse, "vb": jnp.zeros_like(mse)}


def create_flow(num_timesteps: int = 1000, t_sampling: str = "uniform", ln_mean: float = 0.0,
                ln_std: float = 1.0) -> RectifiedFlow:
    """RectifiedFlow from the config names: num_timesteps importance-sampler bins."""
    return RectifiedFlow(num_bins=num_timesteps, t_sampling=t_sampling, ln_mean=ln_mean,
                         ln_std=ln_std)
