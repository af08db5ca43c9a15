"""Loss-aware timestep sampling (improved-diffusion's LossSecondMomentResampler) as pure state.

For each of the T timestep bins the sampler keeps the last K per-sample losses. Until every bin has
K of them it samples uniformly; then `draw` picks bin t with

    p_t ∝ sqrt(mean_k hist[t, k]²),   p = (1 − u)·p / Σp + u / T        (u = uniform_prob)

and returns importance weights w_t = 1 / (T·p_t), so E_{t~p}[w_t·L_t] = mean_t L_t: the weighted
loss is an unbiased estimate of the uniformly-sampled loss, with lower variance.

The history is a ring buffer: `count[t]` is how many losses bin t has ever received and the k-th of
them lives at slot k mod K. The mean of squares ignores order, so this equals improved-diffusion's
shift register. `update` takes a whole (global) batch at once; several samples of one bin land in
consecutive slots in batch order, and when a bin gets more than K in one batch only its last K
survive, exactly as if the samples were pushed one by one.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


class ImportanceState(flax.struct.PyTreeNode):
    """history: (T, K) float32 loss ring buffer; count: (T,) int32 losses received per bin."""
    history: jax.Array
    count: jax.Array

    @property
    def num_bins(self) -> int:
        return self.history.shape[0]

    @property
    def history_size(self) -> int:
        return self.history.shape[1]


def init(num_bins: int, history: int = 10) -> ImportanceState:
    """Empty sampler for `num_bins` timestep bins keeping `history` losses each."""
    for name, value in (("num_bins", num_bins), ("history", history)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return ImportanceState(history=jnp.zeros((num_bins, history), jnp.float32),
                           count=jnp.zeros((num_bins,), jnp.int32))


def warmed_up(state: ImportanceState) -> jax.Array:
    """Scalar bool: every bin holds a full history."""
    return jnp.all(state.count >= state.history_size)


def probabilities(state: ImportanceState, uniform_prob: float = 0.1) -> jax.Array:
    """(T,) float32 sampling distribution: uniform before warm-up, else the mixed second moment."""
    T = state.num_bins
    rms = jnp.sqrt(jnp.mean(jnp.square(state.history), axis=-1))
    total = jnp.sum(rms)
    # All-zero losses (a degenerate history) fall back to uniform instead of dividing by zero.
    p = jnp.where(total > 0, rms / jnp.where(total > 0, total, 1.0), 1.0 / T)
    p = (1.0 - uniform_prob) * p + uniform_prob / T
    return jnp.where(warmed_up(state), p, jnp.full((T,), 1.0 / T, jnp.float32))


def draw(state: ImportanceState, rng: jax.Array, batch: int,
           uniform_prob: float = 0.1) -> tuple[jax.Array, jax.Array]:
    """Draws `batch` bins -> (t (B,) int32, weights (B,) float32 = 1 / (T·p_t))."""
    if not 0.0 <= uniform_prob <= 1.0:
        raise ValueError(f"uniform_prob: expected a value in [0, 1], got {uniform_prob!r}")
    p = probabilities(state, uniform_prob)
    t = jax.random.categorical(rng, jnp.log(p), shape=(batch,)).astype(jnp.int32)
    weights = 1.0 / (state.num_bins * p[t])
    return t, weights.astype(jnp.float32)


def update(state: ImportanceState, t: jax.Array, losses: jax.Array) -> ImportanceState:
    """Pushes per-sample losses (B,) observed at bins t (B,) int, in batch order."""
    t = jnp.asarray(t)
    losses = jnp.asarray(losses, jnp.float32)
    if t.ndim != 1 or losses.shape != t.shape:
        raise ValueError(f"t, losses: expected matching (B,) arrays, got {t.shape} and "
                         f"{losses.shape}")
    T, K = state.history.shape
    B = t.shape[0]
    t = t.astype(jnp.int32)
    # rank[i] = how many earlier samples of the batch share t[i] (stable sort keeps batch order).
    order = jnp.argsort(t, stable=True)
    sorted_t = t[order]
    idx = jnp.arange(B)
    is_start = jnp.concatenate([jnp.ones((1,), bool), sorted_t[1:] != sorted_t[:-1]])
    group_start = jax.lax.cummax(jnp.where(is_start, idx, 0))
    rank = jnp.zeros((B,), jnp.int32).at[order].set((idx - group_start).astype(jnp.int32))
    new_in_bin = jnp.zeros((T,), jnp.int32).at[t].add(1)
    # Only the last K losses of a bin survive; they go to distinct slots, so the scatter has no
    # duplicate targets. The others are routed out of bounds and dropped.
    keep = rank >= new_in_bin[t] - K
    slot = (state.count[t] + rank) % K
    row = jnp.where(keep, t, T)
    history = state.history.at[row, slot].set(losses, mode="drop")
    return ImportanceState(history=history, count=state.count + new_in_bin)
