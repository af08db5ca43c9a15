"""From a trained model to pixels: prompts/labels in, sampled videos (or images) out.

    model, params, run_config = load_workdir(workdir)          # dit3d_jax.train.checkpoint
    x = generate(model, params, make_objective(run_config.objective, model.learn_sigma),
                 prompts=["a red circle moving left"], encoder=text_encoder_for(run_config),
                 **sample_settings(run_config, cfg_scale=6.0))

Shared by sample.py, bench/caption_accuracy.py and the notebook; the samplers themselves live in
`dit3d_jax.diffusion.samplers` and never see the model.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import numpy as np

from dit3d_jax.diffusion import sample
from dit3d_jax.diffusion.flow import RectifiedFlow
from dit3d_jax.diffusion.gaussian import GaussianDiffusion
from dit3d_jax.diffusion.samplers import SAMPLERS
from dit3d_jax.models.dit import DiT
from dit3d_jax.train.step import compute_dtype


def text_encoder_for(config: Optional[Any]):
    """The text encoder a run was trained with (config.data), MiniLM at 32 tokens by default."""
    from dit3d_jax.models.text import get_text_encoder
    data = config.data if config is not None else None
    return get_text_encoder(data.text_encoder if data else "minilm",
                            max_length=data.text_max_length if data else 32)


def sample_settings(run_config: Optional[Any], sampler: Optional[str] = None,
                    steps: Optional[int] = None, cfg_scale: Optional[float] = None,
                    eta: Optional[float] = None) -> dict:
    """generate()'s sampler, steps, cfg_scale and eta: each as given, else the run config's
    `sample` section, else DiT's (ddpm, or heun for a flow objective; 250 steps; guidance 4;
    eta 0). run_config: a training config (`load_workdir`'s third value) or None (e.g. a
    converted checkpoint: a gaussian objective). Raises ValueError, naming the argument first,
    for a sampler that is unknown or does not fit the objective, or steps < 1."""
    if run_config is None:
        chosen, objective = {}, "gaussian"
    else:
        chosen, objective = run_config.sample, run_config.objective.get("name", "gaussian")
    sampler = sampler or chosen.get("sampler", "heun" if objective == "flow" else "ddpm")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r}: expected one of {SAMPLERS}")
    if sampler not in (RectifiedFlow if objective == "flow" else GaussianDiffusion).samplers:
        raise ValueError(f"sampler {sampler!r} does not fit the {objective} objective")
    steps = steps if steps is not None else chosen.get("steps", 250)
    if steps <= 0:
        raise ValueError(f"steps {steps}: expected a positive number of steps")
    return {"sampler": sampler, "steps": steps,
            "cfg_scale": cfg_scale if cfg_scale is not None else chosen.get("cfg_scale", 4.0),
            "eta": eta if eta is not None else chosen.get("eta", 0.0)}


@functools.lru_cache(maxsize=8)
def model_apply_fn(model: DiT):
    """apply_fn(params, x, t, **cond) for `model`; one object per model, so the sampler's
    compiled loop is reused across calls."""
    def apply_fn(params, x, t, **cond):
        return model.apply({"params": params}, x, t, **cond)
    return apply_fn


def conditions(model: DiT, *, prompts: Optional[Sequence[str]] = None,
               labels: Optional[Sequence[int]] = None, num: int = 1,
               encoder: Any = None) -> dict:
    """The sampler's per-row kwargs for `num` rows of each prompt / label, rows grouped by
    condition: "y" int32 (N,) for labels, "text" float32 (N, L, D) and "text_mask" bool (N, L)
    for prompts (encoded by `encoder`, MiniLM by default); {} for neither. Raises ValueError
    when the encoder's width is not the model's text_dim."""
    cond = {}
    if labels:
        cond["y"] = np.repeat(np.asarray(labels, np.int32), num)
    if prompts:
        encoder = encoder if encoder is not None else text_encoder_for(None)
        emb, mask = encoder.encode([p for p in prompts for _ in range(num)])
        if emb.shape[-1] != model.input_spec.text_dim:
            raise ValueError(f"prompts: the text encoder gives {emb.shape[-1]}-d tokens but the "
                             f"model expects text_dim={model.input_spec.text_dim}")
        cond["text"], cond["text_mask"] = emb, mask
    return cond


def generate(model: DiT, params: Any, objective: Any, *, prompts: Optional[Sequence[str]] = None,
             labels: Optional[Sequence[int]] = None, num: int = 1, sampler: str = "ddpm",
             steps: int = 250, cfg_scale: float = 4.0, seed: int = 0, eta: float = 0.0,
             encoder: Any = None, progress: bool = True, dtype: str = "auto",
             guidance_channels: Optional[int] = None) -> np.ndarray:
    """`num` samples for each prompt / label (given together they pair up row by row).

    guidance_channels: CFG guides the first this many data channels, the rest (and the learned
    variance) come from the conditional branch; None guides all. 3 reproduces DiT's sample.py
    (its forward_with_cfg guides 3 of the 4 latent channels).
    dtype: the model's compute dtype while sampling, as the training config's compute_dtype:
    "auto" (bfloat16 on GPU/TPU and AVX512-BF16 CPUs, else float32), "float32" or "bfloat16";
    params stay float32 and the sampler's state float32 (sample()'s `state_dtype`).
    Returns (N, *model.input_spec.shape) float32 in the data's range ((N, F, H, W, C) for a
    video model, (N, H, W, C) for an image DiT), N = num · max(len(prompts), len(labels), 1),
    rows grouped by condition.
    """
    model = model.clone(dtype=compute_dtype(dtype))
    cond = conditions(model, prompts=prompts, labels=labels, num=num, encoder=encoder)
    n = num * max(len(prompts or ()), len(labels or ()), 1)
    x = sample(model_apply_fn(model), params, model.input_spec.batch_shape(n), cond,
               jax.random.key(seed), objective=objective, sampler=sampler, steps=steps,
               cfg_scale=cfg_scale, eta=eta, progress=progress,
               guidance_channels=guidance_channels)
    return np.asarray(x)
