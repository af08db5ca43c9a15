"""A DiT3D small enough to train on a CPU in seconds: the test suite's config.

    python train.py --config configs/tiny.py --workdir /tmp/tiny

DiT3D/2 (no registry size) with hidden 64, depth 2, 4 heads on 4 frames of 8×8×4, class labels
and 8-token text of width 16, DDPM (hybrid loss, importance sampling), synthetic data ("random":
a fixed pool of 64 deterministic examples, so the loss falls as the model memorises them). Global
batch 8 fits a mesh of 8 simulated devices.
"""
from dit3d_jax.train.config import default_config, parse_variant


def get_config(arg: str = ""):
    parse_variant(arg)  # no variants
    config = default_config()
    config.model.name = "DiT3D/2"
    config.model.kwargs.update(dict(
        hidden_size=64, depth=2, num_heads=4, num_frames=4, input_size=8, in_channels=4,
        text_dim=16, num_classes=10))
    config.compute_dtype = "float32"
    config.optim.lr = 1e-3
    config.ema_decay = 0.99
    config.data.update(dict(name="random", global_batch_size=8, text_encoder="",
                            text_max_length=8))
    config.train.update(dict(num_steps=6, log_every=1, checkpoint_every=3, keep_checkpoints=2))
    config.sample.update(dict(sampler="ddim", steps=10, cfg_scale=1.0))
    return config
