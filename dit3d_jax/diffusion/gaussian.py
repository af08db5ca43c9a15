"""Gaussian diffusion (DDPM) with the exact math of DiT / improved-diffusion.

Forward process  q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),
abar_t = prod_{s<=t} (1 - beta_s).
The model predicts eps (or x_0) in its first C output channels and, with a learned variance, an
interpolation value v in [-1, 1] in its last C channels:
    log sigma_t^2 = frac * log beta_t + (1 - frac) * log beta~_t,   frac = (v + 1) / 2,
beta~_t being the (clipped) posterior variance. Training uses the hybrid loss of Nichol & Dhariwal:
MSE(eps) + VLB, where the VLB sees the model mean under stop_gradient (only the variance learns
through it), is measured in bits and, at t = 0, is the discretized Gaussian decoder NLL.

Schedules are computed in float64 NumPy and stored as such; every use casts them to the dtype of the
data, so the whole computation runs in float64 when `jax_enable_x64` is on.

Layout is channels-last: x is (B, ..., C); the model output is (B, ..., C) or (B, ..., 2C).
Timesteps `t` given to the methods are indices into this (possibly respaced) schedule; the model is
always called with the ORIGINAL timestep `timestep_map[t]`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

MEAN_TYPES = ("eps", "x0")
VAR_TYPES = ("learned_range", "fixed_small", "fixed_large")
LOSS_TYPES = ("hybrid", "mse")
SCHEDULES = ("linear", "cosine")


# --------------------------------------------------------------------------------------------
# Schedules and respacing (float64 NumPy)
# --------------------------------------------------------------------------------------------

def _check_num_timesteps(num_timesteps) -> int:
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)) \
            or num_timesteps < 1:
        raise ValueError(f"num_timesteps: expected a positive int, got {num_timesteps!r}")
    return int(num_timesteps)


def linear_betas(num_timesteps: int) -> np.ndarray:
    """DDPM linear schedule scaled to T steps: beta 1e-4*1000/T .. 0.02*1000/T. (T,) float64."""
    num_timesteps = _check_num_timesteps(num_timesteps)
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule (Nichol & Dhariwal): abar(s) = cos^2((s + 0.008)/1.008 * pi/2), s = t/T.

    beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta). Returns (T,) float64.
    """
    num_timesteps = _check_num_timesteps(num_timesteps)
    s = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    abar = np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


def get_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """Named beta schedule: 'linear' or 'cosine'. Returns (T,) float64."""
    if name == "linear":
        return linear_betas(num_timesteps)
    if name == "cosine":
        return cosine_betas(num_timesteps)
    raise ValueError(f"schedule: expected one of {SCHEDULES}, got {name!r}")


def space_timesteps(num_timesteps: int, spec) -> list[int]:
    """Timesteps of a T-step process kept when respacing it (improved-diffusion rules).

    spec: "ddimN" -> range(0, T, stride) with exactly N elements (fixed stride, DDIM paper);
          "N" or "N1,N2,..." or [N1, N2, ...] -> T split into len(spec) equal sections (the first
          T % len sections one longer), N_i steps evenly spaced (rounded) inside section i.
    Returns the kept timesteps, sorted ascending.
    """
    num_timesteps = _check_num_timesteps(num_timesteps)
    if isinstance(spec, str):
        if spec.startswith("ddim"):
            try:
                desired = int(spec[len("ddim"):])
            except ValueError:
                raise ValueError(f"spec: expected 'ddimN' with an int N, got {spec!r}") from None
            for stride in range(1, num_timesteps + 1):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"spec: no fixed stride gives exactly {desired} of {num_timesteps} "
                             f"steps for {spec!r}; pick another count or use plain {desired!r}")
        try:
            counts = [int(c) for c in spec.split(",")]
        except ValueError:
            raise ValueError(f"spec: expected 'N', 'N1,N2,...' or 'ddimN', got {spec!r}") from None
    elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        counts = [int(spec)]
    elif isinstance(spec, Sequence) and spec and all(
            isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in spec):
        counts = [int(c) for c in spec]
    else:
        raise ValueError(f"spec: expected a str or a list of ints, got {spec!r}")

    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count < 1 or count > size:
            raise ValueError(f"spec: section {i} of {size} steps cannot keep {count} steps "
                             f"(spec {spec!r}, T={num_timesteps})")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):  # accumulated like improved-diffusion, so roundings match it
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def respaced_betas(alphas_cumprod: np.ndarray, kept: Sequence[int]) -> np.ndarray:
    """Betas of the chain through the kept steps: beta_i = 1 - abar_{k_i} / abar_{k_{i-1}}."""
    abar = np.asarray(alphas_cumprod, dtype=np.float64)[np.asarray(kept)]
    return 1.0 - abar / np.concatenate([[1.0], abar[:-1]])


# --------------------------------------------------------------------------------------------
# Gaussian helpers (work in the dtype of their inputs)
# --------------------------------------------------------------------------------------------

def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """The tanh approximation of the standard normal CDF used by PixelCNN++ / improved-diffusion."""
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log-likelihood of data x in [-1, 1] quantised to 256 bins (width 2/255), elementwise.

    The outermost bins extend to -inf / +inf (x < -0.999, x > 0.999). Probabilities are floored at
    1e-12 before the log.
    """
    centered = x - means
    inv_std = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus,
                     jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_flat(x):
    """Mean over every axis but the first: (B, ...) -> (B,)."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


# --------------------------------------------------------------------------------------------
# The diffusion process
# --------------------------------------------------------------------------------------------

_DERIVED = ("alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod", "posterior_variance",
            "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
            "log_betas")


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianDiffusion:
    """A (possibly respaced) DDPM process with DiT's parameterisations and hybrid loss.

    betas: (T,) float64 betas of this chain. timestep_map: (T,) int, the original timestep of each
    step (identity unless respaced). Derived schedule arrays (alphas_cumprod, posterior_*, ...)
    are (T,) float64 NumPy, set on construction. `samplers` names the samplers whose update
    rules it offers (`ddpm_step`, `ddim_step`; `dit3d_jax.diffusion.samplers` runs them).
    """
    samplers = ("ddpm", "ddim")   # a class attribute, not a field

    betas: np.ndarray
    model_mean_type: str = "eps"
    model_var_type: str = "learned_range"
    loss_type: str = "hybrid"
    timestep_map: np.ndarray | None = None

    alphas_cumprod: np.ndarray = dataclasses.field(init=False, repr=False)
    alphas_cumprod_prev: np.ndarray = dataclasses.field(init=False, repr=False)
    sqrt_alphas_cumprod: np.ndarray = dataclasses.field(init=False, repr=False)
    sqrt_one_minus_alphas_cumprod: np.ndarray = dataclasses.field(init=False, repr=False)
    sqrt_recip_alphas_cumprod: np.ndarray = dataclasses.field(init=False, repr=False)
    sqrt_recipm1_alphas_cumprod: np.ndarray = dataclasses.field(init=False, repr=False)
    posterior_variance: np.ndarray = dataclasses.field(init=False, repr=False)
    posterior_log_variance_clipped: np.ndarray = dataclasses.field(init=False, repr=False)
    posterior_mean_coef1: np.ndarray = dataclasses.field(init=False, repr=False)
    posterior_mean_coef2: np.ndarray = dataclasses.field(init=False, repr=False)
    log_betas: np.ndarray = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 2 or not np.all((betas > 0) & (betas <= 1)):
            raise ValueError(f"betas: expected a 1-D array of >= 2 values in (0, 1], got shape "
                             f"{betas.shape} with range [{betas.min():.3g}, {betas.max():.3g}]")
        for name, value, allowed in (("model_mean_type", self.model_mean_type, MEAN_TYPES),
                                     ("model_var_type", self.model_var_type, VAR_TYPES),
                                     ("loss_type", self.loss_type, LOSS_TYPES)):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
        learned = self.model_var_type == "learned_range"
        if learned != (self.loss_type == "hybrid"):
            raise ValueError(f"loss_type: 'hybrid' goes with model_var_type 'learned_range' and "
                             f"'mse' with a fixed variance; got loss_type={self.loss_type!r}, "
                             f"model_var_type={self.model_var_type!r}")
        T = betas.size
        tmap = np.arange(T) if self.timestep_map is None else np.asarray(self.timestep_map)
        if tmap.shape != (T,):
            raise ValueError(f"timestep_map: expected shape ({T},), got {tmap.shape}")

        alphas = 1.0 - betas
        abar = np.cumprod(alphas)
        abar_prev = np.concatenate([[1.0], abar[:-1]])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        derived = dict(
            alphas_cumprod=abar,
            alphas_cumprod_prev=abar_prev,
            sqrt_alphas_cumprod=np.sqrt(abar),
            sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / abar),
            sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / abar - 1.0),
            posterior_variance=post_var,
            # beta~_0 = 0: the log is clipped by reusing beta~_1 at t = 0.
            posterior_log_variance_clipped=np.log(np.concatenate([post_var[1:2], post_var[1:]])),
            posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
            posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
            log_betas=np.log(betas),
        )
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "timestep_map", tmap.astype(np.int64))
        for name in _DERIVED:
            object.__setattr__(self, name, derived[name])

    # ---- bookkeeping -----------------------------------------------------------------------

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.size)

    @property
    def num_bins(self) -> int:
        """Number of timestep bins for an importance sampler (= num_timesteps)."""
        return self.num_timesteps

    @property
    def learn_sigma(self) -> bool:
        return self.model_var_type == "learned_range"

    def respace(self, spec) -> "GaussianDiffusion":
        """The chain through the steps `space_timesteps(T, spec)` keeps; same parameterisation."""
        kept = space_timesteps(self.num_timesteps, spec)
        return dataclasses.replace(self, betas=respaced_betas(self.alphas_cumprod, kept),
                                   timestep_map=self.timestep_map[np.asarray(kept)])

    def model_timesteps(self, t, dtype=jnp.float32):
        """Original timesteps the model sees for indices t (B,) -> (B,) float."""
        return jnp.asarray(self.timestep_map)[t].astype(dtype)

    @staticmethod
    def _extract(arr: np.ndarray, t, x):
        """arr[t] cast to x.dtype, shaped (B, 1, ..., 1) to broadcast against x (B, ...)."""
        out = jnp.asarray(arr, dtype=x.dtype)[t]
        return out.reshape(out.shape + (1,) * (x.ndim - out.ndim))

    # ---- forward process -------------------------------------------------------------------

    def q_sample(self, x0, t, noise):
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise. x0, noise (B, ...), t (B,) int."""
        return (self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
                + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def q_posterior_mean_variance(self, x0, x_t, t):
        """q(x_{t-1} | x_t, x0): mean (B, ...), variance and clipped log variance (B, 1, ..)."""
        mean = (self._extract(self.posterior_mean_coef1, t, x_t) * x0
                + self._extract(self.posterior_mean_coef2, t, x_t) * x_t)
        return (mean, self._extract(self.posterior_variance, t, x_t),
                self._extract(self.posterior_log_variance_clipped, t, x_t))

    def predict_xstart_from_eps(self, x_t, t, eps):
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)

    def predict_eps_from_xstart(self, x_t, t, x0):
        return ((self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0)
                / self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t))

    # ---- reverse process -------------------------------------------------------------------

    def split_model_output(self, model_out, x_t):
        """(B, ..., C or 2C) -> (mean part (B, ..., C), v part (B, ..., C) or None)."""
        C = x_t.shape[-1]
        model_out = jnp.asarray(model_out).astype(x_t.dtype)
        if model_out.shape[:-1] != x_t.shape[:-1] or model_out.shape[-1] not in (C, 2 * C):
            raise ValueError(f"model_out: expected shape {x_t.shape[:-1] + (C,)} or "
                             f"{x_t.shape[:-1] + (2 * C,)} for x_t {x_t.shape}, "
                             f"got {model_out.shape}")
        if self.learn_sigma:
            if model_out.shape[-1] != 2 * C:
                raise ValueError(f"model_out: model_var_type 'learned_range' needs 2*C={2 * C} "
                                 f"channels, got {model_out.shape[-1]}")
            return model_out[..., :C], model_out[..., C:]
        return model_out[..., :C], None

    def p_mean_variance(self, model_out, x_t, t, clip_denoised: bool = False):
        """p(x_{t-1} | x_t) from the model output.

        model_out (B, ..., C or 2C), x_t (B, ..., C), t (B,) int or a scalar index.
        Returns dict mean (B, ..., C), variance, log_variance (broadcastable to x_t),
        pred_xstart (B, ..., C).
        """
        pred, v = self.split_model_output(model_out, x_t)
        if self.model_var_type == "learned_range":
            min_log = self._extract(self.posterior_log_variance_clipped, t, x_t)
            max_log = self._extract(self.log_betas, t, x_t)
            frac = (v + 1.0) / 2.0
            log_variance = frac * max_log + (1.0 - frac) * min_log
            variance = jnp.exp(log_variance)
        elif self.model_var_type == "fixed_large":
            # beta_t, with beta~_1 at t = 0 (a better decoder variance), as improved-diffusion.
            large = np.concatenate([self.posterior_variance[1:2], self.betas[1:]])
            variance = self._extract(large, t, x_t)
            log_variance = self._extract(np.log(large), t, x_t)
        else:  # fixed_small
            variance = self._extract(self.posterior_variance, t, x_t)
            log_variance = self._extract(self.posterior_log_variance_clipped, t, x_t)

        if self.model_mean_type == "eps":
            pred_xstart = self.predict_xstart_from_eps(x_t, t, pred)
        else:
            pred_xstart = pred
        if clip_denoised:
            pred_xstart = jnp.clip(pred_xstart, -1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance,
                "pred_xstart": pred_xstart}

    # ---- losses ----------------------------------------------------------------------------

    def vb_terms_bpd(self, model_out, x0, x_t, t):
        """Variational bound term per sample, in bits: KL(q || p) for t > 0, decoder NLL at t = 0.

        model_out (B, ..., 2C), x0 / x_t (B, ..., C), t (B,) int. Returns (B,).
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(model_out, x_t, t)
        kl = normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])
        kl = _mean_flat(kl) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(
            x0, means=out["mean"], log_scales=0.5 * out["log_variance"])
        nll = _mean_flat(nll) / math.log(2.0)
        return jnp.where(t == 0, nll, kl)

    def loss_terms(self, model_out, x0, x_t, t, noise):
        """Per-sample loss terms for one forward pass.

        model_out (B, ..., C or 2C) at (x_t, t); x0, noise (B, ..., C); t (B,) int.
        Returns (loss (B,), mse (B,), vb (B,)). For 'hybrid' the VLB term sees the mean part
        of model_out under stop_gradient and is scaled by num_timesteps / 1000.
        """
        pred, v = self.split_model_output(model_out, x_t)
        target = noise if self.model_mean_type == "eps" else x0
        mse = _mean_flat((target.astype(pred.dtype) - pred) ** 2)
        if self.loss_type == "hybrid":
            frozen = jnp.concatenate([jax.lax.stop_gradient(pred), v], axis=-1)
            vb = self.vb_terms_bpd(frozen, x0, x_t, t) * (self.num_timesteps / 1000.0)
        else:
            vb = jnp.zeros_like(mse)
        return mse + vb, mse, vb

    def loss(self, model_fn: Callable, x0, rng, t_bins=None):
        """The training objective (interfaces.md).

        model_fn(x_t (B, ..., C), t_model (B,) float original timesteps) -> (B, ..., C or 2C).
        x0 (B, ..., C) clean data; rng a PRNG key; t_bins (B,) int in [0, T) or None (uniform).
        Returns (per-sample loss (B,), {"t_bins": (B,) int32, "mse": (B,), "vb": (B,)}).
        """
        x0 = jnp.asarray(x0)
        if x0.ndim < 2:
            raise ValueError(f"x0: expected (B, ..., C) with at least 2 dims, got shape {x0.shape}")
        if not jnp.issubdtype(x0.dtype, jnp.floating):
            raise TypeError(f"x0: expected a floating dtype, got {x0.dtype}")
        B = x0.shape[0]
        # The loss is computed in at least float32 whatever the data dtype.
        x0 = x0.astype(jnp.promote_types(x0.dtype, jnp.float32))
        rng_t, rng_noise = jax.random.split(rng)
        if t_bins is None:
            t = jax.random.randint(rng_t, (B,), 0, self.num_timesteps, dtype=jnp.int32)
        else:
            t = jnp.asarray(t_bins)
            if t.shape != (B,) or not jnp.issubdtype(t.dtype, jnp.integer):
                raise ValueError(f"t_bins: expected int (B,)=({B},), got {t.dtype} {t.shape}")
            t = t.astype(jnp.int32)
        noise = jax.random.normal(rng_noise, x0.shape, x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        model_out = model_fn(x_t, self.model_timesteps(t, x0.dtype))
        loss, mse, vb = self.loss_terms(model_out, x0, x_t, t, noise)
        return loss, {"t_bins": t, "mse": mse, "vb": vb}


    # ---- sampling: one step of each sampler ------------------------------------------------

    def for_sampler(self, sampler: str, steps: int) -> tuple["GaussianDiffusion", int]:
        """(the chain `sampler` runs for `steps` steps, its length): this process respaced,
        "ddimN" (a fixed stride) for 'ddim', "N" for 'ddpm'."""
        spec = f"ddim{steps}" if sampler == "ddim" else str(steps)
        try:
            chain = self.respace(spec)
        except ValueError as err:
            raise ValueError(f"steps: cannot respace the {self.num_timesteps}-step process "
                             f"to {steps} steps for sampler {sampler!r} ({err})") from None
        return chain, chain.num_timesteps

    def _reverse(self, model: Callable, x, i, clip_denoised: bool):
        """(t (B,) = i, p_mean_variance of the model's output at (x, index i))."""
        t = jnp.full((x.shape[0],), i, jnp.int32)
        out = self.p_mean_variance(model(x, self.model_timesteps(t, x.dtype)), x, t,
                                   clip_denoised=clip_denoised)
        return t, out

    def ddpm_step(self, model: Callable, x, i, noise, clip_denoised: bool = False):
        """Ancestral step from chain index i: x_{i-1} = mean + exp(log_var / 2)·noise, with no
        noise at i = 0. model(x, t_model (B,)) -> (B, ..., C or 2C); x, noise (B, ..., C);
        i a (traced) int. Returns x_{i-1} (B, ..., C)."""
        _, out = self._reverse(model, x, i, clip_denoised)
        keep = jnp.asarray(i > 0, x.dtype)
        return out["mean"] + keep * jnp.exp(0.5 * out["log_variance"]) * noise

    def ddim_step(self, model: Callable, x, i, noise, eta: float = 0.0,
                  clip_denoised: bool = False):
        """DDIM step from chain index i; eta = 0 deterministic, eta = 1 ~ DDPM:
        x_prev = sqrt(abar_prev) x0^ + sqrt(1 - abar_prev - sigma^2) eps^ + sigma noise,
        sigma = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev); no noise at
        i = 0. Arguments as `ddpm_step`. Returns x_{i-1} (B, ..., C)."""
        t, out = self._reverse(model, x, i, clip_denoised)
        eps = self.predict_eps_from_xstart(x, t, out["pred_xstart"])
        abar = self._extract(self.alphas_cumprod, t, x)
        abar_prev = self._extract(self.alphas_cumprod_prev, t, x)
        sigma = (eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar))
                 * jnp.sqrt(1.0 - abar / abar_prev))
        mean = (out["pred_xstart"] * jnp.sqrt(abar_prev)
                + jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma ** 2, 0.0)) * eps)
        keep = jnp.asarray(i > 0, x.dtype)
        return mean + keep * sigma * noise


def create_gaussian_diffusion(num_timesteps: int = 1000, schedule: str = "linear",
                              learn_sigma: bool = True, predict: str = "eps",
                              respacing=None, sigma_small: bool = False) -> GaussianDiffusion:
    """DiT's `create_diffusion`: linear/cosine betas, eps (or x0) prediction, learned-range
    variance with the hybrid loss (or a fixed variance with plain MSE: 'fixed_large', or
    'fixed_small' with sigma_small=True), optionally respaced ("250", "ddim50", "10,15,20", [..]).
    """
    if predict not in MEAN_TYPES:
        raise ValueError(f"predict: expected one of {MEAN_TYPES}, got {predict!r}")
    if learn_sigma:
        var_type, loss_type = "learned_range", "hybrid"
    else:
        var_type, loss_type = ("fixed_small" if sigma_small else "fixed_large"), "mse"
    diffusion = GaussianDiffusion(get_beta_schedule(schedule, num_timesteps),
                                  model_mean_type=predict, model_var_type=var_type,
                                  loss_type=loss_type)
    if respacing not in (None, ""):
        diffusion = diffusion.respace(respacing)
    return diffusion
