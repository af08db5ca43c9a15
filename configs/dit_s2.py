"""Image DiT-S/2 on 32×32×4 latents (256×256 images through the SD VAE), DiT's recipe.

    python convert_torch_weights.py --vae sd-vae-ft-ema/ --output runs/sd_vae
    python encode_latents.py --data image_folder --data-path imagenet/train --vae runs/sd_vae \\
        --size 256 --output runs/imagenet_latents
    python train.py --config configs/dit_s2.py --workdir runs/dit_s2 \\
        --config.data.path=runs/imagenet_latents

An image folder is laid out as torchvision's ImageFolder (one sub-folder per class; labels index
the sorted class names). Each step draws a fresh latent from the stored VAE posterior; without
--config.data.path the run stops with an error naming the encode command.

DiT-S/2 (hidden 384, depth 12, 6 heads, patch 2), 1000 classes with 10% label dropout for
classifier-free guidance; DDPM with 1000 linear-β steps, ε-prediction, learned-range variance
(hybrid loss); AdamW lr 1e-4, wd 0, batch 256, EMA 0.9999. Use --config.importance.enabled=False
for DiT's uniform timesteps. `configs/dit_s2.py:benchmark` trains on "random" data
(deterministic synthetic latents and labels): a throughput benchmark, and the image baseline
that configs/dit3d_s2.py inflates from.
"""
import ml_collections

from dit3d_jax.train.config import default_config, parse_variant


def get_config(arg: str = ""):
    """arg: "" (train on a latent dataset) or "benchmark" (synthetic data)."""
    benchmark = parse_variant(arg, benchmark=False).benchmark
    config = default_config()
    config.model.name = "DiT-S/2"
    # The image DiT has no video or text fields: the defaults' kwargs without them (the rest
    # keep their types, so overrides are checked as for every config).
    video_only = ("num_frames", "text_dim", "temporal_every", "frame_embedding",
                  "joint_dropout_prob", "text_dropout_prob")
    config.model.kwargs = ml_collections.ConfigDict({
        name: field for name, field in config.model.kwargs.items(preserve_field_references=True)
        if name not in video_only})
    config.model.kwargs.update(dict(
        input_size=32, in_channels=4, num_classes=1000, class_dropout_prob=0.1,
        learn_sigma=True, attn_impl="xla", scan_blocks=False, remat="none"))
    config.data.update(dict(name="random" if benchmark else "latents", path="",
                            global_batch_size=256, text_encoder="", text_max_length=32))
    config.train.update(dict(num_steps=400_000, log_every=100, checkpoint_every=5_000,
                             keep_checkpoints=3))
    return config
