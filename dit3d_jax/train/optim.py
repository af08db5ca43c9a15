"""The optimizer: AdamW with linear warm-up, global-norm clipping, accumulation, and freezing.

    labels = freeze_labels(model, config.optim.freeze)      # {"trainable", "frozen"} per param
    tx = make_optimizer(config.optim, labels)

Freezing is an `optax.partition` (`multi_transform` on older optax) over the label tree: frozen
leaves get `set_to_zero()` and no optimizer moments, clipping and accumulation see only the
trainable leaves. `optim.freeze` is
  - "none": train everything;
  - "backbone": freeze every parameter the image DiT of the same configuration has (same path and
    shape), i.e. train only the video layers (temporal attention, cross-attention, text layers);
    the image model is `backbone_model()`: for a ViT3D its ViT backbone, so the ViT is
    frozen and the timestep/label/text embedders, video blocks, head and 3-D convolution train;
  - anything else: a regular expression `re.search`-ed against "/"-joined parameter paths such as
    "blocks_3/attn/qkv/kernel"; matching leaves are frozen.
Weight decay (AdamW's decoupled form) applies to every trainable leaf, as torch.optim.AdamW over
`model.parameters()` does in DiT's train.py.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from dit3d_jax.models import param_shapes
from dit3d_jax.models.dit import DiT
from dit3d_jax.models.dit3d import DiT3D

TRAINABLE, FROZEN = "trainable", "frozen"
ADAM_EPS = 1e-8

# optax >= 0.2.? names it `partition`; older releases only have `multi_transform`.
_partition = getattr(optax, "partition", None) or optax.multi_transform


def path_str(path) -> str:
    """A jax key path as "blocks_0/attn/qkv/kernel"."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _flat_shapes(model: DiT) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(param_shapes(model))[0]
    return {path_str(p): tuple(leaf.shape) for p, leaf in leaves}


def freeze_labels(model: DiT, freeze: str) -> Any:
    """Pytree like the params with TRAINABLE / FROZEN strings per leaf (see module doc)."""
    if not isinstance(freeze, str):
        raise TypeError(f"optim.freeze: expected a str ('none', 'backbone' or a regex), got "
                        f"{type(freeze).__name__}")
    shapes = param_shapes(model)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    paths = [path_str(p) for p, _ in flat]
    if freeze in ("", "none"):
        frozen = [False] * len(paths)
    elif freeze == "backbone":
        if not isinstance(model, DiT3D):
            raise ValueError("optim.freeze: 'backbone' freezes the image-DiT part of a DiT3D, but "
                             f"the model is an image {type(model).__name__} (nothing would train)")
        backbone = _flat_shapes(model.backbone_model())
        frozen = [backbone.get(path) == tuple(leaf.shape) for path, (_, leaf) in zip(paths, flat)]
    else:
        try:
            pattern = re.compile(freeze)
        except re.error as err:
            raise ValueError(f"optim.freeze: expected 'none', 'backbone' or a valid regex, got "
                             f"{freeze!r} ({err})") from None
        frozen = [pattern.search(path) is not None for path in paths]
        if not any(frozen):
            raise ValueError(f"optim.freeze: regex {freeze!r} matches no parameter; paths look "
                             f"like {paths[0]!r}")
    if all(frozen):
        raise ValueError(f"optim.freeze: {freeze!r} freezes every parameter; nothing would train")
    labels = [FROZEN if f else TRAINABLE for f in frozen]
    return jax.tree_util.tree_unflatten(treedef, labels)


def make_schedule(optim_config) -> optax.Schedule:
    """lr · min(1, (n + 1) / warmup_steps) for the n-th update (n from 0): a linear warm-up that
    reaches optim.lr at update warmup_steps − 1 (no wasted zero-lr first step), then constant."""
    lr, warmup = float(optim_config.lr), int(optim_config.warmup_steps)
    if not lr > 0:
        raise ValueError(f"optim.lr: expected > 0, got {lr!r}")
    if warmup < 0:
        raise ValueError(f"optim.warmup_steps: expected >= 0, got {warmup!r}")
    if warmup == 0:
        return optax.constant_schedule(lr)
    return lambda count: lr * jnp.minimum(1.0, (count + 1.0) / warmup)


def make_optimizer(optim_config, labels: Any) -> optax.GradientTransformation:
    """partition(trainable: [MultiSteps](clip ∘ AdamW(schedule)), frozen: set_to_zero)."""
    clip = float(optim_config.grad_clip)
    accum = int(optim_config.accum_steps)
    if clip < 0:
        raise ValueError(f"optim.grad_clip: expected >= 0 (0 = off), got {clip!r}")
    if accum < 1:
        raise ValueError(f"optim.accum_steps: expected >= 1 (1 = off), got {accum!r}")
    adamw = optax.adamw(make_schedule(optim_config), b1=float(optim_config.b1),
                        b2=float(optim_config.b2), eps=ADAM_EPS,
                        weight_decay=float(optim_config.weight_decay))
    tx = optax.chain(optax.clip_by_global_norm(clip), adamw) if clip > 0 else adamw
    if accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum)
    return _partition({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)


def _find(tree: Any, cls: type) -> list:
    return [x for x in jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, cls))
            if isinstance(x, cls)]


def applied_updates(opt_state: Any) -> jax.Array:
    """int32 number of parameter updates the optimizer has applied (accumulation counted once)."""
    multi = _find(opt_state, optax.MultiStepsState)
    if multi:
        return multi[0].gradient_step
    return _find(opt_state, optax.ScaleByScheduleState)[0].count


def update_applied(opt_state: Any) -> jax.Array:
    """Scalar bool: the last `update` changed the params (always, unless accumulating)."""
    multi = _find(opt_state, optax.MultiStepsState)
    if multi:
        return multi[0].mini_step == 0
    return jnp.asarray(True)


def learning_rate(optim_config) -> Callable[[Any], jax.Array]:
    """opt_state -> the learning rate the next update will use (float32 scalar)."""
    schedule = make_schedule(optim_config)
    return lambda opt_state: jnp.asarray(schedule(applied_updates(opt_state)), jnp.float32)


def apply_updates(params: Any, updates: Any, labels: Any) -> Any:
    """params + updates on trainable leaves; frozen leaves are returned as they are (bit-exact)."""
    return jax.tree_util.tree_map(
        lambda label, p, u: p if label == FROZEN else (p + u.astype(p.dtype)).astype(p.dtype),
        labels, params, updates)


def global_norm(leaves: list) -> jax.Array:
    """float32 sqrt(Σ x²) over a list of arrays."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def trainable_only(tree: Any, labels: Any) -> list:
    """Leaves of `tree` (like the params) whose label is TRAINABLE."""
    return [leaf for label, leaf in zip(jax.tree_util.tree_leaves(labels),
                                        jax.tree_util.tree_leaves(tree)) if label == TRAINABLE]
