"""The Stable Diffusion KL-f8 autoencoder (AutoencoderKL) that DiT's latents come from.

    vae = AutoencoderKL()                                   # sd-vae-ft-ema / -mse layout
    mean, logvar = vae.apply({"params": p}, x, method=AutoencoderKL.encode)   # x (N, H, W, 3)
    frames = vae.apply({"params": p}, z, method=AutoencoderKL.decode)       # z (N, H/8, W/8, 4)
    mean, logvar = encode_video(vae, p, video)            # video (B, F, H, W, 3) in [-1, 1]
    video = decode_video(vae, p, mean * vae.scaling_factor, chunk=4)
    p = init_vae(vae, seed=0)                               # random params (tests, benchmarks)

Layout (the SD VAE's, channels last). Encoder: conv_in 3x3 -> one down block per entry of
`block_out_channels` (`layers_per_block` resnets, then a stride-2 3x3 conv on the input padded
(0, 1) at the bottom/right, except after the last block) -> mid block (resnet, single-head
self-attention, resnet) -> GroupNorm, SiLU, conv_out 3x3 to 2·latent channels -> quant_conv 1x1
-> (mean, logvar). Decoder: post_quant_conv 1x1 -> conv_in 3x3 -> mid block -> up blocks from the
widest to the narrowest (`layers_per_block + 1` resnets, then nearest 2x upsampling and a 3x3 conv,
except after the last block) -> GroupNorm, SiLU, conv_out 3x3. Resnet: GroupNorm, SiLU, conv 3x3,
GroupNorm, SiLU, conv 3x3, plus the input (through a 1x1 conv when the width changes). Every
GroupNorm has `norm_num_groups` groups, eps 1e-6, and runs in float32 whatever the compute dtype.

Parameter names follow diffusers' module tree with `.N.` written `_N` (`encoder/down_blocks_0/
resnets_1/conv2/kernel`, `decoder/mid_block/attentions_0/to_q/kernel`), so `dit3d_jax.convert.
torch_vae` maps state_dicts by renaming.

On disk (`save_vae` / `load_vae`): DIR/params (orbax) and DIR/vae.json (the module's fields).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

def _group_norm(x: jax.Array, groups: int, name: str) -> jax.Array:
    """GroupNorm (eps 1e-6) computed in float32, returned in x's dtype."""
    norm = nn.GroupNorm(num_groups=groups, epsilon=1e-6, dtype=jnp.float32,
                        use_fast_variance=False, name=name)
    return norm(x.astype(jnp.float32)).astype(x.dtype)


def _conv(features: int, kernel: int, dtype: Any, name: str, stride: int = 1,
          padding: Any = None) -> nn.Conv:
    pad = kernel // 2 if padding is None else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad,
                   dtype=dtype, param_dtype=jnp.float32, name=name)


class ResnetBlock(nn.Module):
    """x (N, H, W, C_in) -> (N, H, W, out_channels)."""
    out_channels: int
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.silu(_group_norm(x, self.groups, "norm1"))
        h = _conv(self.out_channels, 3, self.dtype, "conv1")(h)
        h = nn.silu(_group_norm(h, self.groups, "norm2"))
        h = _conv(self.out_channels, 3, self.dtype, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
        return x + h


class SelfAttention(nn.Module):
    """Single-head attention over the H·W positions, with a residual: (N, H, W, C) -> same."""
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, height, width, channels = x.shape
        h = _group_norm(x, self.groups, "group_norm").reshape(n, height * width, 1, channels)
        dense = functools.partial(nn.Dense, channels, dtype=self.dtype, param_dtype=jnp.float32)
        q, k, v = (dense(name=name)(h) for name in ("to_q", "to_k", "to_v"))
        # One head of C (512) channels: beyond the fused kernels' head sizes, so XLA's attention
        # (logits and softmax in float32) on every backend.
        h = jax.nn.dot_product_attention(q, k, v, implementation="xla")
        h = dense(name="to_out_0")(h.reshape(n, height, width, channels))
        return x + h


class MidBlock(nn.Module):
    """resnet, self-attention, resnet at constant width: (N, H, W, C) -> same."""
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        x = ResnetBlock(channels, self.groups, self.dtype, name="resnets_0")(x)
        x = SelfAttention(self.groups, self.dtype, name="attentions_0")(x)
        return ResnetBlock(channels, self.groups, self.dtype, name="resnets_1")(x)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding 1 row/column at the bottom/right: (N, H, W, C) ->
    (N, H/2, W/2, C)."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(x.shape[-1], 3, self.dtype, "conv", stride=2, padding="VALID")(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 conv: (N, H, W, C) -> (N, 2H, 2W, C)."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(x.shape[-1], 3, self.dtype, "conv")(x)


class ResnetStack(nn.Module):
    """`num_layers` resnets, then the resampler `resample` names: "down" (Downsample, a down
    block's), "up" (Upsample, an up block's) or "" (none, the last block):
    (N, H, W, C_in) -> (N, H/2, W/2, C) | (N, 2H, 2W, C) | (N, H, W, C)."""
    out_channels: int
    num_layers: int
    groups: int
    resample: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.num_layers):
            x = ResnetBlock(self.out_channels, self.groups, self.dtype, name=f"resnets_{j}")(x)
        if self.resample == "down":
            return Downsample(self.dtype, name="downsamplers_0")(x)
        if self.resample == "up":
            return Upsample(self.dtype, name="upsamplers_0")(x)
        return x


class Encoder(nn.Module):
    """frames (N, H, W, C_in) -> (N, H/f, W/f, 2·latent_channels) (before quant_conv)."""
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    groups: int
    latent_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _conv(self.block_out_channels[0], 3, self.dtype, "conv_in")(x.astype(self.dtype))
        last = len(self.block_out_channels) - 1
        for i, channels in enumerate(self.block_out_channels):
            x = ResnetStack(channels, self.layers_per_block, self.groups,
                            "down" if i != last else "", self.dtype, name=f"down_blocks_{i}")(x)
        x = MidBlock(self.groups, self.dtype, name="mid_block")(x)
        x = nn.silu(_group_norm(x, self.groups, "conv_norm_out"))
        return _conv(2 * self.latent_channels, 3, self.dtype, "conv_out")(x)


class Decoder(nn.Module):
    """latents (N, h, w, latent_channels) (after post_quant_conv) -> (N, f·h, f·w, C_out)."""
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    groups: int
    out_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        widths = tuple(reversed(self.block_out_channels))
        x = _conv(widths[0], 3, self.dtype, "conv_in")(z.astype(self.dtype))
        x = MidBlock(self.groups, self.dtype, name="mid_block")(x)
        for i, channels in enumerate(widths):
            x = ResnetStack(channels, self.layers_per_block + 1, self.groups,
                            "up" if i != len(widths) - 1 else "", self.dtype,
                            name=f"up_blocks_{i}")(x)
        x = nn.silu(_group_norm(x, self.groups, "conv_norm_out"))
        return _conv(self.out_channels, 3, self.dtype, "conv_out")(x)


class AutoencoderKL(nn.Module):
    """The KL-f8 VAE. Defaults are the SD VAE (sd-vae-ft-ema/-mse, 83,653,863 parameters).

    dtype is the compute dtype (params stay float32; GroupNorm and attention softmax statistics
    run in float32). `encode` and `decode` are the two entry points (`apply(..., method=...)`);
    `__call__` (encode, then decode the mean) exists for `init`.
    """
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    dtype: Any = jnp.float32

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def setup(self):
        self.encoder = Encoder(tuple(self.block_out_channels), self.layers_per_block,
                               self.norm_num_groups, self.latent_channels, self.dtype)
        self.decoder = Decoder(tuple(self.block_out_channels), self.layers_per_block,
                               self.norm_num_groups, self.out_channels, self.dtype)
        self.quant_conv = _conv(2 * self.latent_channels, 1, self.dtype, None)
        self.post_quant_conv = _conv(self.latent_channels, 1, self.dtype, None)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x (N, H, W, in_channels) in [-1, 1], H and W multiples of downsample_factor ->
        posterior (mean, logvar), each float32 (N, H/f, W/f, latent_channels); logvar clipped to
        [-30, 20]."""
        moments = self.quant_conv(self.encoder(x)).astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array) -> jax.Array:
        """z (N, h, w, latent_channels), unscaled (already divided by scaling_factor) -> frames
        float32 (N, f·h, f·w, out_channels), nominally in [-1, 1] (not clipped)."""
        return self.decoder(self.post_quant_conv(z.astype(self.dtype))).astype(jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        mean, _ = self.encode(x)
        return self.decode(mean)


def sample_posterior(rng: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """z = mean + exp(logvar / 2)·ε, ε ~ N(0, 1); the posterior's mode is `mean` itself."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def param_shapes(vae: AutoencoderKL) -> Any:
    """The params pytree of `vae` as jax.ShapeDtypeStruct leaves (traced, nothing runs)."""
    size = 2 * vae.downsample_factor
    x = jax.ShapeDtypeStruct((1, size, size, vae.in_channels), jnp.float32)
    return jax.eval_shape(lambda x: vae.init(jax.random.key(0), x)["params"], x)


def init_vae(vae: AutoencoderKL, seed: int = 0) -> Any:
    """Random float32 params, drawn with NumPy: kernels N(0, 1/fan_in), biases 0, GroupNorm scales
    1. (Compiling Flax's initialisers took ~50 s on the shared CPU even for the tiny test VAE, and
    this VAE is only ever loaded, never trained from scratch.)"""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        if name == "bias":
            return np.zeros(leaf.shape, np.float32)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, param_shapes(vae))


# ----------------------------------------------------------------------------------------------
# Video: frames folded into the batch.
# ----------------------------------------------------------------------------------------------

def _check_video(name: str, array: Any, channels: int, factor: int = 1) -> None:
    shape = np.shape(array)
    if len(shape) != 5 or shape[-1] != channels or shape[2] % factor or shape[3] % factor:
        raise ValueError(f"{name}: expected (B, F, H, W, {channels}) with H and W multiples of "
                         f"{factor}, got shape {shape}")


def _chunked(fn, x: jax.Array, chunk: int) -> jax.Array:
    """fn over the leading axis of x, `chunk` rows at a time (lax.map over zero-padded chunks),
    so the activations held at once are those of one chunk."""
    n = x.shape[0]
    pad = -n % chunk
    x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    out = jax.lax.map(fn, x.reshape((-1, chunk) + x.shape[1:]))
    return jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:])[:n], out)


@functools.partial(jax.jit, static_argnames=("vae", "chunk"))
def _encode_frames(vae: AutoencoderKL, params: Any, frames: jax.Array, chunk: int):
    encode = lambda x: vae.apply({"params": params}, x, method=AutoencoderKL.encode)
    return _chunked(encode, frames, chunk)


@functools.partial(jax.jit, static_argnames=("vae", "chunk"))
def _decode_frames(vae: AutoencoderKL, params: Any, latents: jax.Array, chunk: int):
    decode = lambda z: vae.apply({"params": params}, z, method=AutoencoderKL.decode)
    return _chunked(decode, latents / vae.scaling_factor, chunk)


def encode_video(vae: AutoencoderKL, params: Any, frames: Any, *, chunk: Optional[int] = None
                 ) -> tuple[jax.Array, jax.Array]:
    """frames (B, F, H, W, C) in [-1, 1] -> posterior (mean, logvar), each (B, F, H/f, W/f, Cz),
    unscaled (multiply a draw by vae.scaling_factor for the diffusion model). chunk: frames
    encoded at once (default: all B·F)."""
    _check_video("encode_video frames", frames, vae.in_channels, vae.downsample_factor)
    b, f = np.shape(frames)[:2]
    flat = jnp.reshape(jnp.asarray(frames), (b * f,) + np.shape(frames)[2:])
    mean, logvar = _encode_frames(vae, params, flat, _chunk_size(chunk, b * f))
    return mean.reshape((b, f) + mean.shape[1:]), logvar.reshape((b, f) + logvar.shape[1:])


def decode_video(vae: AutoencoderKL, params: Any, latents: Any, *, chunk: int) -> jax.Array:
    """latents (B, F, h, w, Cz), SCALED (z·scaling_factor, as the diffusion model sees them) ->
    frames float32 (B, F, f·h, f·w, C_out). Decodes at most `chunk` frames at a time (a lax.map
    over chunks inside one jit), so peak activation memory is one chunk's whatever B·F is."""
    _check_video("decode_video latents", latents, vae.latent_channels)
    b, f = np.shape(latents)[:2]
    flat = jnp.reshape(jnp.asarray(latents), (b * f,) + np.shape(latents)[2:])
    frames = _decode_frames(vae, params, flat, _chunk_size(chunk, b * f))
    return frames.reshape((b, f) + frames.shape[1:])


def _chunk_size(chunk: Optional[int], total: int) -> int:
    if chunk is None:
        return total
    if not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk: expected a positive int (frames decoded at once), got {chunk!r}")
    return min(int(chunk), total)


# ----------------------------------------------------------------------------------------------
# On disk.
# ----------------------------------------------------------------------------------------------

def vae_spec(vae: AutoencoderKL) -> dict:
    """JSON-able fields of the module (dtype by name, block_out_channels as a list)."""
    fields = {f.name: getattr(vae, f.name) for f in dataclasses.fields(vae)
              if f.name not in ("parent", "name")}
    fields["dtype"] = jnp.dtype(fields["dtype"]).name
    fields["block_out_channels"] = [int(c) for c in fields["block_out_channels"]]
    return {"family": "AutoencoderKL", "fields": fields}


def save_vae(directory: str, vae: AutoencoderKL, params: Any) -> None:
    """Writes DIR/params (orbax) then DIR/vae.json (written last: a directory without it is
    incomplete). DIR must not hold params yet."""
    from dit3d_jax.models.export import save_params_and_spec

    save_params_and_spec(directory, params, "vae.json", vae_spec(vae))


def load_vae(directory: str, dtype: Any = None) -> tuple[AutoencoderKL, Any]:
    """Reads what `save_vae` wrote -> (AutoencoderKL, float32 params); dtype (a jnp dtype or its
    name) replaces the stored compute dtype."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    spec_path = os.path.join(directory, "vae.json")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"VAE directory {directory} does not exist (expected the output "
                                f"of convert_torch_weights.py --vae)")
    if not os.path.isfile(spec_path):
        hint = (" (it holds model.json: a DiT, not a VAE)"
                if os.path.isfile(os.path.join(directory, "model.json")) else "")
        raise FileNotFoundError(f"VAE directory {directory} has no vae.json{hint}; expected the "
                                f"output of convert_torch_weights.py --vae")
    with open(spec_path) as f:
        spec = json.load(f)
    if spec.get("family") != "AutoencoderKL":
        raise ValueError(f"{spec_path}: expected family 'AutoencoderKL', got "
                         f"{spec.get('family')!r}")
    fields = dict(spec["fields"])
    fields["block_out_channels"] = tuple(fields["block_out_channels"])
    if dtype is not None:
        fields["dtype"] = dtype
    if isinstance(fields["dtype"], str):
        from dit3d_jax.models.export import DTYPES  # pylint: disable=import-outside-toplevel
        fields["dtype"] = DTYPES[fields["dtype"]]
    params = ocp.StandardCheckpointer().restore(os.path.join(directory, "params"))
    return AutoencoderKL(**fields), params
