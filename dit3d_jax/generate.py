"""From a trained model to pixels: prompts/labels in, sampled videos (or images) out.

Shared by sample.py and bench/caption_accuracy.py; the samplers themselves live in
`dit3d_jax.diffusion.samplers` and never see the model.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import numpy as np

from dit3d_jax.diffusion import sample
from dit3d_jax.models import DiT3D
from dit3d_jax.models.dit import DiT


def text_encoder_for(config: Optional[Any]):
    """The text encoder a run was trained with (config.data), MiniLM at 32 tokens by default."""
    from dit3d_jax.models.text import get_text_encoder
    data = config.data if config is not None else None
    return get_text_encoder(data.text_encoder if data else "minilm",
                            max_length=data.text_max_length if data else 32)


@functools.lru_cache(maxsize=8)
def model_apply_fn(model: DiT):
    """apply_fn(params, x, t, **cond) for `model`; one object per model, so the sampler's
    compiled loop is reused across calls."""
    def apply_fn(params, x, t, **cond):
        return model.apply({"params": params}, x, t, **cond)
    return apply_fn


def generate(model: DiT, params: Any, objective: Any, *, prompts: Optional[Sequence[str]] = None,
             labels: Optional[Sequence[int]] = None, num: int = 1, sampler: str = "ddpm",
             steps: int = 250, cfg_scale: float = 4.0, seed: int = 0, eta: float = 0.0,
             encoder: Any = None, progress: bool = True) -> np.ndarray:
    """`num` samples for each prompt / label (given together they pair up row by row).

    Returns (N, F, H, W, C) for DiT3D or (N, H, W, C) for DiT, float32 in the data's range, with
    N = num · max(len(prompts), len(labels), 1), rows grouped by condition.
    """
    n = max(len(prompts or ()), len(labels or ()), 1)
    cond = {}
    if labels:
        cond["y"] = np.repeat(np.asarray(labels, np.int32), num)
    if prompts:
        encoder = encoder if encoder is not None else text_encoder_for(None)
        emb, mask = encoder.encode([p for p in prompts for _ in range(num)])
        if emb.shape[-1] != model.text_dim:
            raise ValueError(f"prompts: the text encoder gives {emb.shape[-1]}-d tokens but the "
                             f"model expects text_dim={model.text_dim}")
        cond["text"], cond["text_mask"] = emb, mask
    s, c = model.input_size, model.in_channels
    batch = n * num
    shape = (batch, model.num_frames, s, s, c) if isinstance(model, DiT3D) else (batch, s, s, c)

    x = sample(model_apply_fn(model), params, shape, cond, jax.random.key(seed), objective=objective,
               sampler=sampler, steps=steps, cfg_scale=cfg_scale, eta=eta, progress=progress)
    return np.asarray(x)
