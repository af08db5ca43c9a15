"""In-training previews: a small sample grid from fixed conditions every few steps.

    preview = make_preview(config, model, objective, workdir, enabled=main)   # None when off
    if preview is not None and preview.due(step):
        writer.write_image("preview", preview.at(step, state.ema_params), step)

Built once per run from config.sample: preview_num tiles, each with a fixed condition (the text
prompts preview_prompts, else held-out captions of the dataset spread over them, else its first
training captions, encoded once by the run's text encoder; class labels spread over the classes)
and the same noise (config.seed) at every call, sampled by config.sample's sampler and guidance
with preview_steps steps through `dit3d_jax.diffusion.sample` (jitted once, then reused). Each
call writes WORKDIR/previews/step_NNNNNN.png (one row a sample, its frames left to right, its
caption above) and, for videos, step_NNNNNN.gif (the animated grid). Latent models show their
first three latent channels (no VAE decode: a preview stays cheap).
"""
from __future__ import annotations

import os
import time
from typing import Any, Optional

import jax
import numpy as np
from absl import logging

from dit3d_jax.diffusion import sample
from dit3d_jax.generate import conditions, model_apply_fn, sample_settings, text_encoder_for
from dit3d_jax.models.dit import DiT
from dit3d_jax.train.config import ConfigError
from dit3d_jax.train.step import compute_dtype
from dit3d_jax.utils.video import make_grid, write_image, write_video

PREVIEW_DIR = "previews"
TILE_PIXELS = 64  # tiles are upscaled (nearest) to at least this width


def check_preview_fields(sample_config) -> None:
    """Raises ConfigError naming the first config.sample.preview_* field that is out of range:
    preview_every >= 0, preview_num >= 1, preview_steps >= 1, preview_prompts non-empty strings."""
    for name, low in (("preview_every", 0), ("preview_num", 1), ("preview_steps", 1)):
        value = sample_config[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"sample.{name}: expected an int >= {low}, got {value!r}")
    prompts = sample_config.preview_prompts
    if not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ConfigError(f"sample.preview_prompts: expected a tuple of non-empty captions, got "
                          f"{tuple(prompts)!r}")


def default_prompts(data, num: int) -> list[str]:
    """`num` held-out captions of config.data's dataset, evenly spaced over them (so the tiles
    differ), else its first `num` training captions; [] for data without captions ("random",
    "latent_folder")."""
    heldout, train = [], []
    if data.name == "moving_shapes":
        from dit3d_jax.data import shapes  # pylint: disable=import-outside-toplevel
        heldout, train = shapes.captions("heldout", data.config), shapes.captions("train",
                                                                                  data.config)
    elif data.name == "video_folder":  # a train split only
        from dit3d_jax.data.video_folder import read_captions  # pylint: disable=import-outside-toplevel
        by_file = read_captions(data.path)
        train = list(dict.fromkeys(by_file[name] for name in sorted(by_file)))
    elif data.name == "latents":
        from dit3d_jax.data.latents import read_metadata  # pylint: disable=import-outside-toplevel
        splits = read_metadata(data.path)["caption_labels"]
        heldout, train = list(splits.get("heldout", ())), list(splits["train"])
    if len(heldout) > num:
        return [heldout[i * len(heldout) // num] for i in range(num)]
    return heldout or train[:num]


class Preview:
    """The fixed conditions, noise and sampler of a run's previews (see the module docstring).

    captions: one per tile, what it was conditioned on. shape: (N, F, H, W, C) or (N, H, W, C).
    seconds: how long the last `at` took, from the moment `params` were ready (the train steps
    queued before it not counted).
    """

    def __init__(self, config, model: DiT, objective: Any, workdir: str, *,
                 enabled: bool = True):
        check_preview_fields(config.sample)
        self.every, self.enabled = int(config.sample.preview_every), enabled
        self.directory = os.path.join(workdir, PREVIEW_DIR)
        num = int(config.sample.preview_num)
        settings = sample_settings(config, steps=int(config.sample.preview_steps))
        prompts = list(config.sample.preview_prompts)
        has_text = model.input_spec.text_dim > 0 and bool(config.data.text_encoder)
        if prompts and not has_text:
            raise ConfigError(f"sample.preview_prompts: the model has no text conditioning "
                              f"(model.kwargs.text_dim, data.text_encoder), got {prompts!r}")
        prompts = (prompts or default_prompts(config.data, num)) if has_text else []
        prompts = [prompts[i % len(prompts)] for i in range(num)] if prompts else []
        labels = ([i * model.num_classes // num for i in range(num)]
                  if model.num_classes > 0 else [])
        encoder = text_encoder_for(config) if prompts else None
        self.cond = conditions(model, prompts=prompts, labels=labels, encoder=encoder)
        self.captions = [" / ".join(filter(None, [prompts[i] if prompts else "",
                                                  f"class {labels[i]}" if labels else ""]))
                         or "unconditional" for i in range(num)]
        self.shape = model.input_spec.batch_shape(num)
        self._apply_fn = model_apply_fn(model.clone(dtype=compute_dtype(config.compute_dtype)))
        self._objective, self._settings = objective, settings
        self._rng = jax.random.key(config.seed)
        self.seconds = 0.0

    def due(self, step: int) -> bool:
        """Whether `step` is a preview step (a multiple of sample.preview_every)."""
        return step % self.every == 0

    def sample(self, params: Any) -> np.ndarray:
        """The preview samples of `params` as float32 (N, F, H, W, C) or (N, H, W, C); the same
        params give the same samples. Every process calls it (params may span hosts)."""
        return np.asarray(sample(self._apply_fn, params, self.shape, self.cond, self._rng,
                                 objective=self._objective, progress=False, **self._settings))

    def at(self, step: int, params: Any) -> np.ndarray:
        """Samples `params` (the EMA params) and, when enabled, writes step_NNNNNN.png (and .gif
        for videos) under workdir/previews; returns the PNG's image, uint8 (H', W', 3)."""
        jax.block_until_ready(params)
        start = time.perf_counter()
        x = self.sample(params)[..., :3]
        scale = max(1, -(-TILE_PIXELS // x.shape[-2]))
        base = os.path.join(self.directory, f"step_{step:06d}")
        if x.ndim == 5:  # videos: one row of frames a sample
            n, f, h, w, c = x.shape
            strips = x.transpose(0, 2, 1, 3, 4).reshape(n, h, f * w, c)
            image = make_grid(strips, ncols=1, captions=self.captions, scale=scale)
        else:
            image = make_grid(x, captions=self.captions, scale=scale)
        if self.enabled:
            os.makedirs(self.directory, exist_ok=True)
            write_image(base + ".png", image)
            if x.ndim == 5:
                write_video(base + ".gif", make_grid(x, captions=self.captions, scale=scale))
        self.seconds = time.perf_counter() - start
        logging.info("Preview at step %d: %.2f s.", step, self.seconds)
        return image


def make_preview(config, model: DiT, objective: Any, workdir: str, *,
                 enabled: bool = True) -> Optional[Preview]:
    """The run's Preview, or None when sample.preview_every is 0; ConfigError for a
    preview_* field out of range (checked either way). enabled: False (processes other than
    0) samples but writes nothing."""
    check_preview_fields(config.sample)
    if config.sample.preview_every == 0:
        return None
    return Preview(config, model, objective, workdir, enabled=enabled)
