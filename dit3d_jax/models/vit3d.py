"""ViT3D: a torchvision ImageNet ViT run frame by frame, inflated to a video denoiser.

The data meets, in order:
 1. the ViT's input normalisation: frames in the model's range [-1, 1] -> [0, 1] -> (v − mean)/std
    with ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225);
 2. the ViT of torchvision's `VisionTransformer` on each frame: `conv_proj` (p×p, stride p), the
    class token prepended to the row-major patch tokens, the learned `pos_embedding`, `depth`
    pre-norm encoder layers (LayerNorm eps 1e-6 with affine, exact GELU), `encoder_ln`;
 3. after encoder layer i, a video block `video_block_i`: temporal self-attention over the F frames
    of each token position (1-D sin-cos temporal positions, adaLN shift/scale/gate from the
    conditioning; every `temporal_every`-th layer) and cross-attention from the clip's tokens to
    the caption's tokens (when text_dim > 0);
 4. conditioning c = t_emb + label_emb + text_pool(masked mean of the caption), with DiT3D's
    learned null caption and label/text dropout (`force_drop` for CFG's unconditional rows);
 5. the head: the patch tokens (the class token is dropped) through DiT's adaLN final layer to
    p·p·C_out features per token, unpatchified to (F, H, W, C_out) at the input size;
 6. a 3×3×3 convolution over (F, H, W) that smooths the output in time and space.

What starts where (so a converted ViT's features pass through unchanged): every video block's
temporal and cross-attention output projection is zero (the temporal gate's bias is 1, so the
projection still gets a gradient), hence each video block is the identity and the backbone's
patch features reach the head exactly as the ViT computes them frame by frame; `text_pool` is
zero; the final layer's adaLN and Linear are zero as in DiT (the prediction starts at 0); the 3-D
convolution is the identity (centre tap = I, every other tap and the bias 0).

Parameter names mirror torchvision's state_dict (`encoder.layers.encoder_layer_3.mlp.0` ->
encoder_layer_3/mlp_0; see `dit3d_jax.convert.torch_vit`), and the backbone's params sit at the top
of the tree under the same paths in `ViT` (the image backbone alone) and `ViT3D`, so a converted
ViT initialises a ViT3D through `init_from` and `optim.freeze=backbone` freezes exactly them.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dit3d_jax.models.dit import REMAT_POLICIES, FinalLayer, check_grid_fields
from dit3d_jax.models.dit3d import DiT3D, _gate_one_bias
from dit3d_jax.models.inputs import InputSpec
from dit3d_jax.models.layers import (CrossAttention, Dtype, LabelEmbedder, SelfAttention,
                                     TimestepEmbedder, ada_ln, dense, logical, norm,
                                     norm_modulate, sincos_1d, zeros)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_norm(name: str) -> nn.LayerNorm:
    """torchvision's LayerNorm: eps 1e-6, learned scale and bias, float32 statistics."""
    return nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32,
                        use_fast_variance=False, name=name,
                        scale_init=logical(nn.initializers.ones, ("embed",)),
                        bias_init=logical(zeros, ("embed",)))


class EncoderBlock(nn.Module):
    """torchvision's pre-norm encoder layer. x: (B, N, D) -> (B, N, D).

    x + self_attention(ln_1(x)), then + mlp_3(GELU(mlp_0(ln_2(x)))) (exact GELU).
    """
    hidden_size: int
    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = _layer_norm("ln_1")(x).astype(self.dtype)
        x = x + SelfAttention(self.num_heads, self.dtype, self.attn_impl,
                              name="self_attention")(h)
        h = _layer_norm("ln_2")(x).astype(self.dtype)
        h = dense(self.mlp_dim, self.dtype, ("embed", "mlp"), name="mlp_0")(h)
        return x + dense(self.hidden_size, self.dtype, ("mlp", "embed"),
                         name="mlp_3")(nn.gelu(h, approximate=False))


class ViTBackbone:
    """The ViT layers and their forward pass, shared by `ViT` and `ViT3D` (a mixin: the module
    supplies input_size, patch_size, in_channels, hidden_size, depth, num_heads, mlp_ratio,
    dtype, attn_impl and remat)."""

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    def check_backbone_fields(self) -> None:
        if self.in_channels != 3:
            raise ValueError(f"in_channels: the ViT backbone takes RGB frames, expected 3, got "
                             f"{self.in_channels}")
        check_grid_fields(self)

    def setup_backbone(self) -> None:
        d, p = self.hidden_size, self.patch_size
        fan_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform",
                                                    in_axis=(0, 1, 2), out_axis=3)
        self.conv_proj = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                                 param_dtype=jnp.float32,
                                 kernel_init=logical(fan_init, (None, None, None, "embed")),
                                 bias_init=logical(zeros, ("embed",)))
        self.class_token = self.param("class_token", logical(zeros, (None, None, "embed")),
                                      (1, 1, d), jnp.float32)
        self.pos_embedding = self.param(
            "pos_embedding", logical(nn.initializers.normal(0.02), (None, None, "embed")),
            (1, 1 + self.grid_size ** 2, d), jnp.float32)
        block = EncoderBlock
        if self.remat != "none":
            block = nn.remat(block, policy=REMAT_POLICIES[self.remat])
        self.encoder_layer = [block(d, self.num_heads, int(d * self.mlp_ratio), self.dtype,
                                    self.attn_impl) for _ in range(self.depth)]
        self.encoder_ln = _layer_norm("encoder_ln")

    def embed_frames(self, x: jax.Array) -> jax.Array:
        """Frames (N, H, W, 3) in [-1, 1] -> tokens (N, 1 + grid², D): normalised as ImageNet,
        patch-projected, class token first, positions added."""
        mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)
        v = ((x.astype(jnp.float32) + 1.0) * 0.5 - mean) / std
        h = self.conv_proj(v.astype(self.dtype))
        h = h.reshape(h.shape[0], -1, self.hidden_size)
        cls = jnp.broadcast_to(self.class_token.astype(h.dtype), (h.shape[0], 1, h.shape[-1]))
        return jnp.concatenate([cls, h], axis=1) + self.pos_embedding.astype(h.dtype)


class ViT(ViTBackbone, nn.Module):
    """The image ViT backbone alone (what `convert_torch_weights.py --vit` writes).

    `apply({"params": p}, x)` with x (B, H, W, 3) in [-1, 1] -> (B, 1 + grid², D) float32: every
    token after `encoder_ln` (class token first), i.e. torchvision's encoder output.
    """
    input_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    attn_impl: str = "xla"
    remat: str = "none"

    def __post_init__(self):
        super().__post_init__()
        self.check_backbone_fields()

    @property
    def input_spec(self) -> InputSpec:
        """x (B, H, W, C) under "image" and nothing else (a backbone takes no t)."""
        s = self.input_size
        return InputSpec("image", (s, s, self.in_channels), timestep=False)

    def setup(self):
        self.setup_backbone()

    def __call__(self, x: jax.Array) -> jax.Array:
        want = (self.input_size, self.input_size, self.in_channels)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x: expected shape (B, {', '.join(map(str, want))}), got "
                             f"{tuple(x.shape)}")
        h = self.embed_frames(x)
        for layer in self.encoder_layer:
            h = layer(h)
        return self.encoder_ln(h)


def _identity_conv3d(key, shape, dtype=jnp.float32):
    """(3, 3, 3, C, C) kernel with I at the centre tap, 0 elsewhere: the convolution's identity."""
    kernel = np.zeros(shape, np.float32)
    kernel[tuple(k // 2 for k in shape[:3])] = np.eye(shape[3], shape[4])
    return jnp.asarray(kernel, dtype)


class VideoBlock(nn.Module):
    """Temporal attention (optional) and text cross-attention (optional) after a ViT layer.

    x: (B, F, N, D), c: (B, D), text: (B, L, D) projected tokens or None, text_mask (B, L) bool,
    temporal_pos: (F, D) -> (B, F, N, D). Both output projections start at zero (identity block).
    """
    hidden_size: int
    num_heads: int
    dtype: Dtype = jnp.float32
    attn_impl: str = "xla"
    temporal: bool = True
    cross: bool = False

    @nn.compact
    def __call__(self, x, c, text=None, text_mask=None, temporal_pos=None):
        b, f, n, d = x.shape
        if self.temporal:
            mod = ada_ln(3, d, "temporal_adaLN", bias_init=_gate_one_bias)(nn.silu(c))
            shift, scale, gate = jnp.split(mod, 3, axis=-1)
            h = norm_modulate(x.reshape(b, f * n, d), shift, scale).reshape(b, f, n, d)
            h = h + temporal_pos[None, :, None].astype(h.dtype)
            h = SelfAttention(self.num_heads, self.dtype, self.attn_impl, zero_out=True,
                              name="temporal_attn")(h.transpose(0, 2, 1, 3).reshape(b * n, f, d))
            x = x + gate[:, None, None] * h.reshape(b, n, f, d).transpose(0, 2, 1, 3)
        if self.cross:
            h = CrossAttention(self.num_heads, self.dtype, self.attn_impl, name="cross_attn")(
                norm(x.reshape(b, f * n, d)), text, text_mask)
            x = x + h.reshape(b, f, n, d)
        return x


class ViT3D(ViTBackbone, DiT3D):
    """Video denoiser on a ViT backbone (module docstring). Same contract as DiT3D:
    `apply({"params": p}, x, t, y=None, text=None, text_mask=None, force_drop=None, train=False)`
    with x (B, F, H, W, 3) in [-1, 1], t (B,), y (B,) int or None, text (B, L, text_dim), text_mask
    (B, L) bool. Returns (B, F, H, W, C_out) float32 (C_out = 6 when learn_sigma).
    `backbone_model()` is the image `ViT` whose params this model's backbone shares.
    """
    input_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    num_classes: int = 0

    def __post_init__(self):
        super().__post_init__()
        self.check_backbone_fields()
        if self.scan_blocks:
            raise ValueError("scan_blocks: ViT3D runs its layers unrolled; expected False")
        if self.temporal_every < 1:
            raise ValueError(f"temporal_every must be >= 1, got {self.temporal_every}")

    def backbone_model(self) -> ViT:
        """The image ViT with this model's backbone fields (its params are the frozen part)."""
        return ViT(input_size=self.input_size, patch_size=self.patch_size,
                   in_channels=self.in_channels, hidden_size=self.hidden_size, depth=self.depth,
                   num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
                   attn_impl=self.attn_impl, remat=self.remat, parent=None)

    def setup(self):
        if self.frame_embedding:
            raise ValueError("frame_embedding: expected False for ViT3D (its frames enter the "
                             "pretrained ViT unchanged), got True")
        d = self.hidden_size
        self.setup_backbone()
        self.video_block = [VideoBlock(d, self.num_heads, self.dtype, self.attn_impl,
                                       temporal=i % self.temporal_every == 0,
                                       cross=self.text_dim > 0) for i in range(self.depth)]
        self.t_embedder = TimestepEmbedder(d, dtype=self.dtype)
        if self.num_classes > 0:
            self.y_embedder = LabelEmbedder(self.num_classes, d, self.class_dropout_prob)
        self.setup_text()
        self.final_layer = FinalLayer(d, self.patch_size ** 2 * self.out_channels, self.dtype)
        self.smooth = nn.Conv(self.out_channels, (3, 3, 3), padding="SAME", dtype=jnp.float32,
                              param_dtype=jnp.float32,
                              kernel_init=logical(_identity_conv3d, (None,) * 5),
                              bias_init=logical(zeros, (None,)))

    def __call__(self, x, t, y=None, text=None, text_mask=None, force_drop=None,
                 train: bool = False) -> jax.Array:
        s = self.input_size
        if x.ndim == 5 and x.shape[-1] != self.in_channels:
            raise ValueError(f"x: expected {self.in_channels} channels (RGB, channels last), got "
                             f"{x.shape[-1]} in shape {tuple(x.shape)}")
        self.check_video(x, t, y, text, text_mask)
        b, f = x.shape[:2]

        c, tokens, mask = self.condition(t, y, text, text_mask, force_drop, train)
        temporal_pos = jnp.asarray(sincos_1d(self.hidden_size, range(f)), jnp.float32)

        h = self.embed_frames(x.reshape(b * f, s, s, self.in_channels))
        for layer, video in zip(self.encoder_layer, self.video_block):
            h = layer(h)
            h = video(h.reshape(b, f, -1, self.hidden_size), c, tokens, mask,
                      temporal_pos).reshape(b * f, -1, self.hidden_size)
        patches = self.encoder_ln(h)[:, 1:]
        self.sow("intermediates", "head_input", patches)  # (B·F, grid², D), read by the tests
        out = self.head(patches, jnp.repeat(c, f, axis=0))  # DiT's: (B·F, H, W, C_out) float32
        out = out.reshape(b, f, s, s, self.out_channels)
        return self.smooth(out)


# ---------------------------------------------------------------------------------------------
# Variants: name -> (depth, hidden_size, num_heads) (DeiT/ViT widths); patch size from the suffix.
# ---------------------------------------------------------------------------------------------

VIT_SIZES = {"Ti": (12, 192, 3), "S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16)}
VIT_PATCHES = (4, 8, 14, 16, 32)
