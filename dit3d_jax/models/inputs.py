"""What a model takes: one description of its inputs, read by init, data, the train step,
sampling and the benches instead of asking which class the model is.

    spec = model.input_spec      # InputSpec("video", (16, 32, 32, 4), num_classes=0, text_dim=384)
    x = batch[spec.key]          # (B, *spec.shape) float32, channels last
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """key: the host-batch entry that holds x, "video" or "image".
    shape: one example, channels last: (F, H, W, C) for a video, (H, W, C) for an image.
    num_classes: the model takes labels y (B,) int in [0, num_classes); 0: none.
    text_dim: the model takes captions text (B, L, text_dim) with text_mask (B, L) bool; 0: none.
    timestep: the model takes diffusion times t (B,) (False for a bare backbone, e.g. the ViT).
    """
    key: str
    shape: tuple[int, ...]
    num_classes: int = 0
    text_dim: int = 0
    timestep: bool = True

    @property
    def video(self) -> bool:
        return self.key == "video"

    def batch_shape(self, batch: int) -> tuple[int, ...]:
        """(batch, *shape): x of `batch` examples."""
        return (batch, *self.shape)

    def zeros(self, batch: int = 1, text_len: int = 1) -> dict:
        """Zero inputs for `model.init` / `jax.eval_shape`: x (batch, *shape), and t (batch,),
        y (batch,) int32 and text (batch, text_len, text_dim) where the model takes them."""
        inputs = dict(x=jnp.zeros(self.batch_shape(batch), jnp.float32))
        if self.timestep:
            inputs["t"] = jnp.zeros((batch,), jnp.float32)
        if self.num_classes > 0:
            inputs["y"] = jnp.zeros((batch,), jnp.int32)
        if self.text_dim > 0:
            inputs["text"] = jnp.zeros((batch, text_len, self.text_dim), jnp.float32)
        return inputs
