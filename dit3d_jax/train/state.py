"""TrainState: everything a run carries from step to step, as one sharded pytree.

    state, state_sharding = create_train_state(config, model, objective, mesh, rng)

The state is born sharded: shapes come from `jax.eval_shape(init)`, shardings from the config's
logical-axis rules (EMA and optimizer moments like the params; counters, the importance sampler
and the rng replicated), then `jax.jit(init, out_shardings=...)` materialises every leaf directly
on its devices.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from dit3d_jax.diffusion import importance
from dit3d_jax.models import init_params, param_shapes
from dit3d_jax.models.dit import DiT
from dit3d_jax.train import optim
from dit3d_jax.train.sharding import param_shardings, replicated


class TrainState(flax.struct.PyTreeNode):
    """step: int32 (); params, ema_params: float32 param trees; opt_state: optax state;
    importance: importance.ImportanceState (the timestep sampler's loss history); rng: uint32
    (2,) raw PRNG key data; skipped: int32 () count of steps dropped by the NaN guard.
    Checkpoints written before the field was renamed call it `sampler` (checkpoint.py reads
    them)."""
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    importance: importance.ImportanceState
    rng: jax.Array
    skipped: jax.Array


def raw_key(rng: jax.Array) -> jax.Array:
    """uint32 key data of a PRNG key (typed `jax.random.key` or raw `PRNGKey`)."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng)
    return jnp.asarray(rng, jnp.uint32)


def like_params(tree: Any, param_shapes: Any, shardings: Any, default: Any) -> Any:
    """Shardings for a tree holding param-like subtrees (optimizer moments, accumulators).

    A leaf whose key path ends with a parameter's dict-key path and has that parameter's shape
    gets the parameter's sharding; every other leaf (counters, ...) gets `default`.
    """
    by_path = {}
    for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(param_shapes)[0],
                                      jax.tree_util.tree_leaves(shardings)):
        by_path[_dict_suffix(path)] = (tuple(leaf.shape), sharding)

    def pick(path, leaf):
        shape, sharding = by_path.get(_dict_suffix(path), (None, default))
        return sharding if shape == tuple(jnp.shape(leaf)) else default

    return jax.tree_util.tree_map_with_path(pick, tree)


def _dict_suffix(path) -> tuple:
    """The trailing run of dict keys of a key path (a param's own path inside a bigger tree)."""
    keys = []
    for entry in reversed(path):
        if not isinstance(entry, jax.tree_util.DictKey):
            break
        keys.append(entry.key)
    return tuple(reversed(keys))


def build_optimizer(config, model: DiT) -> tuple[optax.GradientTransformation, Any]:
    """(tx, labels) from config.optim for `model` (the same in create_train_state and the step)."""
    labels = optim.freeze_labels(model, config.optim.freeze)
    return optim.make_optimizer(config.optim, labels), labels


def create_train_state(config, model: DiT, objective, mesh: Mesh, rng: jax.Array,
                       params: Optional[Any] = None) -> tuple[TrainState, TrainState]:
    """Fresh sharded TrainState and the matching pytree of NamedShardings.

    objective: gives `num_bins` for the importance sampler. rng: a PRNG key; split into the init
    key and the state's step key. params: start from these (e.g. `init_from` weights, any
    placement) instead of a fresh init; EMA starts equal to the params either way.
    """
    tx, _ = build_optimizer(config, model)
    num_bins = int(objective.num_bins)
    history = int(config.importance.history)
    key = raw_key(rng)

    def init(key, params):
        init_key, state_key = jax.random.split(key)
        if params is None:
            params = init_params(model, init_key)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          ema_params=jax.tree_util.tree_map(jnp.copy, params),
                          opt_state=tx.init(params),
                          importance=importance.init(num_bins, history),
                          rng=state_key, skipped=jnp.zeros((), jnp.int32))

    shapes = jax.eval_shape(init, key, params)
    if params is not None:
        fresh = param_shapes(model)
        if jax.tree_util.tree_structure(fresh) != jax.tree_util.tree_structure(shapes.params) or \
                any(a.shape != b.shape for a, b in zip(jax.tree_util.tree_leaves(fresh),
                                                         jax.tree_util.tree_leaves(shapes.params))):
            raise ValueError("params: expected a tree with the model's parameter paths and shapes")
    p_shard = param_shardings(model, mesh, config.sharding_rules, shapes.params)
    if params is not None:
        params = jax.device_put(params, p_shard)
    repl = replicated(mesh)
    opt_shard = like_params(shapes.opt_state, shapes.params, p_shard, repl)
    sharding = TrainState(step=repl, params=p_shard, ema_params=p_shard, opt_state=opt_shard,
                          importance=jax.tree_util.tree_map(lambda _: repl, shapes.importance),
                          rng=repl, skipped=repl)
    state = jax.jit(init, out_shardings=sharding)(key, params)
    return state, sharding
