"""config.data -> this process's iterator of host batches, for the model's inputs.

    it = make_data_iterator(config, model, process_index=0, process_count=1)
    batch = next(it)                  # it.get_state() / it.set_state(state) resume
    check_batch(batch, model, config)

The model is read only through `model.input_spec` (batch key, example shape, labels, text).
Sources (config.data.name):
    "random"         synthetic, deterministic (`RandomSource`): benchmarks and tests, no data wheels
    "moving_shapes"  the captioned moving-shapes tfds dataset (config.data.config: "tiny"|"default")
    "video_folder"   a folder of videos (config.data.path), clips of the model's frames and size
    "latents"        a latent dataset written by encode_latents.py (config.data.path): the VAE
                     posterior per example; the step draws a fresh latent from it every step
    "latent_folder"  already-sampled, scaled latents as .npy files (config.data.path) made by
                     another tool, `LatentFolderSource` (one fixed latent per clip)
The data wheels (grain, tfds) load only for the sources that read files. Errors are ValueError
/ FileNotFoundError naming the config field (the trainer reports them as ConfigError).
"""
from __future__ import annotations

import os
from typing import Any, Iterator

from absl import logging

from dit3d_jax.data.random import RandomSource

DATA_SOURCES = ("random", "moving_shapes", "video_folder", "latents", "latent_folder")
ENCODE_COMMAND = ("python encode_latents.py --data video_folder --data-path VIDEOS --vae VAE_DIR "
                  "--output LATENTS")


def make_data_iterator(config, model, *, process_index: int, process_count: int) -> Iterator:
    """This process's iterator of host batches for config.data (see the module docstring) and
    `model.input_spec`; it has get_state() / set_state()."""
    data = config.data
    if data.name not in DATA_SOURCES:
        raise ValueError(f"data.name: expected one of {DATA_SOURCES}, got {data.name!r}")
    spec = model.input_spec
    if data.name == "random":
        return RandomSource(key=spec.key, shape=spec.shape,
                            global_batch_size=data.global_batch_size, seed=data.seed,
                            num_classes=spec.num_classes,
                            text_shape=((data.text_max_length, spec.text_dim) if spec.text_dim
                                        else None),
                            process_index=process_index, process_count=process_count)

    if data.name in ("video_folder", "latent_folder") and not os.path.isdir(data.path):
        raise ValueError(f"data.path {data.path!r}: expected the directory that data.name="
                         f"{data.name!r} reads, found no directory there")
    # pylint: disable=import-outside-toplevel
    from dit3d_jax.data import get_builder
    from dit3d_jax.data.latents import LatentFolderSource
    from dit3d_jax.data.pipeline import make_iterator
    if data.name != "latents" and not spec.video:
        raise ValueError(f"data.name: {data.name!r} yields videos, but model.name "
                         f"{config.model.name!r} is an image DiT; use data.name='latents' or "
                         f"'random'")
    if data.name == "latents":  # checked first: before the text encoder loads
        source = latent_source(data.path, spec)
    encoder = text_encoder(data, spec.text_dim)

    if data.name == "latent_folder":
        source = LatentFolderSource(data.path)
    elif data.name != "latents":
        kwargs = (dict(config=data.config) if data.name == "moving_shapes" else
                  dict(folder=data.path, frames=spec.shape[0], size=spec.shape[1]))
        # Process 0 builds the tfds dataset; the others wait, then read it.
        if process_index == 0:
            source = get_builder(data.name, data_dir=data.data_dir or None, **kwargs)
        if process_count > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("dataset prepared")
        if process_index != 0:
            source = get_builder(data.name, data_dir=data.data_dir or None, **kwargs)
    return make_iterator(
        source, split="train", global_batch_size=data.global_batch_size, seed=data.seed,
        process_index=process_index, process_count=process_count,
        worker_count=data.worker_count, augment=data.augment, text_encoder=encoder)


def text_encoder(data, text_dim: int) -> Any:
    """The text encoder data.text_encoder names (None when empty), checked against the model's
    text_dim; the encoder loads here, lazily, from `dit3d_jax.models.text`."""
    if not data.text_encoder:
        if text_dim:
            logging.warning("data.text_encoder is empty but the model has text_dim=%d: it will "
                            "only ever see the null caption", text_dim)
        return None
    from dit3d_jax.models.text import get_text_encoder  # pylint: disable=import-outside-toplevel
    encoder = get_text_encoder(data.text_encoder, max_length=data.text_max_length)
    if encoder.dim != text_dim:
        raise ValueError(f"model.kwargs.text_dim: expected {encoder.dim} (the dimension of "
                         f"data.text_encoder={data.text_encoder!r}), got {text_dim}")
    return encoder


def latent_source(path: str, spec):
    """The train split of the latent dataset at `path` (data.name="latents"), checked against
    the model's example shape `spec.shape`; a missing path or a dataset of another shape is one
    ValueError / FileNotFoundError naming encode_latents.py."""
    if not path:
        raise ValueError(f"data.path: expected a latent dataset directory for "
                         f"data.name='latents', got none; write one with `{ENCODE_COMMAND}` and "
                         f"pass --config.data.path=LATENTS")
    from dit3d_jax.data.latents import LatentSource  # pylint: disable=import-outside-toplevel
    source = LatentSource(path, split="train")
    if source.shape != spec.shape:
        what = "(F, h, w, c)" if spec.video else "(h, w, c)"
        raise ValueError(f"data.path: expected latents of shape {spec.shape} {what} for the "
                         f"model (model.kwargs num_frames/input_size/in_channels), got "
                         f"{source.shape} in {path!r}; encode with the model's frames and "
                         f"size x the VAE's downsampling, or set model.kwargs to match")
    return source


def check_batch(batch: dict, model, config) -> None:
    """ValueError when a host batch (this process's rows) does not fit `model.input_spec` and
    data.global_batch_size (the trainer checks the first batch only)."""
    import jax  # pylint: disable=import-outside-toplevel
    spec = model.input_spec
    key = "latent_mean" if "latent_mean" in batch else spec.key
    want = spec.batch_shape(config.data.global_batch_size // jax.process_count())
    got = getattr(batch.get(key), "shape", None)
    if got != want:
        raise ValueError(f"data: expected batch[{key!r}] of shape {want} for model.name="
                         f"{config.model.name!r} (model.kwargs) and data.global_batch_size, "
                         f"got {got} from data.name={config.data.name!r}; make them agree")
