"""Checkpoints of a training run, and reading a finished (or running) run back.

A run's workdir holds
    checkpoints/<step>/state/     the TrainState (orbax, every leaf with its sharding metadata)
    checkpoints/<step>/data/      the data iterator position, one JSON file per process
    model.json                    `dit3d_jax.models.export.model_spec(model)`: rebuilds the model
    config.json                   the resolved training config
    bad_checkpoints/<step>/       checkpoints a resume found unreadable, moved aside, never deleted

    ckpt = Checkpointer(workdir, keep=3)
    ckpt.save(step, state, iterator.get_state())          # asynchronous; returns at once
    state, data_state = ckpt.restore(abstract)             # abstract: abstract_train_state(...)
    model, ema_params, config = load_workdir(workdir)      # what sample.py needs

Restoring reads every array straight onto the shardings of the abstract target, so a checkpoint
written on 8 devices (data=4, fsdp=2) restores onto 1 device, or onto another mesh, unchanged.

Faults (docs/reliability.md): a restore without a step falls back from a checkpoint that does not
read back (one warning) to the newest that does; a failed save raises one WriteError
naming the step, the path, the cause and the last durable checkpoint, and leaves the earlier
checkpoints as they were (orbax deletes old steps only after a save has committed).
"""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from dit3d_jax.models import param_shapes
from dit3d_jax.models.dit import DiT
from dit3d_jax.models.export import model_from_spec, model_spec
from dit3d_jax.utils.cli import one_line

CHECKPOINT_DIR = "checkpoints"
BAD_CHECKPOINT_DIR = "bad_checkpoints"
MODEL_FILE = "model.json"
CONFIG_FILE = "config.json"
# TrainState fields that older checkpoints saved under another name: old name -> current name.
RENAMED_FIELDS = {"sampler": "importance"}


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

class CheckpointError(ValueError):
    """The checkpoints of a workdir cannot serve this run: none of them restores, or they were
    written for another model or config."""


class WriteError(OSError):
    """A write of the run failed (disk full, permission, I/O error): a checkpoint, or the
    metrics. The message names the step, the path, the cause and the last durable checkpoint."""


class Checkpointer:
    """orbax CheckpointManager over workdir/checkpoints: TrainState + data iterator state.

    keep: how many recent checkpoints to keep (train.keep_checkpoints). async_save: saves write
    in the background (call wait_until_finished() before relying on them, and close() at the end).

    Faults: restore() without a step restores the newest checkpoint that reads back whole (see
    `restore_newest`); a save that fails, in the foreground or in the background, raises one
    WriteError, at the next save, wait_until_finished() or close(), and only once.
    """

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep: expected a positive int, got {keep!r}")
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data"))
        self._pending: Optional[int] = None      # the step whose save may still be writing
        self._durable = self._manager.latest_step()  # the newest step known to be on disk
        self._failed = False                     # a write failure was raised already

    def latest_step(self) -> Optional[int]:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    # -- writing -------------------------------------------------------------------------------

    def save(self, step: int, state: Any, data_state: Any) -> bool:
        """Starts saving `state` (a TrainState) and the iterator state at `step`; False when a
        checkpoint of that step exists already. Returns before the write is durable.
        Raises WriteError when this save, or the one before it, failed."""
        if step in self._manager.all_steps():
            return False
        self.wait_until_finished()
        try:
            started = self._manager.save(int(step), force=True, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=DataStateSave(data_state)))
        except Exception as err:  # pylint: disable=broad-except
            raise self._write_error(step, err) from err
        self._pending = int(step) if started else None
        return started

    def wait_until_finished(self) -> None:
        """Blocks until every started save is durable on disk; WriteError if one
        failed."""
        if self._failed:
            return
        try:
            self._manager.wait_until_finished()
        except Exception as err:  # pylint: disable=broad-except
            raise self._write_error(self._pending, err) from err
        if self._pending is not None:
            if not os.path.isdir(self.step_dir(self._pending)):
                # orbax logs a failed finalisation and goes on: the step never appeared.
                raise self._write_error(self._pending, RuntimeError(
                    "the write did not complete (no committed directory)"))
            self._durable, self._pending = self._pending, None

    def _write_error(self, step: Optional[int], err: BaseException) -> WriteError:
        self._failed, self._pending = True, None
        return WriteError(f"checkpoint: saving step {step} to {self.step_dir(step)} failed: "
                          f"{one_line(err)}; {self.durable_note()}")

    def durable_note(self) -> str:
        """"last durable checkpoint: step N (path). Training stopped; …" for a write error."""
        durable = (f"step {self._durable} ({self.step_dir(self._durable)})"
                   if self._durable is not None else "none")
        return (f"last durable checkpoint: {durable}. Training stopped; fix the cause and re-run "
                f"the same command to resume from it.")

    def close(self) -> None:
        """Waits for the saves in flight (WriteError if one failed) and releases
        orbax; after a reported failure it only releases."""
        try:
            self.wait_until_finished()
        finally:
            try:
                self._manager.close()
            except Exception:  # pylint: disable=broad-except
                if not self._failed:
                    raise

    # -- reading -------------------------------------------------------------------------------

    def restore(self, abstract_state: Any, step: Optional[int] = None, *,
                set_aside: bool = False) -> tuple[Any, Any]:
        """(state, data_state) of `step`, or by default of the newest checkpoint that restores
        (`restore_newest`; set_aside: see there). abstract_state: a pytree of
        jax.ShapeDtypeStruct with `sharding` set; every array is read onto that sharding."""
        def read(at: int) -> tuple[Any, Any]:
            target, rebuild = self._as_saved(at, abstract_state)
            self._check_fits(at, target)
            out = self._manager.restore(at, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=DataStateRestore()))
            return rebuild(out["state"]), out["data"]

        if step is not None:
            return read(step)
        return self.restore_newest(read, set_aside=set_aside)[1]

    def restore_field(self, name: str, abstract: Any, step: Optional[int] = None) -> Any:
        """One field of the saved TrainState (e.g. "ema_params"), read alone (partial restore),
        of `step` or of the newest checkpoint that restores. abstract: ShapeDtypeStructs with
        shardings for that field."""
        def read(at: int) -> Any:
            saved = self._old_names(at).get(name, name)
            target = {saved: abstract}
            self._check_fits(at, target, saved)
            out = self._manager.restore(at, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True)))
            return out["state"][saved]

        if step is not None:
            return read(step)
        return self.restore_newest(read)[1]

    def restore_newest(self, read: Callable[[int], Any], *, set_aside: bool = False
                       ) -> tuple[int, Any]:
        """(step, read(step)) for the newest step whose read succeeds on every process.

        A checkpoint that fails to read (truncated, missing or unreadable files) is skipped
        with one warning naming its step and the reason; it is never deleted. set_aside=True
        (a run that will write new checkpoints) moves the skipped ones to
        workdir/bad_checkpoints/, so that new saves of those steps and the retention of the
        last `keep` count intact checkpoints only. CheckpointError when there is no
        checkpoint, when none restores (listing each step tried and why), or when they were
        written for another model or config (`_check_fits`)."""
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"checkpoint: no checkpoint in {self.directory}")
        tried = []
        for step in steps:
            try:
                out, err = read(step), None
            except CheckpointError:
                raise
            except Exception as caught:  # pylint: disable=broad-except
                out, err = None, caught
            if _all_processes_ok(err is None):
                break
            tried.append((step, one_line(err) if err is not None else
                          "another process could not read it"))
        else:
            raise CheckpointError(
                f"checkpoint: no checkpoint in {self.directory} restores; tried " +
                "; ".join(f"step {s}: {why}" for s, why in tried))
        if tried:
            moved = self._set_aside([s for s, _ in tried]) if set_aside else []
            logging.warning(
                "checkpoint: %s did not restore (%s); restored step %d instead%s.",
                ", ".join(f"step {s}" for s, _ in tried), "; ".join(w for _, w in tried), step,
                f" (kept in {', '.join(moved)})" if moved else " (kept on disk)")
        self._durable = step
        return step, out

    def _saved_arrays(self, step: int) -> dict:
        """{"field.sub.leaf": metadata with .shape} of the state saved at `step`."""
        path = epath.Path(self.step_dir(step)) / "state"
        return ocp.tree.to_flat_dict(ocp.PyTreeCheckpointHandler().metadata(path), sep=".")

    def _old_names(self, step: int) -> dict[str, str]:
        """{current name: old name} for the RENAMED_FIELDS that `step` saved under the old name."""
        saved = {key.split(".", 1)[0] for key in self._saved_arrays(step)}
        return {new: old for old, new in RENAMED_FIELDS.items()
                if old in saved and new not in saved}

    def _as_saved(self, step: int, target: Any) -> tuple[Any, Callable[[Any], Any]]:
        """(target laid out as `step` saved it, a function putting what was read back into
        target's own type). A TrainState whose checkpoint names a field by its old name
        (RENAMED_FIELDS) is read as a dict of its fields under the saved names."""
        old = self._old_names(step) if dataclasses.is_dataclass(target) else {}
        names = [f.name for f in dataclasses.fields(target)] if old else []
        if not set(old) & set(names):
            return target, lambda tree: tree
        saved = {old.get(name, name): getattr(target, name) for name in names}
        return saved, lambda tree: type(target)(**{n: tree[old.get(n, n)] for n in names})

    def _check_fits(self, step: int, target: Any, field: Optional[str] = None) -> None:
        """CheckpointError when the arrays saved at `step` (only those under `field`, when
        given) differ in names or shapes from `target`: written for another model or config."""
        saved = self._saved_arrays(step)
        want = ocp.tree.to_flat_dict(target, sep=".")
        if field is not None:
            saved = {k: v for k, v in saved.items() if k == field or k.startswith(field + ".")}
        missing = sorted(set(want) - set(saved))
        extra = sorted(set(saved) - set(want))
        reshaped = [k for k in sorted(set(want) & set(saved))
                    if tuple(saved[k].shape) != tuple(want[k].shape)]
        if not (missing or extra or reshaped):
            return
        parts = []
        if reshaped:
            k = reshaped[0]
            parts.append(f"{len(reshaped)} arrays of another shape (e.g. {k}: saved "
                         f"{tuple(saved[k].shape)}, this model {tuple(want[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} arrays missing (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} arrays this model lacks (e.g. {extra[0]})")
        raise CheckpointError(
            f"checkpoint: step {step} in {self.directory} was written for another model or "
            f"config: {'; '.join(parts)}. Use the config it was trained with, or a new workdir")

    def _set_aside(self, steps: list[int]) -> list[str]:
        """Moves checkpoints/<step> to bad_checkpoints/<step>[-k] (process 0); their paths."""
        sync = lambda name: None  # pylint: disable=unnecessary-lambda-assignment
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
            sync = multihost_utils.sync_global_devices
        moved = []
        for step in steps:
            dest, k = os.path.join(self.workdir, BAD_CHECKPOINT_DIR, str(step)), 1
            while os.path.exists(dest):
                k += 1
                dest = os.path.join(self.workdir, BAD_CHECKPOINT_DIR, f"{step}-{k}")
            moved.append(dest)
        sync("checkpoint: before set aside")  # every process has named the same destinations
        if jax.process_index() == 0:
            for step, dest in zip(steps, moved):
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.rename(self.step_dir(step), dest)
        sync("checkpoint: set aside")
        self._manager.reload()
        return moved


def _all_processes_ok(ok: bool) -> bool:
    """True when `ok` holds on every process (a restore is used only when all could read it)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


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


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
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
    newest that restores, `Checkpointer.restore_newest`), as float32 arrays on the default
    device; only that field is read from disk. model_overrides replace stored module fields
    (e.g. attn_impl="cudnn"). Raises FileNotFoundError when the workdir has no config.json /
    model.json / checkpoint, CheckpointError when no checkpoint restores or they do not fit
    model.json.
    """
    workdir = os.path.abspath(workdir)
    config = read_run_config(workdir)
    spec_path = os.path.join(workdir, MODEL_FILE)
    if os.path.exists(spec_path):
        with open(spec_path, encoding="utf-8") as f:
            model = model_from_spec(json.load(f), **model_overrides)
    else:
        raise FileNotFoundError(f"{workdir} has no {MODEL_FILE} (expected a train.py workdir)")
    ckpt = Checkpointer(workdir, async_save=False)
    try:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"{workdir} has no checkpoint yet (in {ckpt.directory})")
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
            param_shapes(model.clone(dtype=jnp.float32)))
        params = ckpt.restore_field("ema_params" if ema else "params", abstract, step)
    finally:
        ckpt.close()
    return model, params, config
