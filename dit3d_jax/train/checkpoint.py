"""Checkpoints of a training run, and reading a finished (or running) run back.

A run's workdir holds
    checkpoints/<step>/state/     the TrainState (orbax, every leaf with its sharding metadata)
    checkpoints/<step>/data/      the data iterator position, one JSON file per process
    model.json                    `dit3d_jax.models.export.model_spec(model)`: rebuilds the model
    config.json                   the resolved training config

    ckpt = Checkpointer(workdir, keep=3)
    ckpt.save(step, state, iterator.get_state())          # asynchronous; returns at once
    state, data_state = ckpt.restore(abstract)             # abstract: abstract_train_state(...)
    model, ema_params, config = load_workdir(workdir)      # what sample.py needs

Restoring reads every array straight onto the shardings of the abstract target, so a checkpoint
written on 8 devices (data=4, fsdp=2) restores onto 1 device, or onto another mesh, unchanged.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from dit3d_jax.models.dit import DiT
from dit3d_jax.models.export import model_from_spec, model_spec

CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.json"
CONFIG_FILE = "config.json"


# ---------------------------------------------------------------------------------------------
# Data iterator state: one JSON file per process
# ---------------------------------------------------------------------------------------------

def _encode(state: Any) -> Any:
    """JSON-able form of an iterator state (a JSON-able value, or bytes)."""
    if isinstance(state, bytes):
        return {"__bytes_b64__": base64.b64encode(state).decode("ascii")}
    return state


def _decode(state: Any) -> Any:
    if isinstance(state, dict) and set(state) == {"__bytes_b64__"}:
        return base64.b64decode(state["__bytes_b64__"])
    return state


class DataStateHandler(ocp.CheckpointHandler):
    """Writes this process's iterator state to process_<i>-of-<n>.json (every process writes
    its own file; grain iterators of different processes sit at different examples)."""

    def save(self, directory: epath.Path, args: "DataStateSave") -> None:
        i, n = jax.process_index(), jax.process_count()
        (directory / f"process_{i}-of-{n}.json").write_text(json.dumps(_encode(args.item)))

    def restore(self, directory: epath.Path, args: Optional["DataStateRestore"] = None) -> Any:
        del args
        i, n = jax.process_index(), jax.process_count()
        path = directory / f"process_{i}-of-{n}.json"
        if not path.exists():
            # Saved with another process count: our pipelines' states name a global position
            # (every process consumes one batch per step), so process 0's state serves.
            saved = sorted(directory.glob("process_0-of-*.json"))
            if not saved:
                raise FileNotFoundError(f"checkpoint: no data iterator state in {directory}")
            logging.warning("checkpoint: no iterator state for process %d of %d; using %s",
                            i, n, saved[0].name)
            path = saved[0]
        return _decode(json.loads(path.read_text()))

    def metadata(self, directory: epath.Path) -> None:
        del directory

    def finalize(self, directory: epath.Path) -> None:
        del directory

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    item: Any = None


# ---------------------------------------------------------------------------------------------
# The checkpoint manager of a run
# ---------------------------------------------------------------------------------------------

class Checkpointer:
    """orbax CheckpointManager over workdir/checkpoints: TrainState + data iterator state.

    keep: how many recent checkpoints to keep (train.keep_checkpoints). async_save: saves write
    in the background (call wait_until_finished() before relying on them, and close() at the end).
    """

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep: expected a positive int, got {keep!r}")
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data"))

    def latest_step(self) -> Optional[int]:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: Any) -> bool:
        """Starts saving `state` (a TrainState) and the iterator state at `step`; False when a
        checkpoint of that step exists already. Returns before the write is durable."""
        if step in self._manager.all_steps():
            return False
        return self._manager.save(int(step), force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=DataStateSave(data_state)))

    def restore(self, abstract_state: Any, step: Optional[int] = None) -> tuple[Any, Any]:
        """(state, data_state) of `step` (default: the latest). abstract_state: a pytree of
        jax.ShapeDtypeStruct with `sharding` set; every array is read onto that sharding."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"checkpoint: no checkpoint in {self.directory}")
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=DataStateRestore()))
        return out["state"], out["data"]

    def restore_field(self, name: str, abstract: Any, step: Optional[int] = None) -> Any:
        """One field of the saved TrainState (e.g. "ema_params"), read alone (partial restore).
        abstract: ShapeDtypeStructs with shardings for that field."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"checkpoint: no checkpoint in {self.directory}")
        target = {name: abstract}
        out = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)))
        return out["state"][name]

    def wait_until_finished(self) -> None:
        """Blocks until every started save is durable on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


# ---------------------------------------------------------------------------------------------
# Abstract state (restore targets), run spec files, loading a workdir
# ---------------------------------------------------------------------------------------------

def abstract_train_state(config, model: DiT, objective, mesh) -> tuple[Any, Any]:
    """(abstract TrainState of ShapeDtypeStructs carrying their shardings, state_sharding),
    computed without allocating any array."""
    from dit3d_jax.train.state import create_train_state  # pylint: disable=import-outside-toplevel
    shardings = {}

    def build(rng):
        state, shardings["state"] = create_train_state(config, model, objective, mesh, rng)
        return state

    shapes = jax.eval_shape(build, jax.ShapeDtypeStruct((2,), jnp.uint32))
    abstract = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
        shardings["state"])
    return abstract, shardings["state"]


def save_run_spec(workdir: str, config: ml_collections.ConfigDict, model: DiT) -> None:
    """Writes workdir/config.json (the resolved config) and workdir/model.json (model spec)."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    with open(os.path.join(workdir, MODEL_FILE), "w", encoding="utf-8") as f:
        json.dump(model_spec(model), f, indent=2)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was trained with (workdir/config.json), as a ConfigDict."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} has no {CONFIG_FILE} (expected a train.py workdir)")
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))


def load_workdir(workdir: str, ema: bool = True, step: Optional[int] = None,
                 **model_overrides: Any) -> tuple[DiT, Any, ml_collections.ConfigDict]:
    """(model, params, config) of a train.py workdir, for sampling.

    params: the EMA params (ema=True) or the raw params of checkpoint `step` (default: the
    latest), as float32 arrays on the default device; only that field is read from disk. model_overrides replace stored module
    fields (e.g. attn_impl="cudnn"). Raises FileNotFoundError when the workdir has no
    config.json / model.json / checkpoint.
    """
    from dit3d_jax.diffusion.objective import make_objective  # pylint: disable=import-outside-toplevel
    from dit3d_jax.train.sharding import make_mesh  # pylint: disable=import-outside-toplevel
    workdir = os.path.abspath(workdir)
    config = load_config(workdir)
    spec_path = os.path.join(workdir, MODEL_FILE)
    if os.path.exists(spec_path):
        with open(spec_path, encoding="utf-8") as f:
            model = model_from_spec(json.load(f), **model_overrides)
    else:
        raise FileNotFoundError(f"{workdir} has no {MODEL_FILE} (expected a train.py workdir)")
    ckpt = Checkpointer(workdir, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{workdir} has no checkpoint yet (in {ckpt.directory})")
        mesh = make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])
        objective = make_objective(config.objective, model.learn_sigma)
        abstract, _ = abstract_train_state(config, model.clone(dtype=jnp.float32),
                                           objective, mesh)
        field = "ema_params" if ema else "params"
        params = ckpt.restore_field(field, getattr(abstract, field), step)
    finally:
        ckpt.close()
    return model, params, config
