"""torchvision `VisionTransformer` state_dicts (e.g. `vit_b_16`) -> Flax params for `models.ViT`.

The key map is a renaming plus layout changes:
  conv_proj.weight (D, 3, p, p)                         -> conv_proj/kernel (p, p, 3, D)
  class_token (1, 1, D)                                 -> class_token
  encoder.pos_embedding (1, 1 + g², D)                  -> pos_embedding (grid resized, below)
  encoder.layers.encoder_layer_i.ln_{1,2}.{weight,bias} -> encoder_layer_i/ln_{1,2}/{scale,bias}
  ….self_attention.in_proj_weight (3D, D) / _bias      -> …/self_attention/qkv/{kernel,bias}
  ….self_attention.out_proj.*                           -> …/self_attention/proj/*
  ….mlp.0.* or ….mlp.linear_1.* (older files)           -> …/mlp_0/*;  mlp.3 / mlp.linear_2 -> mlp_3
  encoder.ln.*                                          -> encoder_ln/{scale,bias}
Linear weights (out, in) become kernels (in, out). The ImageNet classifier (`heads.*`) is not
part of the backbone and is skipped. When the model's grid differs from the file's (another input
size or patch), the g×g part of the position embedding is resized with PyTorch's bicubic
convention (`torch_bicubic_matrix`) and the class token's position is kept. Every unknown,
missing or mis-shaped key is an error that lists all of them.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional

import numpy as np

from dit3d_jax.convert.torch_dit import (_expected_shapes, _nest, _to_numpy, check_key_match,
                                         select_state_dict)
from dit3d_jax.models import get_model
from dit3d_jax.models.vit3d import VIT_SIZES, ViT

_LAYER = re.compile(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)")
_LAYER_PARTS = {
    "ln_1.weight": ("ln_1", "scale"), "ln_1.bias": ("ln_1", "bias"),
    "ln_2.weight": ("ln_2", "scale"), "ln_2.bias": ("ln_2", "bias"),
    "self_attention.in_proj_weight": ("self_attention", "qkv", "kernel"),
    "self_attention.in_proj_bias": ("self_attention", "qkv", "bias"),
    "self_attention.out_proj.weight": ("self_attention", "proj", "kernel"),
    "self_attention.out_proj.bias": ("self_attention", "proj", "bias"),
    "mlp.0.weight": ("mlp_0", "kernel"), "mlp.0.bias": ("mlp_0", "bias"),
    "mlp.linear_1.weight": ("mlp_0", "kernel"), "mlp.linear_1.bias": ("mlp_0", "bias"),
    "mlp.3.weight": ("mlp_3", "kernel"), "mlp.3.bias": ("mlp_3", "bias"),
    "mlp.linear_2.weight": ("mlp_3", "kernel"), "mlp.linear_2.bias": ("mlp_3", "bias"),
}
_TOP = {"conv_proj.weight": ("conv_proj", "kernel"), "conv_proj.bias": ("conv_proj", "bias"),
        "class_token": ("class_token",), "encoder.pos_embedding": ("pos_embedding",),
        "encoder.ln.weight": ("encoder_ln", "scale"), "encoder.ln.bias": ("encoder_ln", "bias")}
_SKIPPED = re.compile(r"heads\..+")  # the ImageNet classifier (head, optional pre_logits)

# PyTorch's bicubic interpolation (upsample_bicubic2d): cubic convolution with A = -0.75.
_A = -0.75


def _cubic_near(x: float) -> float:  # |x| <= 1
    return ((_A + 2) * x - (_A + 3)) * x * x + 1


def _cubic_far(x: float) -> float:  # 1 < |x| < 2
    return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A


def torch_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 W such that W @ v resizes v along one axis exactly as
    `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)` (no antialias) does:
    source x = (i + 0.5)·n_in/n_out − 0.5, taps floor(x) − 1 … floor(x) + 2 clamped to the edge,
    weights from cubic convolution with A = −0.75."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"torch_bicubic_matrix: sizes must be >= 1, got {n_in} -> {n_out}")
    w = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        x = scale * (i + 0.5) - 0.5
        left = math.floor(x)
        t = x - left
        taps = (_cubic_far(t + 1), _cubic_near(t), _cubic_near(1 - t), _cubic_far(2 - t))
        for k, weight in enumerate(taps):
            w[i, min(max(left - 1 + k, 0), n_in - 1)] += weight
    return w


def resize_position_embedding(pos: np.ndarray, grid: int) -> np.ndarray:
    """(1, 1 + g², D) class-first position embedding -> (1, 1 + grid², D): the g×g patch grid
    resized bicubically (PyTorch's convention), the class token's position kept."""
    pos = np.asarray(pos, np.float64)
    g = math.isqrt(pos.shape[1] - 1)
    if pos.ndim != 3 or pos.shape[0] != 1 or g * g != pos.shape[1] - 1:
        raise ValueError(f"encoder.pos_embedding: expected shape (1, 1 + g², D) with a square "
                         f"grid, got {pos.shape}")
    w = torch_bicubic_matrix(g, grid)
    patches = pos[0, 1:].reshape(g, g, -1)
    resized = np.einsum("ai,ijd,bj->abd", w, patches, w).reshape(grid * grid, -1)
    return np.concatenate([pos[0, :1], resized])[None]


def vit_flax_path(torch_key: str) -> Optional[tuple[str, ...]]:
    """torch key -> Flax param path of `ViT`, or None when the key is not a backbone key."""
    if torch_key in _TOP:
        return _TOP[torch_key]
    match = _LAYER.fullmatch(torch_key)
    if match and match.group(2) in _LAYER_PARTS:
        return (f"encoder_layer_{match.group(1)}",) + _LAYER_PARTS[match.group(2)]
    return None


def infer_vit(state_dict: Mapping[str, Any]) -> ViT:
    """The ViT (width, depth, heads, patch, input size) a torchvision state_dict holds; heads come
    from the width's entry in VIT_SIZES (torchvision's B/L widths and DeiT's Ti/S)."""
    needed = ("conv_proj.weight", "encoder.pos_embedding")
    missing = [k for k in needed if k not in state_dict]
    if missing:
        raise ValueError(f"state_dict: not a torchvision ViT (missing keys {missing}); keys look "
                         f"like {sorted(state_dict)[:3]}")
    hidden, _, patch, _ = np.shape(_to_numpy(state_dict["conv_proj.weight"]))
    grid = math.isqrt(np.shape(_to_numpy(state_dict["encoder.pos_embedding"]))[1] - 1)
    depth = len({m.group(1) for k in state_dict if (m := _LAYER.fullmatch(k)) is not None})
    size = next((s for s, (_, h, _) in VIT_SIZES.items() if h == hidden), None)
    if size is None:
        raise ValueError(f"state_dict: no ViT variant has width {hidden}; known (depth, width, "
                         f"heads): {VIT_SIZES}")
    mlp = state_dict.get("encoder.layers.encoder_layer_0.mlp.0.weight",
                         state_dict.get("encoder.layers.encoder_layer_0.mlp.linear_1.weight"))
    mlp_ratio = np.shape(_to_numpy(mlp))[0] / hidden if mlp is not None else 4.0
    return get_model(f"ViT-{size}/{patch}", depth=depth, input_size=grid * int(patch),
                     mlp_ratio=mlp_ratio)


def convert_torch_vit(state_dict: Mapping[str, Any], model: Optional[ViT] = None) -> dict:
    """A torchvision ViT state_dict (torch tensors or NumPy arrays) -> `ViT` params (nested dict,
    float32 NumPy). `model` defaults to `infer_vit(state_dict)`; its input size may differ from
    the file's (the position grid is resized). Raises ValueError listing every unknown, missing
    or mis-shaped key."""
    state_dict = select_state_dict(state_dict)
    model = infer_vit(state_dict) if model is None else model
    expected = _expected_shapes(model)
    converted, sources, unknown, wrong, wrong_paths = {}, {}, [], [], set()
    for key, value in state_dict.items():
        path = vit_flax_path(key)
        if path is None or path not in expected:
            if not _SKIPPED.fullmatch(key):
                unknown.append(key)
            continue
        if path in converted:
            wrong.append(f"{key}: {sources[path]} already filled {'/'.join(path)} (one MLP key "
                         f"spelling per file)")
            continue
        array = np.asarray(_to_numpy(value), np.float64)
        if path[-1] == "kernel":
            array = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T
        if path == ("pos_embedding",) and array.shape != expected[path] and array.ndim == 3 \
                and array.shape[2] == expected[path][2] \
                and math.isqrt(array.shape[1] - 1) ** 2 == array.shape[1] - 1:
            array = resize_position_embedding(array, model.grid_size)
        if array.shape != expected[path]:
            wrong.append(f"{key}: {tuple(array.shape)} after layout change, expected "
                         f"{expected[path]} for {'/'.join(path)}")
            wrong_paths.add(path)
            continue
        converted[path], sources[path] = array.astype(np.float32), key
    check_key_match("the ViT", unknown, set(expected) - set(converted) - wrong_paths, wrong)
    return _nest(converted)
