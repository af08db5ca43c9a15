"""RectifiedFlow: the regression target is v = x0 - noise (x0 the data) and t is drawn as
specified."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit3d_jax.diffusion.flow import RectifiedFlow, create_flow


def _oracle(x0, extra_channels=False):
    """Knows the data x0, so recovers v = x0 - noise exactly from x_t = t x0 + (1 - t) noise."""
    def model_fn(x_t, t_model):
        t = (t_model / 1000.0).reshape((-1,) + (1,) * (x_t.ndim - 1))
        v = (x0 - x_t) / (1.0 - t)
        return jnp.concatenate([v, 1e3 * jnp.ones_like(v)], -1) if extra_channels else v
    return model_fn


@pytest.mark.parametrize("extra_channels", [False, True])
def test_exact_velocity_gives_zero_loss_and_wrong_target_does_not(extra_channels):
    flow = RectifiedFlow()
    x0 = jax.random.uniform(jax.random.key(0), (64, 2, 4, 4, 3), minval=-1, maxval=1)
    t_bins = jnp.arange(0, 960, 15, dtype=jnp.int32)          # t < 0.96 keeps 1/(1-t) tame
    loss, aux = jax.jit(lambda k: flow.loss(_oracle(x0, extra_channels), x0, k, t_bins))(
        jax.random.key(1))
    assert loss.shape == (64,) and float(loss.max()) < 1e-8
    np.testing.assert_array_equal(np.asarray(aux["t_bins"]), np.asarray(t_bins))
    assert np.all(np.asarray(aux["vb"]) == 0) and np.array_equal(aux["mse"], loss)
    # the opposite sign (noise - x0) is far from zero: the loss measures the target, not noise
    flipped = lambda x, t: -_oracle(x0)(x, t)
    wrong, _ = flow.loss(flipped, x0, jax.random.key(1), t_bins)
    assert float(wrong.min()) > 0.5


def test_t_from_bins_lies_in_the_bin_and_model_sees_1000_t():
    flow = create_flow(num_timesteps=50)
    seen = []

    def model_fn(x_t, t_model):
        seen.append(np.asarray(t_model))
        return jnp.zeros_like(x_t)

    bins = jnp.array([0, 7, 49, 25], jnp.int32)
    flow.loss(model_fn, jnp.zeros((4, 3, 2)), jax.random.key(0), bins)
    t = seen[0] / 1000.0
    assert np.all(t >= np.asarray(bins) / 50) and np.all(t <= (np.asarray(bins) + 1) / 50)


def test_uniform_t_and_its_bins():
    flow = RectifiedFlow(num_bins=100)
    seen = []
    x = jnp.zeros((4096, 1))
    _, aux = flow.loss(lambda x_t, t: seen.append(np.asarray(t)) or x_t, x, jax.random.key(0))
    t = seen[0] / 1000.0
    assert 0 <= t.min() and t.max() < 1 and abs(t.mean() - 0.5) < 0.02
    np.testing.assert_array_equal(np.asarray(aux["t_bins"]), np.floor(t * 100).astype(np.int32))


def test_logit_normal_t_is_in_open_interval_with_the_given_logit_moments():
    flow = RectifiedFlow(t_sampling="logit_normal", ln_mean=0.5, ln_std=0.8)
    t = np.asarray(flow.sample_t(jax.random.key(0), 20000), np.float64)
    assert 0 < t.min() and t.max() < 1
    logit = np.log(t / (1 - t))
    # 20000 draws: standard errors 0.006 (mean) and 0.004 (std); tolerance ~5 SE
    assert abs(logit.mean() - 0.5) < 0.03 and abs(logit.std() - 0.8) < 0.02


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="t_sampling"):
        RectifiedFlow(t_sampling="beta")
    with pytest.raises(ValueError, match="num_bins"):
        RectifiedFlow(num_bins=0)
    with pytest.raises(ValueError, match="model_out"):
        RectifiedFlow().loss(lambda x, t: x[..., :1], jnp.zeros((2, 3)), jax.random.key(0))


def test_gaussian_objective_refuses_a_t_sampling_it_would_ignore():
    from dit3d_jax.diffusion.objective import make_objective
    with pytest.raises(ValueError, match=r"objective.t_sampling: .*gaussian.*'logit_normal'"):
        make_objective({"name": "gaussian", "t_sampling": "logit_normal"}, learn_sigma=True)
    assert make_objective({"name": "flow", "t_sampling": "logit_normal"},
                          learn_sigma=True).t_sampling == "logit_normal"


def test_euler_and_heun_steps_follow_their_formulas():
    """dx/dt = v with the model v(x, t_model) = x + t_model / 1000 (t in [0, 1])."""
    flow = RectifiedFlow()
    assert flow.samplers == ("euler", "heun") and flow.for_sampler("heun", 7) == (flow, 7)
    model = lambda x, t_model: x + (t_model / 1000.0)[:, None]
    x, t, dt = jnp.array([[0.5, -1.0]]), 0.25, 0.125
    np.testing.assert_allclose(flow.euler_step(model, x, t, dt), x + dt * (x + t), rtol=1e-6)
    v1 = x + t
    v2 = (x + dt * v1) + (t + dt)
    np.testing.assert_allclose(flow.heun_step(model, x, t, dt), x + 0.5 * dt * (v1 + v2),
                               rtol=1e-6)
