"""Training: state, optimizer, sharding and the pure train step (see docs/interfaces.md).

    config = default_config()                 # dit3d_jax.train.config; configs/*.py start there
    mesh = make_mesh(config.mesh)
    state, state_sharding = create_train_state(config, model, objective, mesh, rng)
    step = make_train_step(config, model, objective, mesh, state_sharding)
    state, metrics = step(state, shard_batch(mesh, host_batch))
"""
from __future__ import annotations

from dit3d_jax.train.optim import freeze_labels, make_optimizer, make_schedule
from dit3d_jax.train.sharding import (DEFAULT_RULES, batch_sharding, make_mesh, param_shardings,
                                      replicated, shard_batch)
from dit3d_jax.train.state import TrainState, build_optimizer, create_train_state
from dit3d_jax.train.step import make_step_fn, make_train_step


__all__ = ["TrainState", "make_mesh", "create_train_state", "make_train_step",
           "make_step_fn", "shard_batch", "batch_sharding", "param_shardings", "replicated",
           "build_optimizer", "freeze_labels", "make_optimizer", "make_schedule", "DEFAULT_RULES"]
