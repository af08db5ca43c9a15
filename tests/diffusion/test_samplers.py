"""Samplers reproduce a known data distribution when driven by the exact optimal model, and
classifier-free guidance is batched (one model call on 2B rows per evaluation).

Data: x ~ N(MU, S^2) independently per channel (C = 3). For x_t = a x0 + b eps with
a = sqrt(abar_t), b = sqrt(1 - abar_t), (x_t, eps, x0) are jointly Gaussian, so
    E[eps | x_t] = b (x_t - a MU) / (a^2 S^2 + b^2),   Var[x0 | x_t] = S^2 b^2 / (a^2 S^2 + b^2);
for the flow x_t = t x0 + (1 - t) noise (x0 data, as in training) the optimal velocity is
    E[x0 - noise | x_t] = MU + (t S^2 - (1 - t)) (x_t - t MU) / (t^2 S^2 + (1 - t)^2).
The oracles compute abar from their own float64 linear schedule and the original timestep they
are called with, so a wrong timestep map breaks them.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit3d_jax.diffusion import RectifiedFlow, create_gaussian_diffusion, sample
from dit3d_jax.diffusion.samplers import ddim_loop, ddpm_loop

MU = np.array([0.5, -0.3, 0.0])
S = np.array([0.5, 1.0, 0.8])
N = 32768                                     # samples; SE(mean) = S/181, SE(var) = S^2 * 0.0078
SE_MEAN, SE_VAR = S / np.sqrt(N), S ** 2 * np.sqrt(2 / N)
ABAR = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))   # DiT's 1000-step linear schedule
MU_J, S2_J = jnp.asarray(MU, jnp.float32), jnp.asarray(S ** 2, jnp.float32)


def _moments(x):
    x = np.asarray(x, np.float64).reshape(-1, 3)
    return x.mean(0), x.var(0)


def eps_oracle(prev_of=None):
    """apply_fn(params, x (B, C), t (B,) original steps) -> (B, 2C): optimal eps, and the v that
    makes the learned-range variance the exact reverse variance beta~' + c1'^2 Var[x0 | x_t]
    of the respaced chain (prev_of[t] = previous kept original step, -1 for none)."""
    abar = jnp.asarray(ABAR, jnp.float32)

    def apply_fn(params, x, t, **cond):
        t = t.astype(jnp.int32)
        a2 = abar[t][:, None]
        a, b2 = jnp.sqrt(a2), 1.0 - a2
        eps = jnp.sqrt(b2) * (x - a * MU_J) / (a2 * S2_J + b2)
        if prev_of is None:
            return jnp.concatenate([eps, jnp.zeros_like(eps)], -1)
        p = prev_of[t][:, None]
        ap = jnp.where(p >= 0, abar[jnp.maximum(p, 0)], 1.0)
        beta = 1.0 - a2 / ap
        post_var = beta * (1.0 - ap) / b2
        c1 = beta * jnp.sqrt(ap) / b2
        exact = post_var + c1 ** 2 * S2_J * b2 / (a2 * S2_J + b2)
        lo, hi = jnp.log(jnp.maximum(post_var, 1e-30)), jnp.log(beta)
        frac = jnp.where(p >= 0, (jnp.log(exact) - lo) / (hi - lo), 0.5)
        return jnp.concatenate([eps, 2.0 * frac - 1.0], -1)

    return apply_fn


def velocity_oracle(params, x, t, **cond):
    t = (t / 1000.0)[:, None]
    var = t ** 2 * S2_J + (1 - t) ** 2
    return MU_J + (t * S2_J - (1 - t)) * (x - t * MU_J) / var


def test_ddpm_respaced_with_exact_model_reproduces_the_data_distribution():
    steps = 100
    kept = np.round(np.linspace(0, 999, steps)).astype(int)   # "100" spacing (no .5 ties here)
    prev_of = np.full(1000, -1)
    prev_of[kept[1:]] = kept[:-1]
    x = sample(eps_oracle(jnp.asarray(prev_of)), None, (N, 3), None, jax.random.key(0),
               objective=create_gaussian_diffusion(1000), sampler="ddpm", steps=steps,
               progress=False)
    mean, var = _moments(x)
    # ancestral steps are exact for Gaussian data; only x_T ~ N(0, I) and the final noiseless
    # step (losing Var[x0 | x_t0] ~ 1e-4) deviate: 4 SE + 0.002 allowance.
    np.testing.assert_array_less(np.abs(mean - MU), 4 * SE_MEAN + 2e-3)
    np.testing.assert_array_less(np.abs(var - S ** 2), 4 * SE_VAR + 2e-3)


def test_ddim_deterministic_with_exact_model_reproduces_the_data_distribution():
    steps = 50
    x = sample(eps_oracle(), None, (N, 3), None, jax.random.key(1),
               objective=create_gaussian_diffusion(1000), sampler="ddim", steps=steps, eta=0.0,
               progress=False)
    mean, var = _moments(x)
    # DDIM (eta=0) is Euler on the probability-flow ODE: with the exact eps it keeps the mean
    # and shrinks the variance by prod_k cos^2(theta_k - theta_{k-1}), theta = atan(b / (a S)),
    # over the 'ddim50' grid (0, 20, ..., 980 then abar = 1). Closed form:
    grid = np.concatenate([[1.0], ABAR[::20]])            # abar after, before each step
    theta = np.arctan2(np.sqrt(1 - grid)[:, None], np.sqrt(grid)[:, None] * S)
    shrink = np.prod(np.cos(np.diff(theta, axis=0)) ** 2, axis=0)
    assert np.all(np.abs(shrink - 1) < 0.11)              # 7-11% discretisation shrink
    np.testing.assert_array_less(np.abs(mean - MU), 4 * SE_MEAN + 1e-3)
    np.testing.assert_array_less(np.abs(var - S ** 2 * shrink), 4 * SE_VAR + 2e-3)


@pytest.mark.parametrize("sampler,steps,allowance", [("heun", 30, 3e-3), ("euler", 100, 0.03)])
def test_flow_ode_with_exact_velocity_reproduces_the_data_distribution(sampler, steps, allowance):
    x = sample(velocity_oracle, None, (N, 3), None, jax.random.key(2), objective=RectifiedFlow(),
               sampler=sampler, steps=steps, progress=False)
    mean, var = _moments(x)
    # Heun is 2nd order (30 steps: error << 1e-3); Euler 1st order (100 steps: a few %).
    np.testing.assert_array_less(np.abs(mean - MU), 4 * SE_MEAN + allowance)
    np.testing.assert_array_less(np.abs(var - S ** 2), 4 * SE_VAR + allowance)


def test_ddim_with_eta_one_is_ddpm_with_posterior_variance():
    # sigma_t(eta=1)^2 = beta~_t, and then the DDIM mean equals the posterior mean: same noise
    # draws -> the same samples.
    d = create_gaussian_diffusion(1000, learn_sigma=False, sigma_small=True, respacing="ddim20")
    model = lambda x, t: 0.3 * x + 0.001 * t[:, None]
    x_T = jax.random.normal(jax.random.key(0), (64, 3))
    a = jax.jit(lambda k: ddpm_loop(model, d, x_T, k))(jax.random.key(1))
    b = jax.jit(lambda k: ddim_loop(model, d, x_T, k, eta=1.0))(jax.random.key(1))
    c = jax.jit(lambda k: ddim_loop(model, d, x_T, k, eta=0.0))(jax.random.key(1))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    assert float(jnp.abs(a - c).max()) > 0.1


# ---- classifier-free guidance ------------------------------------------------------------

def _toy_model(calls):
    """Output depends on y and force_drop; records the batch size of each runtime call."""
    table = jnp.array([[0.3, -0.2, 0.5, 0.1], [-0.4, 0.6, 0.2, -0.3], [0.0, 0.0, 0.0, 0.0]])

    def apply_fn(params, x, t, y, force_drop=None):
        jax.debug.callback(lambda n: calls.append(int(n)), x.shape[0])
        drop = jnp.zeros(x.shape[0], bool) if force_drop is None else force_drop
        emb = table[jnp.where(drop, 2, y)]                    # row 2: the null class
        eps = params * x + emb + 1e-4 * t[:, None]
        v = jnp.tanh(x + emb)
        return jnp.concatenate([eps, v], -1)

    return apply_fn


def _two_pass_reference(scale, guidance_channels=4):
    """Guidance written out with two separate calls (cond, then force_drop) per evaluation."""
    inner = _toy_model([])

    def apply_fn(params, x, t, y):
        B = x.shape[0]
        c = inner(params, x, t, y, force_drop=jnp.zeros(B, bool))
        u = inner(params, x, t, y, force_drop=jnp.ones(B, bool))
        g = guidance_channels
        return jnp.concatenate([u[:, :g] + scale * (c[:, :g] - u[:, :g]), c[:, g:]], -1)

    return apply_fn


@pytest.mark.parametrize("sampler,objective,evals_per_step,guidance_channels",
                         [("ddpm", create_gaussian_diffusion(100), 1, None),
                          ("ddim", create_gaussian_diffusion(100), 1, 3),
                          ("heun", RectifiedFlow(), 2, None)])
def test_batched_cfg_equals_two_passes_with_one_call_per_evaluation(
        sampler, objective, evals_per_step, guidance_channels):
    B, steps, scale = 5, 10, 4.0
    y = jnp.array([0, 1, 1, 0, 1])
    calls = []
    kw = dict(objective=objective, sampler=sampler, steps=steps, progress=False)
    got = sample(_toy_model(calls), jnp.float32(0.9), (B, 4), {"y": y}, jax.random.key(0),
                 cfg_scale=scale, guidance_channels=guidance_channels, **kw)
    want = sample(_two_pass_reference(scale, guidance_channels or 4), jnp.float32(0.9), (B, 4),
                  {"y": y}, jax.random.key(0), **kw)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    jax.effects_barrier()
    assert calls == [2 * B] * (steps * evals_per_step)       # one call on 2B rows, never two
    # guidance changes the result, and cfg_scale=1 uses B rows, one call per evaluation
    calls.clear()
    plain = sample(_toy_model(calls), jnp.float32(0.9), (B, 4), {"y": y}, jax.random.key(0),
                   cfg_scale=1.0, **kw)
    jax.effects_barrier()
    assert calls == [B] * (steps * evals_per_step)
    assert float(jnp.abs(plain - got).max()) > 1e-2


def test_dit_guidance_quirk_leaves_channels_past_3_conditional():
    from dit3d_jax.diffusion.samplers import guided_model
    x, t, y = jnp.ones((2, 4)), jnp.array([5.0, 5.0]), jnp.array([0, 1])
    apply_fn = _toy_model([])
    c = apply_fn(0.9, x, t, y, force_drop=jnp.zeros(2, bool))
    u = apply_fn(0.9, x, t, y, force_drop=jnp.ones(2, bool))
    model = guided_model(apply_fn, 0.9, {"y": y}, channels=4, cfg_scale=2.0, guidance_channels=3)
    out = model(x, t)
    np.testing.assert_allclose(out[:, :3], u[:, :3] + 2.0 * (c[:, :3] - u[:, :3]), rtol=1e-6)
    np.testing.assert_allclose(out[:, 3:], c[:, 3:], rtol=1e-6)


def test_progress_reports_steps_on_stderr(capsys):
    sample(velocity_oracle, None, (4, 3), None, jax.random.key(0), objective=RectifiedFlow(),
           sampler="euler", steps=7, progress=True)
    err = capsys.readouterr().err
    assert "7/7" in err


def test_bad_arguments_name_themselves():
    kw = dict(objective=RectifiedFlow(), progress=False)
    with pytest.raises(ValueError, match="sampler"):
        sample(velocity_oracle, None, (2, 3), None, jax.random.key(0), sampler="dpm", **kw)
    with pytest.raises(TypeError, match="objective"):
        sample(velocity_oracle, None, (2, 3), None, jax.random.key(0), sampler="ddpm", **kw)
    with pytest.raises(ValueError, match="steps"):
        sample(velocity_oracle, None, (2, 3), None, jax.random.key(0), sampler="heun", steps=0,
               **kw)
    with pytest.raises(ValueError, match="steps"):
        sample(velocity_oracle, None, (2, 3), None, jax.random.key(0), sampler="ddim", steps=30,
               objective=create_gaussian_diffusion(100), progress=False)
    with pytest.raises(ValueError, match=r"cond\['y'\]"):
        sample(velocity_oracle, None, (2, 3), {"y": jnp.zeros(3, int)}, jax.random.key(0),
               sampler="heun", **kw)


def test_repeated_calls_reuse_the_compiled_loop():
    traces = []

    def apply_fn(params, x, t, **cond):
        traces.append(x.shape)  # runs only while tracing
        return jnp.zeros_like(x)
    flow = RectifiedFlow()
    outs = [sample(apply_fn, None, (2, 3), None, jax.random.key(i), objective=flow,
                   sampler="euler", steps=4, progress=False) for i in range(3)]
    assert len(traces) == 1
    assert not np.allclose(np.asarray(outs[0]), np.asarray(outs[1]))  # new noise each call


# DiT's forward_with_cfg (facebookresearch/DiT models.py), written from its description in float64
# NumPy on NCHW arrays: the model runs on [x; x] with labels [y; null]; eps = the first 3 output
# channels, rest = the others (the 4th eps channel and the learned-sigma channels); the guided
# eps (uncond + s·(cond − uncond)) replaces eps in BOTH halves, rest stays per half. DiT's
# sample.py keeps the first half, so its chain sees [guided eps[:3], cond eps[3], cond sigma].

def _dit_forward_with_cfg(forward, x, t, y, scale, guided=3):
    half = x[: len(x) // 2]
    out = forward(np.concatenate([half, half]), t, y)
    eps, rest = out[:, :guided], out[:, guided:]
    cond_eps, uncond_eps = np.split(eps, 2)
    half_eps = uncond_eps + scale * (cond_eps - uncond_eps)
    return np.concatenate([np.concatenate([half_eps, half_eps]), rest], axis=1)


def test_guidance_channels_3_is_dits_forward_with_cfg_against_float64_numpy():
    C, B, scale = 4, 3, 4.0
    rng = np.random.default_rng(0)
    table = rng.normal(size=(4, 2 * C))                    # rows 0..2 classes, row 3 the null
    weight = rng.normal(size=(2 * C, C))

    def forward_nchw(x, t, y):                             # float64 NumPy "DiT", learned sigma
        mixed = np.einsum("oc,nchw->nohw", weight, x)
        return np.tanh(mixed + table[y][:, :, None, None]) + 1e-3 * t[:, None, None, None]

    def apply_fn(params, x, t, y, force_drop):             # the same model, JAX, channels last
        rows = jnp.asarray(table, jnp.float32)[jnp.where(force_drop, 3, y)]
        mixed = jnp.einsum("oc,nhwc->nhwo", jnp.asarray(weight, jnp.float32), x)
        return jnp.tanh(mixed + rows[:, None, None]) + 1e-3 * t[:, None, None, None]

    x = rng.normal(size=(B, C, 5, 5))
    t = np.array([10.0, 500.0, 999.0])
    y = np.array([0, 2, 1])
    want = _dit_forward_with_cfg(forward_nchw, np.concatenate([x, x]), np.concatenate([t, t]),
                                 np.concatenate([y, np.full(B, 3)]), scale)[:B]
    from dit3d_jax.diffusion.samplers import guided_model
    for g, reference in ((3, want), (None, None)):
        model = guided_model(apply_fn, None, {"y": jnp.asarray(y)}, channels=C, cfg_scale=scale,
                             guidance_channels=g)
        got = np.asarray(model(jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32),
                               jnp.asarray(t, jnp.float32))).transpose(0, 3, 1, 2)
        if reference is not None:
            np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)
        else:  # all C channels guided: channel 3 differs from DiT's (it is guided too)
            assert np.abs(got[:, 3] - want[:, 3]).max() > 1e-2
            np.testing.assert_allclose(got[:, :3], want[:, :3], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got[:, C:], want[:, C:], rtol=1e-5, atol=1e-5)
