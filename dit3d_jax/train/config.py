"""The training configuration: every field and its default (configs/*.py start from here).

Kept apart from the step so that the models, diffusion and the pure train step import without
ml_collections (a benchmark on a bare accelerator image needs no extra wheels for them).
"""
from __future__ import annotations

import ml_collections

from dit3d_jax.train.sharding import DEFAULT_RULES


def default_config() -> ml_collections.ConfigDict:
    """Every training field at DiT's defaults for DiT3D-S/2 (AdamW 1e-4, wd 0, EMA 0.9999, 1000
    linear-β steps, learned sigma) on 16×32×32×4 clips with MiniLM captions. Locked: a typo in an
    override is an error."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "DiT3D-S/2"
    c.model.kwargs = ml_collections.ConfigDict(dict(
        num_frames=16, input_size=32, in_channels=4, text_dim=384, num_classes=1000,
        learn_sigma=True, temporal_every=1, attn_impl="xla", scan_blocks=False, remat="none"))
    c.compute_dtype = "auto"

    c.objective = ml_collections.ConfigDict(dict(
        name="gaussian", num_timesteps=1000, schedule="linear", predict="eps",
        t_sampling="uniform", ln_mean=0.0, ln_std=1.0))
    c.importance = ml_collections.ConfigDict(dict(enabled=True, history=10, uniform_prob=0.1))
    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-4, weight_decay=0.0, b1=0.9, b2=0.999, warmup_steps=0, grad_clip=0.0,
        accum_steps=1, freeze="none"))
    c.ema_decay = 0.9999

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.sharding_rules = DEFAULT_RULES

    c.data = ml_collections.ConfigDict(dict(
        name="moving_shapes", config="default", data_dir="", path="", global_batch_size=256,
        text_encoder="minilm", text_max_length=32, worker_count=0, augment=False, seed=0))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=400_000, log_every=100, checkpoint_every=5_000, keep_checkpoints=3))
    c.init_from = ""
    c.distributed = False
    c.sample = ml_collections.ConfigDict(dict(sampler="ddpm", steps=250, cfg_scale=4.0))
    c.lock()
    return c
