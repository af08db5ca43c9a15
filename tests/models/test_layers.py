"""The model's own matmul kernels against float64 NumPy: attention (heads-first batched matmuls,
float32 softmax, key mask) and the Dense dot (bf16 operands, float32 accumulation)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit3d_jax.models.layers import attention, dot_general


def ref_attention(q, k, v, mask):
    q, k, v = (np.asarray(a, np.float64).transpose(0, 2, 1, 3) for a in (q, k, v))
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(np.asarray(mask)[:, None, None, :], logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True) @ v).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_xla_attention_matches_float64(masked, dtype, tol):
    k = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(k[0], (3, 20, 4, 16), dtype)
    kv = jax.random.normal(k[1], (2, 3, 9, 4, 16), dtype)
    mask = (jnp.arange(9)[None] < jnp.array([[1], [5], [9]])) if masked else None
    out = attention(q, kv[0], kv[1], mask, "xla")
    assert out.shape == q.shape and out.dtype == dtype
    ref = ref_attention(q.astype(jnp.float32), kv[0].astype(jnp.float32),
                        kv[1].astype(jnp.float32), mask)
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, atol=tol, rtol=tol)
    if masked:  # the first row sees only key 0: its output is v[0] exactly (to rounding)
        np.testing.assert_allclose(np.asarray(out[0], np.float64),
                                   np.broadcast_to(np.asarray(kv[1, 0, 0], np.float64),
                                                   out[0].shape), atol=tol)


def test_bf16_dot_rounds_the_float32_product_once():
    k = jax.random.split(jax.random.key(1), 2)
    a = jax.random.normal(k[0], (32, 384), jnp.bfloat16)
    b = jax.random.normal(k[1], (384, 48), jnp.bfloat16)
    out = dot_general(a, b, (((1,), (0,)), ((), ())))
    assert out.dtype == jnp.bfloat16
    exact = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    # One rounding of a float32-accumulated sum: within one bf16 ulp (2^-8 relative) of exact.
    err = np.abs(np.asarray(out, np.float64) - exact)
    assert np.all(err <= 2.0 ** -8 * np.abs(exact) + 1e-3)
    f32 = dot_general(a.astype(jnp.float32), b.astype(jnp.float32), (((1,), (0,)), ((), ())))
    assert f32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(f32, np.float64), exact, rtol=1e-5, atol=1e-4)
