"""Stable Diffusion VAE weights (diffusers or original LDM layout) -> Flax `AutoencoderKL` params.

    vae, params = load_torch_vae("sd-vae-ft-ema/")      # or a .safetensors/.bin/.ckpt file

Accepted files:
- diffusers: a directory with config.json and diffusion_pytorch_model.safetensors (or .bin), a
  diffusers pipeline directory with such a `vae/` folder, or the weight file itself (config.json
  beside it is read when present). The config gives block_out_channels, layers_per_block,
  latent_channels, norm_num_groups, scaling_factor.
- LDM (CompVis): a bare VAE file (`vae-ft-mse-840000-ema-pruned.safetensors`, keys encoder.*,
  decoder.*, quant_conv.*, post_quant_conv.*) or a whole SD checkpoint (.ckpt/.safetensors, VAE
  under `first_stage_model.*`, the rest ignored). There is no config: widths and depth are read
  from the tensor shapes, GroupNorm groups and the scaling factor are the SD VAE's (32, 0.18215).
  LDM's training-only `loss.*` tensors (LPIPS, discriminator), when present, are left out.

Keys are first renamed to diffusers' names (LDM `encoder.down.I.block.J` -> `encoder.down_blocks.
I.resnets.J`, `decoder.up.I` -> `decoder.up_blocks.{N-1-I}` (LDM numbers the decoder's levels
from the output end), `mid.block_1/2` -> `mid_block.resnets.0/1`, `mid.attn_1.{norm,q,k,v,
proj_out}` -> `mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}`, `nin_shortcut` ->
`conv_shortcut`, `norm_out` -> `conv_norm_out`; old diffusers' `query/key/value/proj_attn` ->
`to_q/to_k/to_v/to_out.0`), then mapped to the Flax tree (`.N.` -> `_N`; GroupNorm weight ->
scale; conv weight (O, I, kh, kw) -> kernel (kh, kw, I, O); linear or 1x1-conv attention weight
-> kernel (I, O)). Every unknown, missing or mis-shaped key is reported in one ValueError.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Optional

import jax
import numpy as np

from dit3d_jax.convert.torch_dit import _nest, _to_numpy
from dit3d_jax.models.vae import AutoencoderKL, param_shapes

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
LDM_PREFIX = "first_stage_model."
_NORMS = ("norm1", "norm2", "group_norm", "conv_norm_out")
_ATTENTION = ("to_q", "to_k", "to_v", "to_out_0")
_LDM_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v",
                  "proj_out": "to_out.0"}
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_CONFIG_FIELDS = ("in_channels", "out_channels", "latent_channels", "block_out_channels",
                  "layers_per_block", "norm_num_groups", "scaling_factor")


# ----------------------------------------------------------------------------------------------
# Reading files.
# ----------------------------------------------------------------------------------------------

def _read_safetensors(path: str) -> dict[str, Any]:
    """Only the VAE's tensors when the file is a whole SD checkpoint (first_stage_model.*)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        keys = list(f.keys())
        if any(k.startswith(LDM_PREFIX) for k in keys):
            keys = [k for k in keys if k.startswith(LDM_PREFIX)]
        return {k: f.get_tensor(k) for k in keys}


def _read_torch(path: str) -> Mapping[str, Any]:
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        if "can still be loaded" in str(err):  # a real pickle, with objects beside the tensors
            raise ValueError(f"{path}: a pickled checkpoint holding objects other than tensors "
                             f"(not loaded: unpickling them could run code); save its "
                             f"state_dict as .safetensors and pass that") from err
        raise ValueError(f"{path}: not a PyTorch checkpoint or safetensors file (torch.load: "
                         f"{type(err).__name__})") from err
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]  # a (lightning) SD training checkpoint
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path}: expected a state_dict (a mapping of names to tensors), got "
                         f"{type(checkpoint).__name__}")
    return checkpoint


def _read_weights(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            head = f.read(9)  # safetensors: u64 header length, then the JSON header
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror})") from err
    if len(head) == 9 and head[8:9] == b"{":
        try:
            return _read_safetensors(path)
        except Exception as err:  # safetensors' own error types vary by version
            if path.endswith(".safetensors"):
                raise ValueError(f"{path}: not a valid safetensors file ({err})") from err
    if path.endswith(".safetensors"):
        raise ValueError(f"{path}: not a safetensors file (no safetensors header)")
    return dict(_read_torch(path))


def _read_config(path: str) -> dict:
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: expected a diffusers config.json, could not read it ({err})"
                         ) from err
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def read_vae_checkpoint(path: str) -> tuple[dict[str, Any], Optional[dict]]:
    """path (diffusers dir, pipeline dir, or weight file) -> (state_dict, diffusers config or
    None). Raises FileNotFoundError for a missing path, ValueError for anything not a VAE file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"VAE weights {path!r} do not exist (expected a diffusers "
                                f"AutoencoderKL directory or a .safetensors/.bin/.ckpt file)")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")) and \
                os.path.isdir(os.path.join(path, "vae")):
            path = os.path.join(path, "vae")  # a whole diffusers pipeline
        found = [os.path.join(path, name) for name in WEIGHT_FILES
                 if os.path.isfile(os.path.join(path, name))]
        if not found or not os.path.isfile(os.path.join(path, "config.json")):
            held = sorted(os.listdir(path))[:8]
            raise ValueError(f"{path}: expected a diffusers AutoencoderKL directory (config.json "
                             f"and {' or '.join(WEIGHT_FILES)}), it holds {held}")
        path = found[0]
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    config = None
    if os.path.basename(path) in WEIGHT_FILES and os.path.isfile(config_path):
        config = _read_config(config_path)
    return _read_weights(path), config


# ----------------------------------------------------------------------------------------------
# Key names.
# ----------------------------------------------------------------------------------------------

def detect_format(state_dict: Mapping[str, Any]) -> str:
    """"diffusers" or "ldm" (keys without a first_stage_model. prefix); anything else -> one
    ValueError saying what the keys look like."""
    keys = list(state_dict)
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in keys):
        return "diffusers"
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys):
        return "ldm"
    if ("x_embedder.proj.weight" in state_dict or any(k.startswith("blocks.") for k in keys)
            or {"ema", "model"} & set(keys)):
        raise ValueError("this is a DiT checkpoint (x_embedder.*/blocks.* keys, or a training "
                         "dict with 'ema'/'model'), not VAE weights; convert it with --checkpoint")
    raise ValueError(f"not SD VAE weights: expected keys encoder.down_blocks.* (diffusers) or "
                     f"encoder.down.* (LDM, also under first_stage_model.*), got {len(keys)} "
                     f"keys such as {keys[:5]}")


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The VAE's own tensors: first_stage_model.* unprefixed when present; LDM's training-only
    loss.* (LPIPS, discriminator, logvar) left out."""
    if any(k.startswith(LDM_PREFIX) for k in state_dict):
        state_dict = {k[len(LDM_PREFIX):]: v for k, v in state_dict.items()
                      if k.startswith(LDM_PREFIX)}
    return {k: v for k, v in state_dict.items() if not k.startswith("loss.")}


def ldm_to_diffusers_key(key: str, num_levels: int) -> str:
    """An LDM VAE key -> its diffusers name (unknown keys come back unchanged)."""
    rules = (
        (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
        (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
        (r"^(encoder|decoder)\.mid\.block_([12])\.",
         lambda m: f"{m.group(1)}.mid_block.resnets.{int(m.group(2)) - 1}."),
        (r"^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.",
         lambda m: f"{m.group(1)}.mid_block.attentions.0.{_LDM_ATTENTION[m.group(2)]}."),
        (r"^decoder\.up\.(\d+)\.block\.(\d+)\.",
         lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m.group(1))}.resnets.{m.group(2)}."),
        (r"^decoder\.up\.(\d+)\.upsample\.",
         lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m.group(1))}.upsamplers.0."),
        (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
        (r"\.nin_shortcut\.", ".conv_shortcut."),
    )
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def _modernise_attention(key: str) -> str:
    return re.sub(r"\.attentions\.0\.(query|key|value|proj_attn)\.",
                  lambda m: f".attentions.0.{_OLD_ATTENTION[m.group(1)]}.", key)


def to_diffusers_names(state_dict: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """Any accepted layout -> {diffusers key: (key as found in the file, tensor)}."""
    found = _strip_prefix(state_dict)
    if detect_format(found) == "ldm":
        levels = {int(m.group(1)) for k in found if (m := re.match(r"decoder\.up\.(\d+)\.", k))}
        num_levels = max(levels) + 1 if levels else 0
        renamed = {ldm_to_diffusers_key(k, num_levels): k for k in found}
    else:
        renamed = {_modernise_attention(k): k for k in found}
    return {new: (old, found[old]) for new, old in renamed.items()}


def flax_path(key: str) -> tuple[str, ...]:
    """A diffusers key -> the Flax param path (`encoder.down_blocks.0.resnets.1.norm1.weight` ->
    ('encoder', 'down_blocks_0', 'resnets_1', 'norm1', 'scale'))."""
    parts = re.sub(r"\.(\d+)(?=\.|$)", r"_\1", key).split(".")
    if parts[-1] == "weight":
        parts[-1] = "scale" if parts[-2] in _NORMS else "kernel"
    return tuple(parts)


def to_flax_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    """A torch tensor -> the Flax leaf at `path`: conv (O, I, kh, kw) -> (kh, kw, I, O); attention
    linear (O, I) or 1x1 conv (O, I, 1, 1) -> (I, O); biases and norms unchanged."""
    if path[-1] != "kernel":
        return value
    if path[-2] in _ATTENTION:
        if value.ndim == 4 and value.shape[2:] == (1, 1):
            value = value[:, :, 0, 0]
        return value.T if value.ndim == 2 else value
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value


# ----------------------------------------------------------------------------------------------
# The module the weights belong to.
# ----------------------------------------------------------------------------------------------

def vae_from_config(config: Mapping[str, Any]) -> AutoencoderKL:
    """A diffusers AutoencoderKL config.json -> the matching AutoencoderKL (float32); options this
    port does not implement are one ValueError."""
    problems = []
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        problems.append(f"_class_name {config['_class_name']!r} (expected 'AutoencoderKL')")
    for name, expected in (("down_block_types", "DownEncoderBlock2D"),
                           ("up_block_types", "UpDecoderBlock2D")):
        wrong = [t for t in config.get(name, ()) if t != expected]
        if wrong:
            problems.append(f"{name} {wrong} (expected only {expected!r})")
    for name, expected in (("act_fn", "silu"), ("mid_block_add_attention", True),
                           ("use_quant_conv", True), ("use_post_quant_conv", True),
                           ("shift_factor", None), ("latents_mean", None), ("latents_std", None)):
        if config.get(name, expected) != expected:
            problems.append(f"{name}={config[name]!r} (expected {expected!r})")
    if problems:
        raise ValueError(f"config.json: unsupported VAE options: {'; '.join(problems)}")
    fields = {k: config[k] for k in _CONFIG_FIELDS if config.get(k) is not None}
    if "block_out_channels" in fields:
        fields["block_out_channels"] = tuple(int(c) for c in fields["block_out_channels"])
    return AutoencoderKL(**fields)


def infer_vae(state_dict: Mapping[str, Any]) -> AutoencoderKL:
    """The AutoencoderKL a state_dict (any accepted layout) fits, from its tensor shapes; GroupNorm
    groups and the scaling factor (not in the weights) are the SD VAE's."""
    named = to_diffusers_names(state_dict)
    shape = lambda key: np.shape(named[key][1])
    needed = ["encoder.conv_in.weight", "decoder.conv_out.weight", "post_quant_conv.weight",
              "encoder.down_blocks.0.resnets.0.conv1.weight"]
    missing = [k for k in needed if k not in named]
    if missing:
        raise ValueError(f"VAE weights: cannot infer the layout, missing keys {missing}")
    levels = sorted({int(m.group(1)) for k in named
                     if (m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.0\.conv1\.weight",
                                       k))})
    layers = {int(m.group(1)) for k in named
              if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))}
    return AutoencoderKL(
        in_channels=int(shape("encoder.conv_in.weight")[1]),
        out_channels=int(shape("decoder.conv_out.weight")[0]),
        latent_channels=int(shape("post_quant_conv.weight")[0]),
        block_out_channels=tuple(int(shape(f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0])
                                 for i in levels),
        layers_per_block=len(layers))


# ----------------------------------------------------------------------------------------------
# Conversion.
# ----------------------------------------------------------------------------------------------

def _listed(items: list, limit: int = 40) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(map(str, items[:limit])) + more


def convert_vae_state_dict(state_dict: Mapping[str, Any], vae: Optional[AutoencoderKL] = None
                           ) -> Any:
    """state_dict (diffusers or LDM names, optionally under first_stage_model.) -> float32 params
    for `vae` (default: `infer_vae(state_dict)`). One ValueError lists every unknown, missing and
    mis-shaped key."""
    named = to_diffusers_names(state_dict)
    vae = infer_vae(state_dict) if vae is None else vae
    abstract = param_shapes(vae)
    expected = {tuple(getattr(k, "key", str(k)) for k in path): leaf.shape
                for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    flat, unknown, mis_shaped, seen = {}, [], [], set()
    for key, (original, tensor) in named.items():
        path = flax_path(key)
        if path not in expected:
            unknown.append(original)
            continue
        seen.add(path)
        value = to_flax_layout(path, _to_numpy(tensor).astype(np.float32))
        if value.shape != expected[path]:
            mis_shaped.append(f"{original} {tuple(np.shape(tensor))} (expected "
                              f"{expected[path]} as {'/'.join(path)})")
            continue
        flat[path] = value
    missing = ["/".join(p) for p in expected if p not in seen]
    if unknown or missing or mis_shaped:
        parts = [f"{label} ({len(items)}): {_listed(items)}" for label, items in
                 (("unknown keys", unknown), ("missing params", missing),
                  ("mis-shaped", mis_shaped)) if items]
        raise ValueError(f"VAE weights do not fit {_describe(vae)}: " + "; ".join(parts))
    return _nest(flat)


def _describe(vae: AutoencoderKL) -> str:
    return (f"AutoencoderKL(block_out_channels={tuple(vae.block_out_channels)}, layers_per_block="
            f"{vae.layers_per_block}, latent_channels={vae.latent_channels})")


def load_torch_vae(path: str) -> tuple[AutoencoderKL, Any]:
    """A VAE file or directory (see the module docstring) -> (AutoencoderKL, float32 params)."""
    state_dict, config = read_vae_checkpoint(path)
    vae = vae_from_config(config) if config is not None else infer_vae(state_dict)
    return vae, convert_vae_state_dict(state_dict, vae)
