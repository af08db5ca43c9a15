"""Building blocks shared by DiT and DiT3D: embeddings, attention, MLP, adaLN modulation.

Parameter names mirror facebookresearch/DiT (`mlp_0` for `mlp.0`, `adaLN_modulation_1` for
`adaLN_modulation.1`) so the PyTorch converter is a renaming plus transposes. Every kernel carries
logical axis names (see `dit3d_jax.train.sharding` for the rules that map them onto the mesh).
Norms, softmax statistics and outputs stay float32; matmuls run in the module's `dtype`
(`linear`), except the adaLN modulation's, which is float32 (`ada_ln`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Initializer = Callable[..., jax.Array]

xavier = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros_init()


def logical(init: Initializer, names: Sequence[Optional[str]]) -> Initializer:
    """Attaches logical axis names (for sharding rules) to an initializer."""
    return nn.with_logical_partitioning(init, tuple(names))


@jax.custom_vjp
def _bf16_linear(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """x (..., K) bf16 @ w (K, N) + b (N,) (w, b float32; w rounded to bf16 for the product)
    -> (..., N) bf16: the product accumulated in float32, the bias added in float32, rounded
    once. The backward pass gives dx the same way, and dw, db as float32 sums (not rounded)."""
    y = jax.lax.dot_general(x, w.astype(x.dtype), (((x.ndim - 1,), (0,)), ((), ())),
                            preferred_element_type=jnp.float32)
    return (y + b).astype(x.dtype)


def _bf16_linear_fwd(x, w, b):
    # symbolic_zeros: each argument arrives with `.perturbed`, so the backward pass computes
    # only the cotangents something asks for (none for frozen kernels or data inputs).
    need = (x.perturbed, w.perturbed, b.perturbed)
    x, w, b = x.value, w.value, b.value
    return _bf16_linear(x, w, b), (x, w.astype(x.dtype), need)


def _bf16_linear_bwd(res, ct):
    x, w, (need_x, need_w, need_b) = res
    if isinstance(ct, jax.custom_derivatives.SymbolicZero):
        return None, None, None
    dx = (jax.lax.dot_general(ct, w, (((ct.ndim - 1,), (1,)), ((), ())),
                              preferred_element_type=jnp.float32).astype(x.dtype)
          if need_x else None)
    x2, ct2 = x.reshape(-1, x.shape[-1]), ct.reshape(-1, ct.shape[-1])
    dw = (jax.lax.dot_general(x2, ct2, (((0,), (0,)), ((), ())),
                              preferred_element_type=jnp.float32) if need_w else None)
    return dx, dw, ct2.astype(jnp.float32).sum(0) if need_b else None


_bf16_linear.defvjp(_bf16_linear_fwd, _bf16_linear_bwd, symbolic_zeros=True)


def linear(x: jax.Array, kernel: jax.Array, bias: Optional[jax.Array], dtype: Dtype) -> jax.Array:
    """x (..., K) @ kernel (K, N) + bias (N,) computed in `dtype` -> (..., N) `dtype`.

    bfloat16 on CPU takes `_bf16_linear`: the numbers of a bf16 matmul (float32 accumulation,
    one rounding; weight and bias gradients stay float32), asked of XLA as float32 results in
    the forward and backward pass, because XLA:CPU runs bf16 x bf16 -> f32 dots on its
    AVX512-BF16 kernels (~1.9x its float32 matmul) and bf16 -> bf16 dots, bf16 bias sums or
    dots with a float32 cotangent at float32 speed or slower (docs/performance.md, "CPU
    levers"). Elsewhere, as flax's Dense: all in `dtype`.
    """
    if jnp.dtype(dtype) == jnp.bfloat16 and jax.default_backend() == "cpu":
        b = jnp.zeros(kernel.shape[-1:], jnp.float32) if bias is None else bias
        return _bf16_linear(x.astype(dtype), kernel.astype(jnp.float32), b.astype(jnp.float32))
    y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
    return y if bias is None else y + bias.astype(dtype)


class Dense(nn.Module):
    """A Linear layer: float32 `kernel` (K, N) and `bias` (N,), computing in `dtype` (`linear`).
    x (..., K) -> (..., N)."""
    features: int
    dtype: Dtype = jnp.float32
    use_bias: bool = True
    kernel_init: Initializer = xavier
    bias_init: Initializer = zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                            jnp.float32)
        bias = (self.param("bias", self.bias_init, (self.features,), jnp.float32)
                if self.use_bias else None)
        return linear(x, kernel, bias, self.dtype)


def dense(features: int, dtype: Dtype, names=("embed", "mlp"), kernel_init=xavier,
          bias_init=zeros, name: Optional[str] = None, use_bias: bool = True) -> Dense:
    """A `Dense` with logical axes `names` on the kernel (the last one on the bias)."""
    return Dense(features, dtype, use_bias, logical(kernel_init, names),
                 logical(bias_init, names[-1:]), name=name)


def layer_norm(x: jax.Array) -> jax.Array:
    """LayerNorm without affine, eps 1e-6, statistics in float32; returns x's dtype. x: (..., D)."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + 1e-6)).astype(x.dtype)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """x·(1 + scale) + shift. x: (B, N, D); shift, scale: (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


# Elementwise chains that the backward pass recomputes from their inputs instead of keeping their
# intermediates (LayerNorm's float32 temporaries, GELU-tanh's polynomial and tanh). No matmul is
# recomputed, and autodiff keeps 41% less for a DiT3D-S/2 clip in bf16 (docs/performance.md,
# "Train-step memory"). Values and gradients are those of the plain functions.

@jax.checkpoint
def norm_modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """modulate(layer_norm(x), shift, scale), recomputed in the backward pass. x: (B, N, D)."""
    return modulate(layer_norm(x), shift, scale)


@jax.checkpoint
def norm(x: jax.Array) -> jax.Array:
    """layer_norm(x), recomputed in the backward pass. x: (..., D)."""
    return layer_norm(x)


@jax.checkpoint
def gelu_tanh(x: jax.Array) -> jax.Array:
    """GELU with the tanh approximation (DiT's `approx_gelu`), recomputed in the backward pass;
    computed in float32 and rounded once to x's dtype."""
    return nn.gelu(x.astype(jnp.float32), approximate=True).astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# Fixed sin-cos embeddings (float64 NumPy, exactly DiT's formulas)
# ---------------------------------------------------------------------------------------------

def sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
    """[sin, cos] embedding of positions (M,) -> (M, embed_dim); omega = 1/10000^(i/(D/2))."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
    out = np.asarray(positions, np.float64).reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(embed_dim: int, grid_size: int) -> np.ndarray:
    """DiT's 2-D embedding for a row-major grid -> (grid_size², embed_dim).

    The first half of the channels encodes the column (w) index, the second half the row (h).
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4, got {embed_dim}")
    rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")
    return np.concatenate([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)],
                          axis=1)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """[cos, sin] frequency embedding of t (B,) -> (B, dim) float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


# ---------------------------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches -> tokens. x: (B, H, W, C) -> (B, (H/p)·(W/p), D), row-major."""
    hidden_size: int
    patch_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.patch_size
        # PyTorch initialises the conv like a Linear on its flattened (D, C·p·p) weight.
        fan_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform",
                                                    in_axis=(0, 1, 2), out_axis=3)
        y = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    param_dtype=jnp.float32, name="proj",
                    kernel_init=logical(fan_init, (None, None, None, "embed")),
                    bias_init=logical(zeros, ("embed",)))(x.astype(self.dtype))
        return y.reshape(y.shape[0], -1, self.hidden_size)


class TimestepEmbedder(nn.Module):
    """t (B,) -> (B, D): 256 [cos, sin] frequencies, Linear, SiLU, Linear."""
    hidden_size: int
    frequency_size: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        init = nn.initializers.normal(0.02)
        h = timestep_embedding(t, self.frequency_size)
        h = dense(self.hidden_size, self.dtype, ("freq", "embed"), init, name="mlp_0")(h)
        return dense(self.hidden_size, self.dtype, ("embed", "mlp"), init, name="mlp_2")(nn.silu(h))


class LabelEmbedder(nn.Module):
    """Class labels (B,) -> (B, D); row `num_classes` is the null class used for CFG."""
    num_classes: int
    hidden_size: int
    dropout_prob: float

    def setup(self):
        rows = self.num_classes + int(self.dropout_prob > 0)
        self.embedding_table = nn.Embed(
            rows, self.hidden_size, param_dtype=jnp.float32,
            embedding_init=logical(nn.initializers.normal(0.02), ("vocab", "embed")))

    def __call__(self, labels: jax.Array, drop: Optional[jax.Array]) -> jax.Array:
        """labels: (B,) int; drop: (B,) bool rows replaced by the null class, or None."""
        if drop is not None:
            if self.dropout_prob <= 0:
                raise ValueError("label dropout/CFG needs class_dropout_prob > 0 (no null class row)")
            labels = jnp.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


# ---------------------------------------------------------------------------------------------
# Attention and MLP
# ---------------------------------------------------------------------------------------------

ATTN_IMPLS = ("auto", "xla", "cudnn")


def resolve_attn_impl(name: str, dtype: Dtype, backend: Optional[str] = None) -> str:
    """The attention kernel for `name` in ATTN_IMPLS: "auto" is cuDNN's fused attention on a GPU
    for bf16/fp16 inputs and XLA's otherwise (jax's own default is XLA everywhere). `backend`
    defaults to jax.default_backend()."""
    if name not in ATTN_IMPLS:
        raise ValueError(f"attn_impl: expected one of {ATTN_IMPLS}, got {name!r}")
    if name != "auto":
        return name
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if half and (backend or jax.default_backend()) == "gpu" else "xla"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array],
              implementation: str) -> jax.Array:
    """Softmax attention. q: (B, Nq, H, Dh); k, v: (B, Nk, H, Dh); mask: (B, Nk) bool or None;
    implementation: one of ATTN_IMPLS. Returns (B, Nq, H, Dh) in q's dtype."""
    implementation = resolve_attn_impl(implementation, q.dtype)
    if implementation != "xla":
        bias_mask = None if mask is None else mask[:, None, None, :]
        return jax.nn.dot_product_attention(q, k, v, mask=bias_mask,
                                            implementation=implementation)
    # Heads first, so both products are plain batched matmuls: on CPU ~1.4-1.9x faster than
    # jax.nn.dot_product_attention's einsums over (B, N, H, Dh) (docs/performance.md).
    q, k, v = (a.swapaxes(1, 2) for a in (q, k, v))
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * (1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bhkd->bhqd", probs, v, preferred_element_type=jnp.float32)
    return out.astype(q.dtype).swapaxes(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection ([q|k|v] × heads × head_dim).

    x: (B, N, D) -> (B, N, D). `zero_out` initialises the output projection to zero.
    """
    num_heads: int
    dtype: Dtype = jnp.float32
    attn_impl: str = "xla"
    zero_out: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        qkv = dense(3 * d, self.dtype, ("embed", "qkv"), name="qkv")(x)
        q, k, v = jnp.split(qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads), 3, axis=2)
        out = attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], None, self.attn_impl)
        init = zeros if self.zero_out else xavier
        return dense(d, self.dtype, ("heads", "embed"), init, name="proj")(out.reshape(b, n, d))


class CrossAttention(nn.Module):
    """Queries from x (B, N, D) read context (B, L, D) under mask (B, L) bool -> (B, N, D).

    The output projection starts at zero, so a fresh cross-attention adds nothing.
    """
    num_heads: int
    dtype: Dtype = jnp.float32
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, mask: jax.Array) -> jax.Array:
        b, n, d = x.shape
        h, dh = self.num_heads, d // self.num_heads
        q = dense(d, self.dtype, ("embed", "qkv"), name="q")(x).reshape(b, n, h, dh)
        kv = dense(2 * d, self.dtype, ("embed", "qkv"), name="kv")(context)
        k, v = jnp.split(kv.reshape(b, context.shape[1], 2, h, dh), 2, axis=2)
        out = attention(q, k[:, :, 0], v[:, :, 0], mask, self.attn_impl)
        return dense(d, self.dtype, ("heads", "embed"), zeros, name="proj")(out.reshape(b, n, d))


class Mlp(nn.Module):
    """fc1, GELU (tanh approximation), fc2. x: (B, N, D) -> (B, N, D)."""
    hidden_features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = dense(self.hidden_features, self.dtype, ("embed", "mlp"), name="fc1")(x)
        return dense(x.shape[-1], self.dtype, ("mlp", "embed"), name="fc2")(gelu_tanh(h))


def ada_ln(chunks: int, hidden_size: int, name: str, bias_init: Initializer = zeros) -> Dense:
    """The adaLN-Zero modulation Linear (applied after SiLU): D -> chunks·D, zero kernel.

    float32 whatever the compute dtype: it sees one row per sample, so a bf16 copy of its kernel
    (the largest in a block) would cost more than the product, and its shifts, scales and gates
    meet the float32 residual stream (their gradients are float32 sums over the tokens)."""
    return dense(chunks * hidden_size, jnp.float32, ("embed", "mlp"), zeros, bias_init,
                 name=name)
