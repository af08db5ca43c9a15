"""The model's own matmul kernels against float64 NumPy: attention (heads-first batched matmuls,
float32 softmax, key mask) and `linear` (bf16: float32 accumulation and bias, one rounding; its
own backward pass)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit3d_jax.models.layers import attention, linear


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


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_linear_and_its_gradients_match_float64(dtype):
    k = jax.random.split(jax.random.key(1), 4)
    x = jax.random.normal(k[0], (2, 16, 384)).astype(dtype).astype(jnp.float32)
    w = (0.05 * jax.random.normal(k[1], (384, 48))).astype(dtype).astype(jnp.float32)
    b = jax.random.normal(k[2], (48,))
    ct = jax.random.normal(k[3], (2, 16, 48)).astype(dtype).astype(jnp.float32)
    out, vjp = jax.vjp(lambda x, w, b: linear(x, w, b, dtype), x, w, b)
    dx, dw, db = vjp(ct.astype(dtype))
    assert out.dtype == dtype and dx.dtype == dw.dtype == db.dtype == jnp.float32  # as the inputs
    x64, w64, b64, ct64 = (np.asarray(a, np.float64) for a in (x, w, b, ct))
    ulp = 2.0 ** -8 if dtype == jnp.bfloat16 else 1e-6  # one rounding of each result
    for got, exact in [(out, x64 @ w64 + b64), (dx, ct64 @ w64.T),
                       (dw, x64.reshape(-1, 384).T @ ct64.reshape(-1, 48)),
                       (db, ct64.sum((0, 1)))]:
        err = np.abs(np.asarray(got, np.float64) - exact)
        assert np.all(err <= ulp * np.abs(exact) + 1e-4 * np.abs(exact).max()), err.max()
    # Without a bias: the product alone, and no bias gradient to return.
    out_nb = linear(x, w, None, dtype)
    np.testing.assert_allclose(np.asarray(out_nb, np.float64), x64 @ w64,
                               rtol=ulp, atol=1e-4 * np.abs(x64 @ w64).max())


def test_bf16_linear_differentiates_only_what_is_asked():
    """Gradients for the kernel alone equal the kernel part of the full VJP, and the traced
    backward pass then holds one product (dw), not two: no dx for a data input."""
    k = jax.random.split(jax.random.key(2), 2)
    x = jax.random.normal(k[0], (4, 8, 32))
    w = 0.1 * jax.random.normal(k[1], (32, 16))
    loss = lambda x, w: jnp.sum(linear(x, w, None, jnp.bfloat16).astype(jnp.float32) ** 2)
    dw_only = jax.grad(loss, argnums=1)(x, w)
    np.testing.assert_array_equal(dw_only, jax.grad(loss, argnums=(0, 1))(x, w)[1])
    dots = str(jax.make_jaxpr(jax.grad(loss, argnums=1))(x, w)).count("dot_general")
    assert dots == 2  # the forward product and dw
