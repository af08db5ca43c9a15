"""GaussianDiffusion against an independent float64 NumPy reference of DiT's diffusion math.

The reference below is written from the formulas (Ho et al. 2020; Nichol & Dhariwal 2021;
DiT's defaults), not from the module: the posterior comes from multiplying the two Gaussians
(Bayes), the KL from the textbook closed form, x0 from inverting x_t = sqrt(abar) x0 +
sqrt(1 - abar) eps. All parity checks run with jax_enable_x64 on and ask <= 1e-6 relative.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit3d_jax.diffusion.flow import RectifiedFlow
from dit3d_jax.diffusion.gaussian import (
    GaussianDiffusion,
    create_gaussian_diffusion,
    get_beta_schedule,
    space_timesteps,
)

RTOL = 1e-6


@pytest.fixture
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


# ---- the reference (float64 NumPy) --------------------------------------------------------

def ref_betas(name, T):
    if name == "linear":  # DDPM's 1e-4 .. 0.02 over 1000 steps, rescaled to T steps
        return np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
    f = lambda s: np.cos((s / T + 0.008) / 1.008 * np.pi / 2) ** 2
    abar = f(np.arange(T + 1)) / f(0)
    return np.minimum(1 - abar[1:] / abar[:-1], 0.999)


class Ref:
    """DDPM quantities for a chain with betas `betas` (index i = step i of that chain)."""

    def __init__(self, betas):
        self.b = np.asarray(betas, np.float64)
        self.abar = np.cumprod(1 - self.b)
        self.abar_prev = np.concatenate([[1.0], self.abar[:-1]])

    def col(self, arr, t, ndim):
        return arr[t].reshape((-1,) + (1,) * (ndim - 1))

    def q_sample(self, x0, t, eps):
        a = self.col(self.abar, t, x0.ndim)
        return np.sqrt(a) * x0 + np.sqrt(1 - a) * eps

    def posterior(self, x0, xt, t):
        """q(x_{t-1}|x_t,x0) ∝ N(x_t; sqrt(1-b) x_{t-1}, b) N(x_{t-1}; sqrt(ap) x0, 1-ap),
        ap = abar_prev: multiply the Gaussians (add precisions)."""
        b, ap = self.col(self.b, t, x0.ndim), self.col(self.abar_prev, t, x0.ndim)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = (1 - b) / b + 1 / (1 - ap)
            var = 1 / precision
            mean = var * (np.sqrt(1 - b) * xt / b + np.sqrt(ap) * x0 / (1 - ap))
        var = np.where(ap == 1.0, 0.0, var)           # t = 0: the posterior is a point mass at x0
        mean = np.where(ap == 1.0, x0, mean)
        return mean, var

    def post_var(self, t):
        return self.b[t] * (1 - self.abar_prev[t]) / (1 - self.abar[t])

    def log_var_clipped(self, t):
        return np.log(self.post_var(np.maximum(t, 1)))  # beta~_0 = 0 is replaced by beta~_1

    def learned_log_var(self, v, t, ndim):
        frac = (v + 1) / 2
        return (frac * self.col(np.log(self.b), t, ndim)
                + (1 - frac) * self.col(self.log_var_clipped(np.arange(len(self.b))), t, ndim))

    def x0_from_eps(self, xt, t, eps):
        a = self.col(self.abar, t, xt.ndim)
        return (xt - np.sqrt(1 - a) * eps) / np.sqrt(a)


def ref_kl(m1, v1, m2, v2):
    return 0.5 * np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5


def ref_phi(x):  # PixelCNN++ / improved-diffusion tanh approximation of the normal CDF
    return 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def ref_decoder_nll(x, mean, std):
    upper = np.where(x > 0.999, 1.0, ref_phi((x + 1 / 255 - mean) / std))
    lower = np.where(x < -0.999, 0.0, ref_phi((x - 1 / 255 - mean) / std))
    return -np.log(np.maximum(upper - lower, 1e-12))


def ref_hybrid(ref, x0, xt, t, out, T):
    """(mse, vb in bits scaled by T/1000) per sample for eps prediction with learned range."""
    C = x0.shape[-1]
    eps_hat, v = out[..., :C], out[..., C:]
    eps = (xt - np.sqrt(ref.col(ref.abar, t, x0.ndim)) * x0) / np.sqrt(
        1 - ref.col(ref.abar, t, x0.ndim))
    axes = tuple(range(1, x0.ndim))
    mse = np.mean((eps - eps_hat) ** 2, axis=axes)
    true_mean, true_var = ref.posterior(x0, xt, t)
    model_mean, _ = ref.posterior(ref.x0_from_eps(xt, t, eps_hat), xt, t)
    model_var = np.exp(ref.learned_log_var(v, t, x0.ndim))
    true_var = np.where(true_var == 0, np.exp(ref.col(ref.log_var_clipped(t), np.arange(len(t)),
                                                      x0.ndim)), true_var)
    kl = np.mean(ref_kl(true_mean, true_var, model_mean, model_var), axis=axes) / np.log(2)
    nll = np.mean(ref_decoder_nll(x0, model_mean, np.sqrt(model_var)), axis=axes) / np.log(2)
    vb = np.where(t == 0, nll, kl) * T / 1000
    return mse, vb


# ---- schedules and respacing --------------------------------------------------------------

@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", [1000, 200])
def test_beta_schedules_match_formulas(name, T):
    betas = get_beta_schedule(name, T)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    np.testing.assert_allclose(betas, ref_betas(name, T), rtol=1e-10, atol=0)


def test_linear_schedule_endpoints_are_dit_defaults():
    betas = get_beta_schedule("linear", 1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert get_beta_schedule("cosine", 1000).max() == pytest.approx(0.999)


def test_space_timesteps_known_spacings():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))
    assert space_timesteps(1000, "250") == [int(round(k * 999 / 249)) for k in range(250)]
    assert space_timesteps(1000, "1000") == list(range(1000))
    # sections [0,34) [34,67) [67,100) with 10 / 15 / 20 evenly spaced steps each
    kept = space_timesteps(100, "10,15,20")
    assert kept == space_timesteps(100, [10, 15, 20]) and len(kept) == 45
    assert kept[:10] == [round(k * 33 / 9) for k in range(10)]
    assert kept[10:25] == [34 + round(k * 32 / 14) for k in range(15)]
    assert kept[25:] == [67 + round(k * 32 / 19) for k in range(20)]


@pytest.mark.parametrize("spec", ["ddim30", "x", "20,200", [0]])
def test_space_timesteps_rejects_bad_specs(spec):
    with pytest.raises(ValueError, match="spec"):
        space_timesteps(100, spec)


def test_bad_names_raise_naming_the_argument():
    with pytest.raises(ValueError, match="schedule"):
        create_gaussian_diffusion(schedule="quadratic")
    with pytest.raises(ValueError, match="predict"):
        create_gaussian_diffusion(predict="v")
    with pytest.raises(ValueError, match="loss_type"):
        GaussianDiffusion(get_beta_schedule("linear", 100), model_var_type="fixed_small")


@pytest.mark.parametrize("spec", ["ddim50", "250", "10,15,20"])
def test_respacing_keeps_alphas_cumprod_and_maps_to_original_steps(spec):
    base = create_gaussian_diffusion(1000)
    spaced = base.respace(spec)
    kept = np.asarray(space_timesteps(1000, spec))
    abar = np.cumprod(1 - ref_betas("linear", 1000))[kept]
    ref_betas_spaced = 1 - abar / np.concatenate([[1.0], abar[:-1]])
    np.testing.assert_allclose(spaced.betas, ref_betas_spaced, rtol=1e-12)
    np.testing.assert_allclose(spaced.alphas_cumprod, abar, rtol=1e-10)
    np.testing.assert_array_equal(spaced.timestep_map, kept)
    np.testing.assert_array_equal(
        np.asarray(spaced.model_timesteps(jnp.arange(len(kept)))), kept.astype(np.float32))
    # respacing a respaced process composes the maps
    twice = create_gaussian_diffusion(1000, respacing="100").respace("ddim10")
    np.testing.assert_array_equal(twice.timestep_map,
                                  np.asarray(space_timesteps(1000, "100"))[::10])


# ---- forward process, posterior, learned variance ----------------------------------------

def _data(B=6, shape=(2, 3, 4), seed=0):
    r = np.random.default_rng(seed)
    x0 = np.clip(r.normal(0, 0.6, (B,) + shape), -1, 1)
    x0[0, 0, 0] = [-1.0, 1.0, -1.0, 1.0]          # the edge bins of the decoder
    return x0, r.normal(size=(B,) + shape), r


def test_q_sample_and_posterior_match_reference(x64):
    d = create_gaussian_diffusion(1000)
    ref = Ref(ref_betas("linear", 1000))
    x0, eps, r = _data()
    t = np.array([0, 1, 2, 500, 998, 999])
    xt = np.asarray(d.q_sample(jnp.asarray(x0), jnp.asarray(t), jnp.asarray(eps)))
    assert xt.dtype == np.float64
    np.testing.assert_allclose(xt, ref.q_sample(x0, t, eps), rtol=RTOL)

    mean, var, log_var = d.q_posterior_mean_variance(jnp.asarray(x0), jnp.asarray(xt),
                                                     jnp.asarray(t))
    ref_mean, ref_var = ref.posterior(x0, xt, t)
    np.testing.assert_allclose(np.asarray(mean), ref_mean, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(np.asarray(var).reshape(-1), ref_var[:, 0, 0, 0], rtol=RTOL,
                               atol=1e-15)
    np.testing.assert_allclose(np.asarray(log_var).reshape(-1), ref.log_var_clipped(t), rtol=RTOL)


@pytest.mark.parametrize("var_type", ["learned_range", "fixed_small", "fixed_large"])
@pytest.mark.parametrize("mean_type", ["eps", "x0"])
def test_p_mean_variance_matches_reference(x64, var_type, mean_type):
    d = GaussianDiffusion(get_beta_schedule("cosine", 300), model_mean_type=mean_type,
                          model_var_type=var_type,
                          loss_type="hybrid" if var_type == "learned_range" else "mse")
    ref = Ref(ref_betas("cosine", 300))
    x0, eps, r = _data()
    t = np.array([0, 1, 7, 150, 298, 299])
    xt = ref.q_sample(x0, t, eps)
    pred = r.normal(size=x0.shape)
    v = r.uniform(-1, 1, x0.shape)
    out = np.concatenate([pred, v], -1) if var_type == "learned_range" else pred
    got = d.p_mean_variance(jnp.asarray(out), jnp.asarray(xt), jnp.asarray(t))

    x0_hat = ref.x0_from_eps(xt, t, pred) if mean_type == "eps" else pred
    ref_mean, _ = ref.posterior(x0_hat, xt, t)
    if var_type == "learned_range":
        ref_log_var = ref.learned_log_var(v, t, x0.ndim)
    elif var_type == "fixed_small":
        ref_log_var = ref.col(ref.log_var_clipped(t), np.arange(6), x0.ndim)
    else:
        large = np.where(t == 0, ref.post_var(np.ones_like(t)), ref.b[t])
        ref_log_var = np.log(ref.col(large, np.arange(6), x0.ndim))
    np.testing.assert_allclose(np.asarray(got["pred_xstart"]), x0_hat, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(got["mean"]), ref_mean, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(np.broadcast_to(np.asarray(got["log_variance"]), x0.shape),
                               np.broadcast_to(ref_log_var, x0.shape), rtol=RTOL)


# ---- the hybrid loss -----------------------------------------------------------------------

def _recording_model(records):
    """Deterministic eager model: eps^ = 0.9 x_t + 0.001 t, v = tanh(x_t / 2 + 0.1); records IO."""
    def model_fn(x_t, t_model):
        tb = t_model.reshape((-1,) + (1,) * (x_t.ndim - 1))
        out = jnp.concatenate([0.9 * x_t + 0.001 * tb, jnp.tanh(0.5 * x_t + 0.1)], -1)
        records.append((np.asarray(x_t), np.asarray(t_model), np.asarray(out)))
        return out
    return model_fn


@pytest.mark.parametrize("T,respacing", [(1000, None), (200, None), (1000, "10")])
def test_hybrid_loss_matches_reference(x64, T, respacing):
    d = create_gaussian_diffusion(T, respacing=respacing)
    kept = np.asarray(space_timesteps(T, respacing)) if respacing else np.arange(T)
    abar = np.cumprod(1 - ref_betas("linear", T))[kept]
    ref = Ref(1 - abar / np.concatenate([[1.0], abar[:-1]]))
    n = d.num_timesteps
    assert d.num_bins == n
    x0, _, _ = _data()
    t_bins = np.array([0, 0, 1, n // 2, n - 2, n - 1], np.int32)   # t = 0 is the decoder NLL
    records = []
    loss, aux = d.loss(_recording_model(records), jnp.asarray(x0), jax.random.key(3),
                       t_bins=jnp.asarray(t_bins))
    (xt, t_model, out), = records
    np.testing.assert_array_equal(t_model, kept[t_bins])       # the model sees original steps
    np.testing.assert_array_equal(np.asarray(aux["t_bins"]), t_bins)
    ref_mse, ref_vb = ref_hybrid(ref, x0, xt, t_bins, out, n)
    np.testing.assert_allclose(np.asarray(aux["mse"]), ref_mse, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(aux["vb"]), ref_vb, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(loss), ref_mse + ref_vb, rtol=RTOL)
    assert np.all(ref_vb > 0) and loss.shape == (6,)


def test_loss_draws_uniform_t_and_stays_float32_by_default():
    d = create_gaussian_diffusion(1000)
    x0 = jnp.zeros((512, 2, 2, 1), jnp.float32)
    model_fn = lambda x, t: jnp.concatenate([x, jnp.zeros_like(x)], -1)
    loss, aux = jax.jit(lambda x, k: d.loss(model_fn, x, k))(x0, jax.random.key(0))
    assert loss.dtype == jnp.float32 and aux["t_bins"].dtype == jnp.int32
    t = np.asarray(aux["t_bins"])
    assert t.min() >= 0 and t.max() < 1000 and 400 < t.mean() < 600 and len(set(t)) > 350


def test_vlb_trains_only_the_variance_and_mse_only_the_mean():
    d = create_gaussian_diffusion(1000)
    x0 = jax.random.uniform(jax.random.key(1), (4, 3, 3, 2), minval=-1, maxval=1)
    t_bins = jnp.array([0, 5, 300, 999])

    def term(w, name):
        _, aux = d.loss(lambda x, t: w * jnp.ones_like(jnp.concatenate([x, x], -1)), x0,
                        jax.random.key(2), t_bins=t_bins)
        return aux[name].sum()

    w = jnp.full((4, 3, 3, 4), 0.3)
    grad = jax.jit(jax.grad(term), static_argnums=1)
    g_vb, g_mse = grad(w, "vb"), grad(w, "mse")
    assert np.all(np.asarray(g_vb[..., :2]) == 0) and np.abs(g_vb[..., 2:]).sum() > 0
    assert np.all(np.asarray(g_mse[..., 2:]) == 0) and np.abs(g_mse[..., :2]).sum() > 0


def test_mse_loss_for_fixed_variance_and_x0_prediction(x64):
    d = create_gaussian_diffusion(100, learn_sigma=False, predict="x0")
    x0, _, _ = _data()
    seen = []

    def model_fn(x_t, t_model):
        seen.append(np.asarray(x_t))
        return 0.5 * x_t

    loss, aux = d.loss(model_fn, jnp.asarray(x0), jax.random.key(0))
    np.testing.assert_allclose(np.asarray(loss), np.mean((x0 - 0.5 * seen[0]) ** 2, axis=(1, 2, 3)),
                               rtol=RTOL)
    assert np.all(np.asarray(aux["vb"]) == 0)


def test_model_output_channel_errors_name_model_out():
    d = create_gaussian_diffusion(100)
    with pytest.raises(ValueError, match="model_out"):
        d.loss(lambda x, t: x, jnp.zeros((2, 4, 4, 3)), jax.random.key(0))
    with pytest.raises(ValueError, match="t_bins"):
        d.loss(lambda x, t: x, jnp.zeros((2, 4, 4, 3)), jax.random.key(0),
               t_bins=jnp.zeros((3,), jnp.int32))


def test_step_rules_add_noise_except_at_index_0_and_ddim_eta_0_ignores_it():
    d = create_gaussian_diffusion(100, learn_sigma=False)
    assert d.samplers == ("ddpm", "ddim") and "ddpm" not in RectifiedFlow.samplers
    model = lambda x, t: 0.3 * x + 0.01 * t[:, None]
    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    a, b = jnp.zeros_like(x), jnp.ones_like(x)
    for step in (d.ddpm_step, lambda *args: d.ddim_step(*args, eta=1.0)):
        np.testing.assert_array_equal(step(model, x, 0, a), step(model, x, 0, b))
        assert float(jnp.abs(step(model, x, 5, a) - step(model, x, 5, b)).min()) > 1e-3
    np.testing.assert_array_equal(d.ddim_step(model, x, 5, a), d.ddim_step(model, x, 5, b))
    chain, n = d.for_sampler("ddim", 5)
    assert n == chain.num_timesteps == 5 and list(chain.timestep_map) == [0, 20, 40, 60, 80]
