"""Models: DiT (image), DiT3D (video), ViT3D (video on a ViT backbone) and the image ViT
backbone; the variant registry and parameter helpers. Each model declares what it takes as
`model.input_spec` (an `InputSpec`: batch key, example shape, labels, text).

    model = get_model("DiT3D-S/2", num_frames=16, text_dim=384)
    params = init_params(model, jax.random.key(0))
    out = model.apply({"params": params}, x, t, text=emb, text_mask=mask)
"""
from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from dit3d_jax.models.dit import PATCHES, SIZES, DiT
from dit3d_jax.models.dit3d import DiT3D
from dit3d_jax.models.inputs import InputSpec
from dit3d_jax.models.vit3d import VIT_PATCHES, VIT_SIZES, ViT, ViT3D

FAMILIES = {"DiT": DiT, "DiT3D": DiT3D, "ViT3D": ViT3D, "ViT": ViT}
_TABLES = {"DiT": (SIZES, PATCHES), "DiT3D": (SIZES, PATCHES), "ViT3D": (VIT_SIZES, VIT_PATCHES),
           "ViT": (VIT_SIZES, VIT_PATCHES)}
MODEL_NAMES = tuple(f"{family}-{size}/{patch}" for family, (sizes, patches) in _TABLES.items()
                    for size in sizes for patch in patches)


def family_of(model: nn.Module) -> str:
    """"DiT", "DiT3D", "ViT3D" or "ViT": the registry name of the model's class."""
    return next(k for k, cls in FAMILIES.items() if type(model) is cls)


def get_model(name: str, **overrides: Any) -> DiT:
    """Builds a registered variant, e.g. "DiT-XL/2", "DiT3D-S/2" or "ViT3D-B/16" (a "ViT-B/16" is
    the image backbone alone, not a denoiser); overrides set module fields. A name without a
    size, FAMILY/PATCH (e.g. "DiT3D/4"), takes hidden_size, depth and num_heads from overrides."""
    match = re.fullmatch(r"(DiT3D|DiT|ViT3D|ViT)(?:-(\w+))?/(\d+)", name)
    sizes, patches = _TABLES[match.group(1)] if match else ({}, ())
    if (match is None or match.group(2) not in (None, *sizes)
            or int(match.group(3)) not in patches):
        raise ValueError(f"unknown model name {name!r}; expected one of {', '.join(MODEL_NAMES)}"
                         f", or FAMILY/PATCH (e.g. DiT3D/4) with hidden_size, depth, num_heads")
    family, size, patch = match.group(1), match.group(2), int(match.group(3))
    missing = [f for f in ("hidden_size", "depth", "num_heads") if f not in overrides]
    if size is None and missing:
        raise ValueError(f"model {name!r} names no size: expected hidden_size, depth and "
                         f"num_heads, missing {', '.join(missing)}")
    cls = FAMILIES[family]
    fields = set(cls.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {name}; valid: {sorted(fields)}")
    kwargs = dict(zip(("depth", "hidden_size", "num_heads"), sizes[size])) if size else {}
    kwargs["patch_size"] = patch
    kwargs.update(overrides)
    return cls(**kwargs)


def check_denoiser(name: str, source: str) -> None:
    """ValueError naming `source` when the registry name `name` (e.g. "ViT-B/16") is the bare
    image ViT backbone, which is no denoiser: it trains and samples nothing."""
    if FAMILIES.get(re.split("[-/]", name, maxsplit=1)[0]) is ViT:
        raise ValueError(f"{source}: {name} is the image ViT backbone alone, not a denoiser; "
                         f"expected a DiT, DiT3D or ViT3D (a ViT3D of its size starts from a "
                         f"converted ViT through init_from)")


def variant_name(model: DiT) -> str:
    """"DiT-S/2"-style name of a model (with its depth when it differs from the table's)."""
    family = family_of(model)
    for size, (depth, hidden, heads) in _TABLES[family][0].items():
        if (hidden, heads) == (model.hidden_size, model.num_heads):
            suffix = "" if depth == model.depth else f" (depth {model.depth})"
            return f"{family}-{size}/{model.patch_size}{suffix}"
    return f"{family} custom (hidden {model.hidden_size}, depth {model.depth})"


def dummy_inputs(model: DiT, batch: int = 1) -> dict:
    """Zero inputs of the right shapes for `model.init` / `jax.eval_shape` (`InputSpec.zeros`)."""
    return model.input_spec.zeros(batch)


def init_boxed(model: DiT, rng: jax.Array) -> Any:
    """Params with their logical-axis metadata (nn.Partitioned leaves)."""
    return model.init({"params": rng}, **dummy_inputs(model))["params"]


def init_params(model: DiT, rng: jax.Array) -> Any:
    """Freshly initialised float32 params, plain arrays (jitted, so large variants init fast)."""
    return jax.jit(lambda key: nn.unbox(init_boxed(model, key)))(rng)


def param_logical_axes(model: DiT) -> Any:
    """Pytree (like params) of PartitionSpecs holding logical axis names, e.g. ('embed', 'mlp')."""
    abstract = jax.eval_shape(lambda: init_boxed(model, jax.random.key(0)))
    return nn.get_partition_spec(abstract)


def param_shapes(model: DiT) -> Any:
    """Pytree of jax.ShapeDtypeStruct like the model's params (nothing is computed)."""
    return jax.eval_shape(lambda: nn.unbox(init_boxed(model, jax.random.key(0))))


def count_params(params: Any) -> int:
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)))


__all__ = ["DiT", "DiT3D", "ViT", "ViT3D", "InputSpec", "MODEL_NAMES", "family_of", "get_model",
           "init_params", "check_denoiser", "init_boxed", "param_logical_axes", "param_shapes",
           "count_params", "dummy_inputs", "variant_name"]
