"""The training loop around the pure step: `train_and_evaluate(config, workdir)`.

    train_and_evaluate(config, workdir)     # trains to config.train.num_steps; rerun = resume

Side effects live here and only here: the distributed runtime, the data iterator, checkpoints
(orbax, asynchronous), metrics (workdir/metrics.jsonl, TensorBoard in workdir/tb), previews
(workdir/previews), the progress bar and the SIGTERM handler. The step itself
(`dit3d_jax.train.step`) stays pure; the host batches come from `dit3d_jax.data.sources`
(config.data.name picks the source).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from dit3d_jax.data.sources import check_batch, make_data_iterator
from dit3d_jax.diffusion.objective import make_objective
from dit3d_jax.models import (check_denoiser, count_params, get_model, init_params,
                              variant_name)
from dit3d_jax.models.dit import DiT
from dit3d_jax.train.checkpoint import (Checkpointer, WriteError, abstract_train_state,
                                        save_run_spec)
from dit3d_jax.train.config import SIZE_FIELDS, ConfigError
from dit3d_jax.train.optim import TRAINABLE, freeze_labels
from dit3d_jax.train.preview import make_preview
from dit3d_jax.train.sharding import make_mesh, shard_batch
from dit3d_jax.train.state import TrainState, create_train_state
from dit3d_jax.train.step import METRICS, make_train_step
from dit3d_jax.utils.cli import one_line
from dit3d_jax.utils.logging import MetricsWriter, ProgressBar, quiet_library_logs


@contextlib.contextmanager
def config_errors():
    """Turns the ValueError / FileNotFoundError of the validation a block runs (config fields,
    data paths, init_from, checkpoints) into a ConfigError with the same message."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        raise ConfigError(str(err)) from err


# ---------------------------------------------------------------------------------------------
# Runtime: distributed initialisation, model, objective
# ---------------------------------------------------------------------------------------------

def _env_asks_for_distributed() -> bool:
    """True under a multi-process launcher JAX can read (explicit coordinator, SLURM, Open MPI,
    a multi-host TPU slice)."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for name in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if env.get(name, "1").isdigit() and int(env.get(name, "1")) > 1:
            return True
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def maybe_initialize_distributed(config) -> None:
    """jax.distributed.initialize() when config.distributed is set or the environment asks for
    it (see `_env_asks_for_distributed`); nothing when it already ran. JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID, when set, are passed on explicitly."""
    if jax.distributed.is_initialized():
        return
    if not (config.get("distributed", False) or _env_asks_for_distributed()):
        return
    kwargs = {}
    if os.environ.get("JAX_NUM_PROCESSES") and os.environ.get("JAX_PROCESS_ID"):
        kwargs = dict(coordinator_address=os.environ.get("JAX_COORDINATOR_ADDRESS"),
                      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
    logging.info("Initialising the distributed runtime (jax.distributed.initialize)…")
    jax.distributed.initialize(**kwargs)


def model_from_config(config) -> DiT:
    """The float32 model a config trains: get_model(model.name, **model.kwargs), the size fields
    (hidden_size, depth, num_heads) that are None taken from the name. (The step casts
    activations to config.compute_dtype; params stay float32.)"""
    check_denoiser(config.model.name, "model.name")
    kwargs = {name: value for name, value in config.model.kwargs.items()
              if not (name in SIZE_FIELDS and value is None)}
    return get_model(config.model.name, **kwargs)


# ---------------------------------------------------------------------------------------------
# Initial state: the resume order
# ---------------------------------------------------------------------------------------------

def params_from_export(directory: str, model: DiT, rng: jax.Array) -> Any:
    """Params for `model` from a convert_torch_weights.py output (DIR/model.json + DIR/params).

    Same family: the params must match the model's paths and shapes. An image DiT into a DiT3D:
    inflated (`dit3d_jax.convert.inflate`), the video-only layers keep a fresh init from `rng`.
    """
    from dit3d_jax.convert import inflate  # pylint: disable=import-outside-toplevel
    from dit3d_jax.models.export import load_exported  # pylint: disable=import-outside-toplevel
    try:
        source, params = load_exported(directory)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"init_from {directory!r}: {err}") from None
    fresh = init_params(model, rng)
    try:
        out = inflate(params, fresh)
    except ValueError as err:
        raise ValueError(f"init_from: {directory} holds {variant_name(source)} params that do "
                         f"not fit {variant_name(model)}: {err}") from None
    n_src = len(jax.tree_util.tree_leaves(params))
    n_dst = len(jax.tree_util.tree_leaves(fresh))
    if type(source) is type(model) and n_src != n_dst:
        raise ValueError(f"init_from: {directory} holds {n_src} param arrays, "
                         f"{variant_name(model)} has {n_dst}; expected the same tree")
    logging.info("Initialising from %s: %s -> %s, %d of %d param arrays copied%s.", directory,
                 variant_name(source), variant_name(model), n_src, n_dst,
                 " (the rest: fresh video/text layers)" if n_src < n_dst else "")
    return out


def initial_state(config, workdir: str, model: DiT, objective, mesh,
                  ckpt: Checkpointer) -> tuple[TrainState, TrainState, Any]:
    """(state, state_sharding, data_state or None), by the resume order of train_and_evaluate.
    CheckpointError when the workdir has checkpoints but none restores or they do not fit."""
    rng = jax.random.key(config.seed)
    latest = ckpt.latest_step()
    if latest is not None:
        logging.info("Restoring from %s/%d…", ckpt.directory, latest)
        abstract, sharding = abstract_train_state(config, model, objective, mesh)
        # The newest checkpoint that restores; unreadable newer ones are moved aside.
        state, data_state = ckpt.restore(abstract, set_aside=True)
        return state, sharding, data_state
    if config.init_from:
        params = params_from_export(config.init_from, model, jax.random.fold_in(rng, 1))
        logging.info("Transferring the initial train state to devices…")
        state, sharding = create_train_state(config, model, objective, mesh, rng, params=params)
        return state, sharding, None
    logging.info("No checkpoint in %s and no init_from: initialising from scratch (seed %d)…",
                 workdir, config.seed)
    state, sharding = create_train_state(config, model, objective, mesh, rng)
    return state, sharding, None


# ---------------------------------------------------------------------------------------------
# Preemption
# ---------------------------------------------------------------------------------------------

class StopRequest:
    """Sets `requested` on SIGTERM (a preemption notice); the loop then saves and returns.

    With several processes the flag is agreed on at log steps (any process asked -> all stop at
    the same step). Use as a context manager; the previous handler comes back on exit.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self, sync: bool) -> bool:
        """This process's flag, or (sync=True, several processes) whether any process has it."""
        if sync and jax.process_count() > 1:
            from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
            flags = multihost_utils.process_allgather(np.int32(self.requested))
            return bool(np.any(flags))
        return self.requested if jax.process_count() == 1 else False


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def summarize(steps: list[int], metrics: list[dict]) -> dict:
    """One record for a logging window: means over the steps that were applied (loss, mse, vb,
    grad_norm), the last lr, and how many steps the NaN guard skipped."""
    applied = [m for m in metrics if not m["skipped"]]
    record = {k: (float(np.mean([m[k] for m in applied])) if applied else float("nan"))
              for k in METRICS if k not in ("lr", "skipped")}
    record["lr"] = float(metrics[-1]["lr"])
    record["skipped"] = int(sum(m["skipped"] > 0 for m in metrics))
    for step, m in zip(steps, metrics):
        if m["skipped"]:
            logging.warning("Step %d skipped: non-finite loss or gradient norm (loss=%s, "
                            "grad_norm=%s); params, EMA and optimizer state kept.", step,
                            m["loss"], m["grad_norm"])
    return record


# ---------------------------------------------------------------------------------------------
# train_and_evaluate
# ---------------------------------------------------------------------------------------------

def train_and_evaluate(config, workdir: str) -> TrainState:
    """Trains `config` to config.train.num_steps in `workdir`; returns the final TrainState.

    Resume order (the first that applies):
      1. the latest checkpoint in workdir/checkpoints: TrainState (params, EMA, optimizer,
         importance sampler, rng, step) and the data iterator position, onto the current mesh;
      2. else config.init_from: a convert_torch_weights.py output (image DiT params are inflated
         into a DiT3D; its video and text layers start fresh);
      3. else a fresh init from config.seed.
    Checkpoints: every train.checkpoint_every steps, at the end, and when SIGTERM arrives (then
    the loop saves and returns early). Faults: ConfigError when the config, its data, init_from
    or the workdir's checkpoints cannot start the run (a checkpoint that does not restore is
    skipped with a warning, see `Checkpointer.restore_newest`); WriteError when a save or the
    metrics fail to write (the earlier checkpoints stay; re-running resumes from the last
    durable one). Logs every train.log_every steps to workdir/metrics.jsonl,
    TensorBoard (workdir/tb) and a progress bar (process 0); a preview grid of the EMA params
    every sample.preview_every steps to workdir/previews and TensorBoard (`train.preview`).
    """
    quiet_library_logs()
    maybe_initialize_distributed(config)
    workdir = os.path.abspath(workdir)
    process_index, process_count = jax.process_index(), jax.process_count()
    main = process_index == 0
    num_steps, log_every = int(config.train.num_steps), int(config.train.log_every)
    checkpoint_every = int(config.train.checkpoint_every)
    for name, value, low in (("num_steps", num_steps, 0), ("log_every", log_every, 1),
                             ("checkpoint_every", checkpoint_every, 1)):
        if value < low:
            raise ConfigError(f"train.{name}: expected an int >= {low}, got {value}")
    logging.info("Process %d of %d, %d local / %d global devices (%s).", process_index,
                 process_count, jax.local_device_count(), jax.device_count(),
                 jax.default_backend())

    with config_errors():
        model = model_from_config(config)
        objective = make_objective(config.objective, model.learn_sigma)

        logging.info("Creating device mesh…")
        mesh = make_mesh(config.mesh)
        logging.info("Mesh %s.", dict(mesh.shape))

        logging.info("Creating the data iterator (%s)…", config.data.name)
        data_iter = make_data_iterator(config, model, process_index=process_index,
                                       process_count=process_count)
        preview = make_preview(config, model, objective, workdir, enabled=main)

        ckpt = Checkpointer(workdir, keep=int(config.train.keep_checkpoints))
        state, state_sharding, data_state = initial_state(config, workdir, model, objective,
                                                          mesh, ckpt)
    if main:  # after the restore: a workdir of another model keeps its model.json
        logging.info("Writing the resolved config and model spec to %s…", workdir)
        save_run_spec(workdir, config, model)
    if data_state is not None:
        data_iter.set_state(data_state)
    step = int(jax.device_get(state.step))
    labels = freeze_labels(model, config.optim.freeze)
    trainable = sum(int(np.prod(p.shape)) for p, label in zip(
        jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(labels))
        if label == TRAINABLE)
    logging.info("%s: %s params, %s trainable (freeze=%r); starting at step %d of %d.",
                 variant_name(model), f"{count_params(state.params):,}", f"{trainable:,}",
                 config.optim.freeze, step, num_steps)

    logging.info("Compiling the train step…")
    train_step = make_train_step(config, model, objective, mesh, state_sharding)
    writer = MetricsWriter(workdir, start_step=step, enabled=main)
    if main and step == 0:
        writer.write_text("config", "```\n" + config.to_json_best_effort(indent=2) + "\n```")
    bar = ProgressBar(num_steps, step, enabled=main)
    window_steps, window_metrics = [], []
    t_window, first, checked = time.perf_counter(), True, False
    stopped = False

    def save(at: int) -> None:
        if ckpt.save(at, state, data_iter.get_state()):
            logging.info("Saving a checkpoint at step %d (in the background)…", at)

    try:
        with StopRequest() as stop:
            while step < num_steps:
                batch = next(data_iter)
                if not checked:
                    with config_errors():
                        check_batch(batch, model, config)
                    checked = True
                state, metrics = train_step(state, shard_batch(mesh, batch))
                step += 1
                window_steps.append(step)
                window_metrics.append(metrics)
                bar.update(step)
                if preview is not None and preview.due(step):
                    writer.write_image("preview", preview.at(step, state.ema_params), step)
                    t_window += preview.seconds  # not counted in steps/s
                log_now = step % log_every == 0 or step == num_steps
                if log_now:
                    host = jax.device_get(window_metrics)
                    record = summarize(window_steps, host)
                    elapsed = time.perf_counter() - t_window
                    record["steps_per_sec"] = len(window_steps) / max(elapsed, 1e-9)
                    try:
                        writer.write(step, record)
                    except OSError as err:  # a full disk fails here too
                        raise WriteError(f"metrics: writing step {step} to {workdir} failed: "
                                         f"{one_line(err)}; {ckpt.durable_note()}") from err
                    bar.update(step, loss=record["loss"])
                    if first:
                        logging.info("First log at step %d (loss %.4f): %.1f s including "
                                     "compilation.", step, record["loss"], elapsed)
                    window_steps, window_metrics = [], []
                    t_window, first = time.perf_counter(), False
                stopped = stop.agreed(sync=log_now)
                if step % checkpoint_every == 0 or step == num_steps or stopped:
                    save(step)
                if stopped:
                    bar.write(f"SIGTERM: saved a checkpoint at step {step}; exiting.")
                    logging.warning("Stopping at step %d on SIGTERM (checkpoint saved).", step)
                    break
            if not stopped:  # a no-op when this step is saved already
                save(step)
            logging.info("Waiting for checkpoints to be written…")
            ckpt.wait_until_finished()
    finally:
        bar.close()
        writer.close()
        ckpt.close()
    logging.info("Done at step %d; checkpoints in %s.", step, ckpt.directory)
    return state
