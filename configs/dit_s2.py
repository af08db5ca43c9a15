"""Image DiT-S/2 on 32×32×4 latents (256×256 images through the SD VAE), DiT's recipe.

    python train.py --config configs/dit_s2.py --workdir runs/dit_s2

DiT-S/2 (hidden 384, depth 12, 6 heads, patch 2), 1000 classes with 10% label dropout for
classifier-free guidance; DDPM with 1000 linear-β steps, ε-prediction, learned-range variance
(hybrid loss); AdamW lr 1e-4, wd 0, batch 256, EMA 0.9999. Data: "random" (deterministic
synthetic latents and labels): a throughput benchmark and the image baseline that configs/
dit3d_s2.py inflates from. Use --config.importance.enabled=False for DiT's uniform timesteps.
"""
import ml_collections

from dit3d_jax.train.config import default_config


def get_config():
    config = default_config()
    config.model.name = "DiT-S/2"
    # The image DiT has no video or text fields: replace the defaults' kwargs.
    config.model.kwargs = ml_collections.ConfigDict(dict(
        input_size=32, in_channels=4, num_classes=1000, class_dropout_prob=0.1,
        learn_sigma=True, attn_impl="xla", scan_blocks=False, remat="none"))
    config.data.update(dict(name="random", global_batch_size=256, text_encoder="",
                            text_max_length=32))
    config.train.update(dict(num_steps=400_000, log_every=100, checkpoint_every=5_000,
                             keep_checkpoints=3))
    return config
