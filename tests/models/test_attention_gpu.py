"""The cuDNN attention path (bf16) agrees with XLA attention in float32: run where a GPU exists.

Skipped on CPU (CI). On a GPU, with the backend unpinned (tests/conftest.py defaults
JAX_PLATFORMS to cpu), float32 matmuls at full precision for the other model tests' tolerances:
`JAX_PLATFORMS=cuda JAX_DEFAULT_MATMUL_PRECISION=highest python -m pytest tests/models`.
"""
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from dit3d_jax.models import get_model, init_params
from dit3d_jax.models.layers import attention

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (cuDNN)")


@pytest.mark.parametrize("masked", [False, True])
def test_cudnn_attention_matches_xla(masked):
    k = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(k[0], (8, 256, 6, 64))
    kv = jax.random.normal(k[1], (2, 8, 32, 6, 64))
    lengths = jax.random.randint(k[2], (8,), 1, 33)
    mask = jnp.arange(32)[None] < lengths[:, None] if masked else None
    ref = attention(q, kv[0], kv[1], mask, "xla")
    out = attention(q.astype(jnp.bfloat16), kv[0].astype(jnp.bfloat16),
                    kv[1].astype(jnp.bfloat16), mask, "cudnn")
    err = np.linalg.norm(np.asarray(out, np.float32) - np.asarray(ref)) / np.linalg.norm(ref)
    assert err < 2e-2


def test_dit3d_bf16_cudnn_matches_float32_xla():
    model = get_model("DiT3D-S/2", depth=2, num_frames=4, input_size=16, text_dim=64,
                      num_classes=10)
    params = init_params(model, jax.random.key(0))
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    params = unravel(flat + 0.02 * jax.random.normal(jax.random.key(1), flat.shape))
    k = jax.random.split(jax.random.key(2), 2)
    x = jax.random.normal(k[0], (2, 4, 16, 16, 4))
    text = jax.random.normal(k[1], (2, 8, 64))
    mask = jnp.arange(8)[None] < jnp.array([[3], [8]])
    args = (x, jnp.array([10.0, 900.0]), jnp.array([1, 2]))
    ref = model.apply({"params": params}, *args, text=text, text_mask=mask)
    fast = model.clone(dtype=jnp.bfloat16, attn_impl="cudnn").apply(
        {"params": params}, *args, text=text, text_mask=mask)
    err = np.linalg.norm(np.asarray(fast) - np.asarray(ref)) / np.linalg.norm(ref)
    assert err < 3e-2
