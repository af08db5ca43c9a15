"""facebookresearch/DiT state_dicts -> Flax params for `dit3d_jax.models.DiT`, and DiT -> DiT3D.

The key map is a renaming (`blocks.3.mlp.fc1.weight` -> blocks_3/mlp/fc1/kernel,
`adaLN_modulation.1` -> adaLN_modulation_1, `t_embedder.mlp.0` -> t_embedder/mlp_0) plus layout
changes: Linear weights (out, in) -> kernels (in, out); the patch Conv2d (D, C, p, p) -> (p, p, C, D);
the label table -> `embedding`; a model with `scan_blocks` gets the blocks stacked. DiT's frozen `pos_embed` is not a Flax parameter (the model computes
it); the converter checks the stored one equals it. Every unknown, missing or mis-shaped key is an
error that lists all of them.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np

from dit3d_jax.models import DiT, get_model, init_boxed
from dit3d_jax.models.dit import SIZES, stack_blocks
from dit3d_jax.models.layers import sincos_2d

_INDEXED = re.compile(r"(blocks|mlp|adaLN_modulation)\.(\d+)")


def _to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any dtype/device) or array -> float32/int NumPy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def select_state_dict(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """A plain state_dict, or DiT's training dict {'model', 'ema', 'opt', 'args'}: prefers 'ema'."""
    for key in ("ema", "model", "state_dict"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            return checkpoint[key]
    return checkpoint


def flax_path(torch_key: str, ndim: int) -> tuple[tuple[str, ...], Optional[tuple[int, ...]]]:
    """torch key -> (Flax param path, transpose to apply or None)."""
    parts = _INDEXED.sub(r"\1_\2", torch_key).split(".")
    leaf = parts[-1]
    if parts[:2] == ["y_embedder", "embedding_table"] and leaf == "weight":
        return ("y_embedder", "embedding_table", "embedding"), None
    if leaf == "weight":
        return tuple(parts[:-1]) + ("kernel",), (2, 3, 1, 0) if ndim == 4 else (1, 0)
    return tuple(parts), None


def _variant_name(hidden: int, patch: int) -> str:
    """The DiT size with this width (its head count comes along); depth is read separately."""
    for size, (_, h, _) in SIZES.items():
        if h == hidden:
            return f"DiT-{size}/{patch}"
    raise ValueError(f"state_dict: no DiT variant has hidden size {hidden}; known (depth, "
                     f"hidden, heads): {SIZES}")


def infer_model(state_dict: Mapping[str, Any]) -> DiT:
    """The DiT variant and options that a facebookresearch state_dict was trained with."""
    needed = ("x_embedder.proj.weight", "pos_embed", "final_layer.linear.weight")
    missing = [k for k in needed if k not in state_dict]
    if missing:
        raise ValueError(f"state_dict: cannot infer the variant, missing keys {missing}")
    hidden, channels, patch, _ = np.shape(_to_numpy(state_dict["x_embedder.proj.weight"]))
    tokens = np.shape(_to_numpy(state_dict["pos_embed"]))[1]
    grid = math.isqrt(tokens)
    depth = len({int(m.group(1)) for k in state_dict
                 if (m := re.match(r"blocks\.(\d+)\.", k)) is not None})
    out_features = np.shape(_to_numpy(state_dict["final_layer.linear.weight"]))[0]
    options: dict[str, Any] = dict(depth=depth, input_size=grid * patch, in_channels=int(channels),
                                   learn_sigma=out_features == 2 * channels * patch * patch)
    table = state_dict.get("y_embedder.embedding_table.weight")
    if table is None:
        options.update(num_classes=0)
    else:  # DiT always trains with class dropout, which adds the null row.
        options.update(num_classes=int(np.shape(table)[0]) - 1, class_dropout_prob=0.1)
    return get_model(_variant_name(int(hidden), int(patch)), **options)


def _expected_shapes(model: DiT) -> dict[tuple[str, ...], tuple[int, ...]]:
    abstract = jax.eval_shape(lambda: init_boxed(model, jax.random.key(0)))
    flat = jax.tree_util.tree_flatten_with_path(abstract, is_leaf=lambda x: hasattr(x, "unbox"))[0]
    return {tuple(k.key for k in path): tuple(leaf.unbox().shape if hasattr(leaf, "unbox")
                                              else leaf.shape) for path, leaf in flat}


def _nest(flat: Mapping[tuple[str, ...], np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def check_key_match(target: str, unknown: list, missing, wrong: list) -> None:
    """ValueError listing every unknown torch key, missing param path and mis-shaped key of a
    conversion into `target`, or nothing when all three are empty."""
    missing = sorted("/".join(p) for p in missing)
    problems = ([f"unknown keys: {unknown}"] if unknown else []) + \
               ([f"missing params: {missing}"] if missing else []) + \
               ([f"mis-shaped: {wrong}"] if wrong else [])
    if problems:
        raise ValueError(f"state_dict does not match {target}: " + "; ".join(problems))


def convert_torch_state_dict(state_dict: Mapping[str, Any], model: Optional[DiT] = None) -> dict:
    """A DiT state_dict (torch tensors or NumPy arrays) -> Flax params (nested dict, float32 NumPy).

    `model` defaults to the variant inferred from the shapes. Raises ValueError listing every
    unknown, missing or mis-shaped key.
    """
    state_dict = select_state_dict(state_dict)
    model = infer_model(state_dict) if model is None else model
    expected = _expected_shapes(model.clone(scan_blocks=False))
    converted, unknown, wrong = {}, [], []
    for key, value in state_dict.items():
        array = _to_numpy(value)
        if key == "pos_embed":
            reference = sincos_2d(model.hidden_size, model.grid_size)[None]
            if array.shape != reference.shape or not np.allclose(array, reference, atol=1e-5):
                wrong.append(f"pos_embed: {array.shape} is not DiT's fixed sin-cos embedding "
                             f"{reference.shape}")
            continue
        path, perm = flax_path(key, array.ndim)
        if path not in expected:
            unknown.append(key)
            continue
        array = array.transpose(perm) if perm else array
        if array.shape != expected[path]:
            wrong.append(f"{key}: {tuple(array.shape)} after layout change, expected "
                         f"{expected[path]} for {'/'.join(path)}")
            continue
        converted[path] = array.astype(np.float32)
    check_key_match("the model", unknown, set(expected) - set(converted), wrong)
    params = _nest(converted)
    return stack_blocks(params, model.depth) if model.scan_blocks else params


def inflate(dit_params: Mapping, dit3d_params: Mapping) -> dict:
    """Copies every image-DiT param into a DiT3D param tree; video-only layers keep their values.

    Unrolled DiT blocks (blocks_0, …) are stacked first when the DiT3D scans its blocks. Either
    tree may be boxed (nn.Partitioned leaves, as `model.init` returns them); the result is plain
    arrays, as `init_params` gives. Raises ValueError listing DiT params that DiT3D lacks or whose
    shapes differ.
    """
    dit_params, dit3d_params = nn.unbox(dit_params), nn.unbox(dit3d_params)
    if "blocks" in dit3d_params and "blocks_0" in dit_params:
        dit_params = stack_blocks(dit_params, sum(k.startswith("blocks_") for k in dit_params))
    dit_flat = {tuple(k.key for k in p): v
                for p, v in jax.tree_util.tree_flatten_with_path(dit_params)[0]}
    out_flat = {tuple(k.key for k in p): v
                for p, v in jax.tree_util.tree_flatten_with_path(dit3d_params)[0]}
    problems = []
    for path, value in dit_flat.items():
        if path not in out_flat:
            problems.append(f"{'/'.join(path)} (not in DiT3D)")
        elif np.shape(out_flat[path]) != np.shape(value):
            problems.append(f"{'/'.join(path)}: DiT {np.shape(value)} vs DiT3D "
                            f"{np.shape(out_flat[path])}")
        else:
            out_flat[path] = value
    if problems:
        raise ValueError("cannot inflate: " + "; ".join(problems))
    return _nest(out_flat)
