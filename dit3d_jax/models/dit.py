"""DiT (Peebles & Xie): an adaLN-Zero transformer on patchified latents, exact PyTorch layout.

Blocks in the order the data meets them: patch embedding + fixed 2-D sin-cos positions, timestep
and label embedders (c = t_emb + y_emb), N DiT blocks, the final adaLN layer, unpatchify.
Parameter names follow facebookresearch/DiT's state_dict (see `dit3d_jax.convert`). There is no
one init method: each parameter gets DiT's initialiser where it is declared. In `layers.py`:
Linear layers xavier-uniform with zero bias (`dense`), the patch conv like a Linear on its
flattened weight, timestep MLP and label table N(0, 0.02), every adaLN modulation zero
(`ada_ln`); here: the final linear zero (`FinalLayer`).
The residual stream between the blocks stays float32 whatever the compute `dtype`.
`scan_blocks=True` runs the blocks as one `nn.scan` (params stacked on a leading depth axis: one
compiled block instead of `depth`); `remat` = "full" | "dots" recomputes activations in the
backward pass.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dit3d_jax.models.inputs import InputSpec
from dit3d_jax.models.layers import (Dtype, LabelEmbedder, Mlp, PatchEmbed, SelfAttention,
                                     TimestepEmbedder, ada_ln, dense, norm_modulate, sincos_2d,
                                     zeros)


class DiTBlock(nn.Module):
    """adaLN-Zero block: self-attention and MLP, each modulated (shift, scale, gate) by c.

    x: (B, N, D) float32 (the residual stream), c: (B, D) -> (B, N, D) float32. The branches
    compute in `dtype` and their gated outputs are added to the float32 stream, as PyTorch's
    autocast does (docs/performance.md, "bf16 and the residual stream").
    """
    hidden_size: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    attn_impl: str = "xla"

    def setup(self):
        self.attn = SelfAttention(self.num_heads, self.dtype, self.attn_impl)
        self.mlp = Mlp(int(self.hidden_size * self.mlp_ratio), self.dtype)
        # Chunk order: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
        self.adaLN_modulation_1 = ada_ln(6, self.hidden_size, "adaLN_modulation_1")

    def modulation(self, c: jax.Array) -> list[jax.Array]:
        """c (B, D) -> six (B, D) chunks in DiT's order."""
        return jnp.split(self.adaLN_modulation_1(nn.silu(c)), 6, axis=-1)

    def mlp_branch(self, x: jax.Array, shift, scale, gate) -> jax.Array:
        """x + gate·MLP(modulate(LN(x))). x: (B, N, D)."""
        return x + gate[:, None] * self.mlp(norm_modulate(x, shift, scale))

    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        x = x + gate_msa[:, None] * self.attn(norm_modulate(x, shift_msa, scale_msa))
        return self.mlp_branch(x, shift_mlp, scale_mlp, gate_mlp)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + Linear to p·p·C_out features. x: (B, N, D), c: (B, D)."""
    hidden_size: int
    out_features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        mod = ada_ln(2, self.hidden_size, "adaLN_modulation_1")(nn.silu(c))
        shift, scale = jnp.split(mod, 2, axis=-1)
        x = norm_modulate(x, shift, scale)
        return dense(self.out_features, self.dtype, ("embed", "out"), zeros, name="linear")(x)


def unpatchify(x: jax.Array, grid: int, patch: int, channels: int) -> jax.Array:
    """(B, grid², p·p·C) tokens, features ordered (p_row, p_col, c) -> (B, grid·p, grid·p, C)."""
    b = x.shape[0]
    x = x.reshape(b, grid, grid, patch, patch, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, grid * patch, grid * patch, channels)


REMAT_POLICIES = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
                  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def check_grid_fields(model) -> None:
    """ValueError naming the field when a transformer's input_size is not a multiple of its
    patch_size, its hidden_size not a multiple of num_heads, or remat no REMAT_POLICIES key
    (DiT's and the ViT backbone's checks)."""
    if model.input_size % model.patch_size:
        raise ValueError(f"input_size {model.input_size} is not divisible by patch_size "
                         f"{model.patch_size}")
    if model.hidden_size % model.num_heads:
        raise ValueError(f"hidden_size {model.hidden_size} is not divisible by num_heads "
                         f"{model.num_heads}")
    if model.remat not in REMAT_POLICIES:
        raise ValueError(f"remat: expected one of {tuple(REMAT_POLICIES)}, got {model.remat!r}")


def _carry_only(block_cls):
    """block_cls whose call returns (x, None), the (carry, output) pair nn.scan expects."""
    class ScanStep(block_cls):
        def __call__(self, x, *args):
            return super().__call__(x, *args), None
    return ScanStep


def stack_blocks(params: dict, depth: int) -> dict:
    """blocks_0 … blocks_{depth-1} -> one "blocks" tree with a leading depth axis (scan layout).
    Boxed params (nn.Partitioned leaves) are unboxed: the result holds plain arrays."""
    params = nn.unbox(params)
    layers = [params[f"blocks_{i}"] for i in range(depth)]
    out = {k: v for k, v in params.items() if not k.startswith("blocks_")}
    out["blocks"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
    return out


def _concrete(a) -> Optional[np.ndarray]:
    """a as a NumPy array when its value is known outside tracing, else None."""
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


class DiT(nn.Module):
    """Image DiT. `apply({"params": p}, x, t, y, ...)` with x (B, H, W, C), t (B,), y (B,) int or None.

    Returns (B, H, W, 2C) float32 when learn_sigma (ε then the variance interpolation v), else C.
    `force_drop` (B,) bool replaces rows' labels by the null class (the CFG unconditional branch);
    with train=True labels are also dropped with `class_dropout_prob` using the 'dropout' rng.
    """
    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True
    dtype: Dtype = jnp.float32
    attn_impl: str = "xla"
    scan_blocks: bool = False
    remat: str = "none"

    @property
    def input_spec(self) -> InputSpec:
        """x (B, H, W, C) under "image", t, and labels when num_classes > 0."""
        s = self.input_size
        return InputSpec("image", (s, s, self.in_channels), num_classes=self.num_classes)

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    block_class = DiTBlock

    def block_kwargs(self, index: int) -> dict:
        """The fields of block `index` (every block alike for the image DiT)."""
        return dict(hidden_size=self.hidden_size, num_heads=self.num_heads,
                    mlp_ratio=self.mlp_ratio, dtype=self.dtype, attn_impl=self.attn_impl)

    def make_blocks(self):
        """A list of `depth` blocks (params blocks_0 … blocks_{depth-1}), or with scan_blocks one
        scanned block whose params carry a leading depth axis (params "blocks")."""
        cls = self.block_class
        if self.remat != "none":
            cls = nn.remat(cls, policy=REMAT_POLICIES[self.remat])
        if not self.scan_blocks:
            return [cls(**self.block_kwargs(i)) for i in range(self.depth)]
        kwargs = self.block_kwargs(0)
        if any(self.block_kwargs(i) != kwargs for i in range(self.depth)):
            raise ValueError("scan_blocks: every block must be alike (DiT3D: temporal_every=1)")
        return nn.scan(_carry_only(cls), variable_axes={"params": 0},
                       split_rngs={"params": True}, in_axes=nn.broadcast, length=self.depth,
                       metadata_params={nn.PARTITION_NAME: None})(**kwargs, name="blocks")

    def run_blocks(self, h: jax.Array, *args) -> jax.Array:
        """h through every block; args (conditioning, …) are shared by all blocks."""
        if self.scan_blocks:
            return self.blocks(h, *args)[0]
        for block in self.blocks:
            h = block(h, *args)
        return h

    def setup(self):
        check_grid_fields(self)
        self.x_embedder = PatchEmbed(self.hidden_size, self.patch_size, self.dtype)
        self.t_embedder = TimestepEmbedder(self.hidden_size, dtype=self.dtype)
        if self.num_classes > 0:
            self.y_embedder = LabelEmbedder(self.num_classes, self.hidden_size,
                                            self.class_dropout_prob)
        self.blocks = self.make_blocks()
        self.final_layer = FinalLayer(self.hidden_size,
                                      self.patch_size ** 2 * self.out_channels, self.dtype)

    # -- conditioning ---------------------------------------------------------------------------

    def drop_mask(self, batch: int, prob: float, force_drop, train: bool, stream: int):
        """(B,) bool rows whose condition is replaced by its null, or None when nothing drops."""
        drop = None if force_drop is None else jnp.asarray(force_drop, bool).reshape(batch)
        if train and prob > 0:
            key = jax.random.fold_in(self.make_rng("dropout"), stream)
            rand = jax.random.bernoulli(key, prob, (batch,))
            drop = rand if drop is None else drop | rand
        return drop

    def label_drops(self, batch: int, force_drop, train: bool):
        """(B,) bool rows whose label is replaced by the null class: force_drop, and with
        train=True also rows drawn with class_dropout_prob (DiT's rate); None when nothing drops
        or the model has no classes."""
        if self.num_classes == 0:
            return None
        return self.drop_mask(batch, self.class_dropout_prob, force_drop, train, 0)

    def condition_drops(self, batch: int, force_drop, train: bool):
        """(label drop, text drop), each (B,) bool or None; the image DiT has no text
        (docs/interfaces.md names this method for every model)."""
        return self.label_drops(batch, force_drop, train), None

    def label_embedding(self, y, batch: int, drop) -> Optional[jax.Array]:
        """y (B,) int or None, drop (B,) bool or None -> (B, D), or None for a model without
        classes."""
        if self.num_classes == 0:
            if y is not None:
                raise ValueError("y: this model has num_classes=0 and takes no labels")
            return None
        if y is None:
            if self.class_dropout_prob <= 0:
                raise ValueError("y: labels are required (class_dropout_prob=0, no null class)")
            y = jnp.full((batch,), self.num_classes, jnp.int32)
        return self.y_embedder(y, drop)

    def timestep_label(self, t, y, drop) -> jax.Array:
        """t (B,), y (B,) int or None, drop (B,) bool or None (`label_drops`) -> c (B, D) =
        t_emb + y_emb (t_emb alone for a model without classes). Shared with DiT3D.condition."""
        c = self.t_embedder(t)
        y_emb = self.label_embedding(y, t.shape[0], drop)
        return c if y_emb is None else c + y_emb

    def check_inputs(self, x, t, y, spatial_shape: tuple) -> None:
        """Raises ValueError naming the argument when x, t or y do not fit the model."""
        if x.ndim != len(spatial_shape) + 1 or tuple(x.shape[1:]) != spatial_shape:
            raise ValueError(f"x: expected shape (B, {', '.join(map(str, spatial_shape))}) "
                             f"(channels last), got {tuple(x.shape)}")
        b = x.shape[0]
        if jnp.shape(t) != (b,):
            raise ValueError(f"t: expected shape ({b},), got {jnp.shape(t)}")
        if y is not None:
            if jnp.shape(y) != (b,) or not jnp.issubdtype(jnp.asarray(y).dtype, jnp.integer):
                raise ValueError(f"y: expected int labels of shape ({b},), got "
                                 f"{jnp.asarray(y).dtype}{jnp.shape(y)}")
            values = _concrete(y)
            if values is not None and values.size and (values.min() < 0
                                                         or values.max() >= self.num_classes):
                raise ValueError(f"y: labels must be in [0, {self.num_classes}), got "
                                 f"[{values.min()}, {values.max()}]")

    def pos_embed(self) -> jax.Array:
        """Fixed 2-D sin-cos positions (1, grid², D) float32 (DiT keeps them frozen)."""
        return jnp.asarray(sincos_2d(self.hidden_size, self.grid_size), jnp.float32)[None]

    def head(self, x: jax.Array, c: jax.Array) -> jax.Array:
        """Final layer + unpatchify: (B, N, D) -> (B, H, W, C_out) float32."""
        out = self.final_layer(x, c).astype(jnp.float32)
        return unpatchify(out, self.grid_size, self.patch_size, self.out_channels)

    def __call__(self, x, t, y=None, force_drop=None, train: bool = False) -> jax.Array:
        self.check_inputs(x, t, y, (self.input_size, self.input_size, self.in_channels))
        h = self.x_embedder(x).astype(jnp.float32) + self.pos_embed()  # float32 residual
        c = self.timestep_label(t, y, self.label_drops(x.shape[0], force_drop, train))
        return self.head(self.run_blocks(h, c), c)


# ---------------------------------------------------------------------------------------------
# Variants: name -> (depth, hidden_size, num_heads); patch size from the suffix.
# ---------------------------------------------------------------------------------------------

SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PATCHES = (2, 4, 8)
