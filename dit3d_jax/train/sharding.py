"""Device mesh, parameter shardings from logical axis rules, and global batches.

    mesh = make_mesh(config.mesh)                      # axes ('data', 'fsdp')
    shardings = param_shardings(model, mesh, config.sharding_rules)
    batch = shard_batch(mesh, host_batch)              # leading axis over ('data', 'fsdp')

Parameters carry logical axis names (embed, mlp, qkv, heads, out, freq, vocab, text); the config's
rules map each to a mesh axis or None (replicated). Names without a rule are replicated. A dim whose
size the mesh axis does not divide cannot be split evenly, so that dim falls back to replication
(the rest of the leaf keeps its sharding); so does a dim whose mesh axis an earlier dim of the same
leaf already took. Each fallback is logged.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dit3d_jax.models import param_logical_axes, param_shapes
from dit3d_jax.models.dit import DiT

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")
DEFAULT_RULES = (("embed", "fsdp"), ("mlp", None), ("qkv", None), ("heads", None), ("out", None),
                 ("freq", None), ("vocab", None), ("text", None))


def make_mesh(mesh_config, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """Mesh (data, fsdp) from mesh.data / mesh.fsdp; one of them may be -1 (all remaining devices).

    devices: defaults to jax.devices() (every device of every process).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = {axis: int(mesh_config[axis]) for axis in MESH_AXES}
    for axis, size in sizes.items():
        if size == 0 or size < -1:
            raise ValueError(f"mesh.{axis}: expected a positive size or -1, got {size}")
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {sizes}")
    fixed = int(np.prod([size for size in sizes.values() if size != -1]))
    if n % fixed:
        raise ValueError(f"mesh: {sizes} needs a multiple of {fixed} devices, but there are {n}")
    if free:
        sizes[free[0]] = n // fixed
    if int(np.prod(list(sizes.values()))) != n:
        raise ValueError(f"mesh: data×fsdp = {sizes['data']}×{sizes['fsdp']} must equal the device "
                         f"count {n} (use -1 for 'all remaining devices')")
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    try:
        array = mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # unusual topologies: fall back to the plain device order
        array = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(array, MESH_AXES)


def _check_rules(rules: Iterable) -> tuple:
    rules = tuple(tuple(rule) for rule in rules)
    for rule in rules:
        target = rule[1] if len(rule) == 2 else None
        names = target if isinstance(target, tuple) else (target,)
        if (len(rule) != 2 or not isinstance(rule[0], str)
                or not (target is None or all(n in MESH_AXES for n in names))):
            raise ValueError(f"sharding_rules: expected (logical axis, mesh axis in {MESH_AXES}, "
                             f"a tuple of them, or None) pairs, got {rule!r}")
    return rules


def _divisible_spec(spec: PartitionSpec, shape: tuple, mesh: Mesh, where: str) -> PartitionSpec:
    """spec with every dim the mesh axes do not divide evenly (or whose mesh axis an earlier dim
    of the leaf already uses) replaced by None."""
    dims = list(spec) + [None] * (len(shape) - len(spec))
    used = set()
    for i, axes in enumerate(dims):
        if axes is None:
            continue
        names = axes if isinstance(axes, tuple) else (axes,)
        size = int(np.prod([mesh.shape[a] for a in names]))
        if shape[i] % size or used & set(names):
            logging.info("sharding: %s dim %d (size %d) cannot be split over mesh %s (size %d%s); "
                         "replicating that dim", where, i, shape[i], axes, size,
                         ", already used" if used & set(names) else "")
            dims[i] = None
        else:
            used.update(names)
    return PartitionSpec(*dims)


def param_shardings(model: DiT, mesh: Mesh, rules: Iterable = DEFAULT_RULES,
                    shapes: Any = None) -> Any:
    """Pytree like the params of NamedShardings from the logical axes and `rules`.

    shapes: the params' shape pytree (computed from the model when None).
    """
    rules = _check_rules(rules)
    logical = param_logical_axes(model)
    if shapes is None:
        shapes = param_shapes(model)
    is_spec = lambda x: isinstance(x, PartitionSpec)
    flat_logical, treedef = jax.tree_util.tree_flatten(logical, is_leaf=is_spec)
    flat_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
    if len(flat_logical) != len(flat_shapes):
        raise ValueError(f"shapes: expected a tree like the model's params ({len(flat_logical)} "
                         f"leaves), got {len(flat_shapes)} leaves")
    out = []
    for spec, (path, leaf) in zip(flat_logical, flat_shapes):
        mesh_spec = nn.logical_to_mesh_axes(spec, rules)
        mesh_spec = _divisible_spec(mesh_spec, tuple(leaf.shape), mesh,
                                    jax.tree_util.keystr(path))
        out.append(NamedSharding(mesh, mesh_spec))
    return jax.tree_util.tree_unflatten(treedef, out)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ('data', 'fsdp'); other axes replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def shard_batch(mesh: Mesh, host_batch: Mapping[str, Any]) -> dict:
    """This process's slice of the batch (dict of NumPy arrays) -> dict of global jax.Arrays.

    String/object entries (e.g. "caption") are skipped. Each process passes its own rows; the
    global batch is their concatenation in process order.
    """
    if not isinstance(host_batch, Mapping):
        raise TypeError(f"host_batch: expected a dict of arrays, got {type(host_batch).__name__}")
    sharding = batch_sharding(mesh)
    local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    out = {}
    for key, value in host_batch.items():
        value = np.asarray(value)
        if value.dtype.kind in "USO":
            continue
        if value.ndim == 0 or value.shape[0] % local_devices:
            raise ValueError(f"host_batch[{key!r}]: expected a leading batch axis divisible by "
                             f"the {local_devices} local devices, got shape {value.shape}")
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out
