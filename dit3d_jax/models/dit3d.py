"""DiT3D: the image DiT inflated to video, conditioned on timestep, class label and/or text.

Each DiT block keeps its spatial self-attention over the tokens of one frame and its MLP, and gains
 - a temporal self-attention over the F frames of each token position (1-D sin-cos temporal
   positions added to its input), adaLN-modulated (shift, scale, gate) from the same conditioning;
 - a cross-attention from all tokens of the clip to the projected text tokens.
Both new output projections start at zero, so a DiT3D whose video layers are freshly initialised
equals the image DiT applied frame by frame (`dit3d_jax.convert.inflate` puts DiT weights in).
With `frame_embedding=True` a learned, zero-initialised `frame_embed` (F, D) is also added to the
residual stream after the patch embedding (as DiT adds its spatial positions), so every layer, not
only the temporal attention, knows which frame a token is in; at zero it changes nothing.

Text: token embeddings (B, L, text_dim) + mask, projected to the hidden size once (`text_proj`);
their masked mean also enters the conditioning vector through `text_pool` (zero-initialised). A
learned `null_text_embedding` (text_dim,) stands in for the whole caption (one token) when the text
is dropped for classifier-free guidance or absent.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from dit3d_jax.models.dit import DiT, DiTBlock
from dit3d_jax.models.inputs import InputSpec
from dit3d_jax.models.layers import (CrossAttention, SelfAttention, ada_ln, dense, gelu_tanh,
                                     logical, norm, norm_modulate, sincos_1d, zeros)


def _gate_one_bias(key, shape, dtype=jnp.float32):
    """adaLN bias for (shift, scale, gate): 0, 0, 1 — the temporal branch starts un-gated."""
    d = shape[0] // 3
    return jnp.concatenate([jnp.zeros((2 * d,), dtype), jnp.ones((d,), dtype)])


class DiT3DBlock(DiTBlock):
    """DiT block + temporal attention (optional) + text cross-attention (optional).

    x: (B, F, N, D) float32, c: (B, D), text: (B, L, D) projected tokens or None, text_mask
    (B, L) bool, temporal_pos: (F, D) -> (B, F, N, D) float32 (the residual stream).
    """
    temporal: bool = True
    cross: bool = False

    def setup(self):
        super().setup()
        if self.temporal:
            self.temporal_attn = SelfAttention(self.num_heads, self.dtype, self.attn_impl,
                                               zero_out=True)
            self.temporal_adaLN = ada_ln(3, self.hidden_size, "temporal_adaLN",
                                         bias_init=_gate_one_bias)
        if self.cross:
            self.cross_attn = CrossAttention(self.num_heads, self.dtype, self.attn_impl)

    def __call__(self, x, c, text=None, text_mask=None, temporal_pos=None):
        b, f, n, d = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        x = x.reshape(b, f * n, d)
        # Spatial attention: each frame's N tokens attend to each other.
        h = norm_modulate(x, shift_msa, scale_msa).reshape(b * f, n, d)
        x = x + gate_msa[:, None] * self.attn(h).reshape(b, f * n, d)
        if self.temporal:
            # Temporal attention: each token position attends across the F frames.
            shift, scale, gate = jnp.split(self.temporal_adaLN(nn.silu(c)), 3, axis=-1)
            h = norm_modulate(x, shift, scale).reshape(b, f, n, d) + temporal_pos[None, :, None]
            h = h.astype(self.dtype).transpose(0, 2, 1, 3).reshape(b * n, f, d)
            h = self.temporal_attn(h)
            x = x + gate[:, None] * h.reshape(b, n, f, d).transpose(0, 2, 1, 3).reshape(b, f * n, d)
        if self.cross:
            x = x + self.cross_attn(norm(x), text, text_mask)
        return self.mlp_branch(x, shift_mlp, scale_mlp, gate_mlp).reshape(b, f, n, d)


class DiT3D(DiT):
    """Video DiT. `apply({"params": p}, x, t, y=None, text=None, text_mask=None, force_drop=None,
    train=False)` with x (B, F, H, W, C), t (B,), y (B,) int or None, text (B, L, text_dim),
    text_mask (B, L) bool (True = real token). Returns (B, F, H, W, C_out) float32.

    `force_drop` (B,) bool: those rows use the null class and the null text (CFG's unconditional
    branch). A row whose text_mask is all False has no caption: it gets the null text too.
    With train=True (the 'dropout' rng) a model with both labels and text drops both together
    with `joint_dropout_prob`, and otherwise each on its own, labels with `class_dropout_prob`
    and text with `text_dropout_prob`; so the unconditional input that CFG samples with is
    trained on p_j + (1 − p_j)·p_c·p_t of the rows (10.9% at the defaults 0.1, 0.1, 0.1), and
    label-only or text-only conditioning on (1 − p_j)·p_t·(1 − p_c) resp. (1 − p_j)·p_c·(1 − p_t)
    (8.1% each). A model with one kind of condition drops it with its own probability alone.
    `temporal_every` = k puts temporal attention in blocks 0, k, 2k, …; text_dim = 0 builds no
    text layers; `frame_embedding` adds the learned (F, D) frame positions (module docstring).
    """
    num_frames: int = 16
    text_dim: int = 768
    text_dropout_prob: float = 0.1
    joint_dropout_prob: float = 0.1
    temporal_every: int = 1
    frame_embedding: bool = False

    block_class = DiT3DBlock

    @property
    def input_spec(self) -> InputSpec:
        """x (B, F, H, W, C) under "video", t, labels when num_classes > 0, captions when
        text_dim > 0."""
        s = self.input_size
        return InputSpec("video", (self.num_frames, s, s, self.in_channels),
                         num_classes=self.num_classes, text_dim=self.text_dim)

    def backbone_model(self) -> DiT:
        """The image DiT with this model's shared fields (the one a DiT3D is inflated from; its
        params are what optim.freeze='backbone' freezes)."""
        return DiT(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DiT)
                      if f.name not in ("parent", "name")}, parent=None)

    def block_kwargs(self, index: int) -> dict:
        return dict(super().block_kwargs(index), temporal=index % self.temporal_every == 0,
                    cross=self.text_dim > 0)

    def setup(self):
        if self.temporal_every < 1:
            raise ValueError(f"temporal_every must be >= 1, got {self.temporal_every}")
        super().setup()
        self.setup_text()
        if self.frame_embedding:
            self.frame_embed = self.param("frame_embed", logical(zeros, (None, "embed")),
                                          (self.num_frames, self.hidden_size), jnp.float32)

    def setup_text(self):
        """Checks the drop rates; the text layers (null text, projection, pooling) when text_dim
        > 0. Shared with ViT3D."""
        for field in ("class_dropout_prob", "text_dropout_prob", "joint_dropout_prob"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ValueError(f"{field}: expected a probability in [0, 1], got "
                                 f"{getattr(self, field)!r}")
        if self.text_dim > 0:
            self.null_text_embedding = self.param(
                "null_text_embedding",
                logical(nn.initializers.normal(self.text_dim ** -0.5), ("text",)),
                (self.text_dim,), jnp.float32)
            self.text_proj_fc1 = dense(self.hidden_size, self.dtype, ("text", "embed"),
                                       name="text_proj_fc1")
            self.text_proj_fc2 = dense(self.hidden_size, self.dtype, ("mlp", "embed"),
                                       name="text_proj_fc2")
            self.text_pool = dense(self.hidden_size, self.dtype, ("text", "embed"), zeros,
                                   name="text_pool")

    def condition_drops(self, batch: int, force_drop, train: bool):
        """(label drop, text drop): (B,) bool each, or None where nothing drops (text: None for
        a model without text). See the class docstring for the rates."""
        label = self.label_drops(batch, force_drop, train)
        if self.text_dim == 0:
            return label, None
        text = self.drop_mask(batch, self.text_dropout_prob, force_drop, train, 1)
        if train and self.num_classes > 0 and self.joint_dropout_prob > 0:
            key = jax.random.fold_in(self.make_rng("dropout"), 2)
            both = jax.random.bernoulli(key, self.joint_dropout_prob, (batch,))
            label = both if label is None else label | both
            text = both if text is None else text | both
        return label, text

    def condition(self, t, y, text, text_mask, force_drop, train: bool):
        """t (B,), y (B,) or None, text (B, L, text_dim) or None, text_mask (B, L) or None ->
        (c (B, D) = timestep + label + pooled text, tokens (B, L, D) or None, mask (B, L) or
        None), with the CFG drops of `condition_drops` applied. Shared with ViT3D."""
        b = t.shape[0]
        label_drop, text_drop = self.condition_drops(b, force_drop, train)
        c = self.timestep_label(t, y, label_drop)
        tokens = mask = None
        if self.text_dim > 0:
            tokens, mask, pooled = self.text_condition(text, text_mask, b, text_drop)
            c = c + pooled
        return c, tokens, mask

    def text_condition(self, text, text_mask, batch: int, drop):
        """text (B, L, text_dim) or None, text_mask (B, L) bool or None, drop (B,) bool or None
        -> (tokens (B, L, D) projected, mask (B, L) bool, pooled (B, D)). Dropped rows, and rows
        with no True in their mask (no caption), get the null text: its one token, mask [1, 0…]."""
        if text is None:  # no captions: an all-False mask, so every row gets the null text
            text = jnp.zeros((batch, 1, self.text_dim), jnp.float32)
            text_mask = jnp.zeros((batch, 1), bool)
        text = jnp.asarray(text, jnp.float32)
        if text_mask is None:
            text_mask = jnp.ones(text.shape[:2], bool)
        text_mask = jnp.asarray(text_mask, bool)
        empty = ~text_mask.any(axis=1)
        drop = empty if drop is None else drop | empty
        length = text.shape[1]
        null_tokens = jnp.zeros((length, self.text_dim)).at[0].set(self.null_text_embedding)
        null_mask = jnp.arange(length) == 0
        text = jnp.where(drop[:, None, None], null_tokens[None], text)
        text_mask = jnp.where(drop[:, None], null_mask[None], text_mask)
        weights = text_mask.astype(jnp.float32)[..., None]
        pooled = (text * weights).sum(1) / weights.sum(1)
        tokens = self.text_proj_fc2(gelu_tanh(self.text_proj_fc1(text)))
        return tokens, text_mask, self.text_pool(pooled)

    def check_text(self, text, text_mask, batch: int) -> None:
        if self.text_dim == 0:
            if text is not None:
                raise ValueError("text: this model has text_dim=0 and takes no text")
            return
        if text is None:
            return
        if text.ndim != 3 or text.shape[0] != batch or text.shape[2] != self.text_dim:
            raise ValueError(f"text: expected shape ({batch}, L, {self.text_dim}), got "
                             f"{tuple(text.shape)}")
        if text_mask is not None and tuple(text_mask.shape) != tuple(text.shape[:2]):
            raise ValueError(f"text_mask: expected shape {tuple(text.shape[:2])}, got "
                             f"{tuple(text_mask.shape)}")

    def check_video(self, x, t, y, text, text_mask) -> None:
        """ValueError naming the argument when x (B, F, H, W, C), t, y, text or text_mask do not
        fit the model (shared with ViT3D)."""
        s = self.input_size
        if x.ndim == 5 and x.shape[1] != self.num_frames:
            raise ValueError(f"x: expected {self.num_frames} frames (num_frames), got "
                             f"{x.shape[1]} in shape {tuple(x.shape)}")
        self.check_inputs(x, t, y, (self.num_frames, s, s, self.in_channels))
        self.check_text(text, text_mask, x.shape[0])

    def __call__(self, x, t, y=None, text=None, text_mask=None, force_drop=None,
                 train: bool = False) -> jax.Array:
        self.check_video(x, t, y, text, text_mask)
        s = self.input_size
        b, f = x.shape[:2]

        h = self.x_embedder(x.reshape(b * f, s, s, self.in_channels))
        h = (h.astype(jnp.float32) + self.pos_embed()).reshape(b, f, -1, self.hidden_size)
        if self.frame_embedding:
            h = h + self.frame_embed[None, :, None]
        c, tokens, mask = self.condition(t, y, text, text_mask, force_drop, train)
        temporal_pos = jnp.asarray(sincos_1d(self.hidden_size, range(f)), jnp.float32)
        h = self.run_blocks(h, c, tokens, mask, temporal_pos)
        c_frames = jnp.repeat(c, f, axis=0)
        out = self.head(h.reshape(b * f, -1, self.hidden_size), c_frames)
        return out.reshape(b, f, s, s, self.out_channels)
