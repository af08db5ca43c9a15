"""The loss-second-moment timestep sampler against a sequential NumPy reference.

The reference follows improved-diffusion's description: per timestep a shift register of the last
K losses, filled one sample at a time; uniform sampling until every timestep holds K; then
p ∝ sqrt(mean(hist²)) mixed with uniform_prob, and weights 1 / (T·p_t).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit3d_jax.diffusion import importance


class RefSampler:
    """improved-diffusion's LossSecondMomentResampler, sample by sample, float64."""

    def __init__(self, T, K, uniform_prob):
        self.T, self.K, self.u = T, K, uniform_prob
        self.hist = np.zeros((T, K))
        self.count = np.zeros(T, int)

    def push(self, ts, losses):
        for t, loss in zip(ts, losses):
            if self.count[t] == self.K:
                self.hist[t, :-1] = self.hist[t, 1:]
                self.hist[t, -1] = loss
            else:
                self.hist[t, self.count[t]] = loss
                self.count[t] += 1

    def probs(self):
        if not (self.count == self.K).all():
            return np.full(self.T, 1.0 / self.T)
        w = np.sqrt(np.mean(self.hist ** 2, axis=-1))
        w = w / w.sum() * (1 - self.u) + self.u / self.T
        return w / w.sum()


def test_update_matches_sequential_reference_with_repeated_timesteps():
    T, K, B = 5, 3, 8
    rng = np.random.default_rng(0)
    state, ref = importance.init(T, K), RefSampler(T, K, 0.1)
    update = jax.jit(importance.update)
    for i in range(12):
        # Few bins, many samples: bins repeat within a batch, some more than K times.
        ts = rng.integers(0, T if i % 3 else 2, B)
        losses = rng.uniform(0.1, 5.0, B)
        state = update(state, jnp.asarray(ts, jnp.int32), jnp.asarray(losses, jnp.float32))
        ref.push(ts, losses)
        held = np.minimum(np.asarray(state.count), K)
        np.testing.assert_array_equal(held, ref.count)
        for t in range(T):
            # The ring buffer keeps the same K values as the shift register (order is irrelevant).
            got = np.sort(np.asarray(state.history)[t, :held[t]])
            np.testing.assert_allclose(got, np.sort(ref.hist[t, :ref.count[t]]), rtol=1e-6)
        np.testing.assert_allclose(importance.probabilities(state, 0.1), ref.probs(), rtol=1e-5)
    assert (ref.count == K).all()  # the loop did reach the warmed-up regime


def test_uniform_with_unit_weights_until_every_bin_is_full():
    T, K = 4, 2
    state = importance.init(T, K)
    # Fill every bin but the last one; large losses on bin 0 must not matter yet.
    state = importance.update(state, jnp.array([0, 0, 1, 1, 2, 2, 3]),
                              jnp.array([100.0, 100.0, 1.0, 1.0, 1.0, 1.0, 1.0]))
    assert not bool(importance.warmed_up(state))
    np.testing.assert_array_equal(importance.probabilities(state, 0.1), np.full(T, 0.25))
    _, w = importance.draw(state, jax.random.key(0), 16, 0.1)
    np.testing.assert_array_equal(w, np.ones(16))
    state = importance.update(state, jnp.array([3]), jnp.array([1.0]))
    assert bool(importance.warmed_up(state))
    p = np.asarray(importance.probabilities(state, 0.1))
    expected = 0.9 * np.array([100.0, 1, 1, 1]) / 103 + 0.1 / T
    np.testing.assert_allclose(p, expected, rtol=1e-6)


@pytest.fixture(scope="module")
def planted():
    """Warmed-up sampler whose losses grow with t: L_t = 0.1 + t (T = 20, K = 10)."""
    T, K = 20, 10
    loss = 0.1 + np.arange(T, dtype=np.float64)
    ts = np.repeat(np.arange(T), K)
    state = importance.update(importance.init(T, K), jnp.asarray(ts), jnp.asarray(loss[ts]))
    return state, loss


def test_larger_losses_are_drawn_more_often(planted):
    state, loss = planted
    T, n = loss.size, 40_000
    t, w = importance.draw(state, jax.random.key(1), n, 0.1)
    freq = np.bincount(np.asarray(t), minlength=T) / n
    p = 0.9 * loss / loss.sum() + 0.1 / T
    # Monte-Carlo frequencies match p within 4 standard errors, and increase with the loss.
    np.testing.assert_array_less(np.abs(freq - p), 4 * np.sqrt(p * (1 - p) / n) + 1e-12)
    assert freq[T // 2:].sum() > 2.5 * freq[:T // 2].sum()
    np.testing.assert_allclose(w, 1.0 / (T * p[np.asarray(t)]), rtol=1e-5)


def test_weighted_loss_is_unbiased(planted):
    state, loss = planted
    T = loss.size
    p = np.asarray(importance.probabilities(state, 0.1), np.float64)
    w = 1.0 / (T * p)
    # Exactly: Σ_t p_t · w_t · L_t = mean_t L_t.
    np.testing.assert_allclose(np.sum(p * w * loss), loss.mean(), rtol=1e-6)
    # By Monte-Carlo with the sampler's own draws and weights.
    t, weights = importance.draw(state, jax.random.key(2), 100_000, 0.1)
    estimate = np.mean(np.asarray(weights, np.float64) * loss[np.asarray(t)])
    assert abs(estimate - loss.mean()) < 0.01 * loss.mean()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="history"):
        importance.init(10, 0)
    with pytest.raises(ValueError, match="uniform_prob"):
        importance.draw(importance.init(4, 2), jax.random.key(0), 2, 1.5)
    with pytest.raises(ValueError, match="t, losses"):
        importance.update(importance.init(4, 2), jnp.zeros((3,), jnp.int32), jnp.zeros((2,)))
