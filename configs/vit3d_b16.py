"""ViT3D-B/16 in pixel space: torchvision's ImageNet ViT-B/16 per frame, 8 frames of 224×224 RGB.

    python convert_torch_weights.py --vit vit_b_16.pth --output runs/vit_b16   # once
    python train.py --config configs/vit3d_b16.py --workdir runs/vit3d_b16 \\
        --config.init_from=runs/vit_b16 --config.optim.freeze=backbone

The backbone is torchvision's vit_b_16 (hidden 768, depth 12, 12 heads, patch 16; 196 patch
tokens + class token a frame); after each encoder layer a video block adds temporal attention
over the 8 frames and cross-attention to 32 MiniLM caption tokens; the head maps the patch tokens
back to 16×16×3 pixels each, and a 3×3×3 convolution smooths the clip (dit3d_jax/models/vit3d.py).
`vit_b_16.pth` is `torch.save(torchvision.models.vit_b_16(weights="IMAGENET1K_V1")
.state_dict(), …)` made wherever torchvision and the weights are; nothing downloads here.
Other frame sizes: --config.model.kwargs.input_size=N (a multiple of 16) and convert with
--input-size N (the position grid is resized bicubically).

Objective: rectified flow with logit-normal t, as the demo (pixel space, no learned variance).
Memory: remat "dots" keeps Dense outputs and recomputes the rest in the backward pass.
Data: "random" (synthetic clips and text embeddings; a throughput benchmark) until you point it at
videos: --config.data.name=video_folder --config.data.path=/path/to/videos
--config.data.text_encoder=minilm.
"""
from dit3d_jax.train.config import default_config, parse_variant


def get_config(arg: str = ""):
    parse_variant(arg)  # no variants
    config = default_config()
    config.model.name = "ViT3D-B/16"
    config.model.kwargs.update(dict(num_frames=8, input_size=224, in_channels=3, text_dim=384,
                                    num_classes=0, learn_sigma=False, temporal_every=1,
                                    remat="dots"))
    config.objective.update(dict(name="flow", t_sampling="logit_normal", ln_mean=0.0,
                                 ln_std=1.0))
    config.importance.enabled = False
    config.optim.update(dict(lr=1e-4, warmup_steps=1000, grad_clip=1.0))
    config.data.update(dict(name="random", global_batch_size=64, text_encoder="",
                            text_max_length=32))
    config.train.update(dict(num_steps=200_000, log_every=100, checkpoint_every=5_000,
                             keep_checkpoints=3))
    config.sample.update(dict(sampler="heun", steps=50, cfg_scale=4.0))
    return config
