"""DiT3D-S/2 at full size: 16 frames of 32×32×4 latents (256² video through the SD VAE),
MiniLM captions, DiT's recipe.

From three files (a DiT checkpoint, the SD VAE weights, a folder of videos) to a trained DiT3D:

    python convert_torch_weights.py --checkpoint DiT-S-2.pt --inflate-to DiT3D-S/2 \\
        --num-frames 16 --text-dim 384 --output runs/dit3d_s2_init
    python convert_torch_weights.py --vae sd-vae-ft-ema/ --output runs/sd_vae
    python encode_latents.py --data video_folder --data-path videos/ --vae runs/sd_vae \\
        --frames 16 --size 256 --output runs/latents
    python train.py --config configs/dit3d_s2.py --workdir runs/dit3d_s2 \\
        --config.data.path=runs/latents --config.init_from=runs/dit3d_s2_init \\
        --config.optim.freeze=backbone

(only DiT-XL/2 weights were ever released: for them use --config.model.name=DiT3D-XL/2.) Data:
the latent dataset encode_latents.py wrote (the VAE posterior per clip; each step draws a fresh
latent from it); without --config.data.path the run stops with an error naming that command.
Samples decode through the VAE recorded in the dataset: python sample.py --workdir runs/dit3d_s2
--prompt "..." (or --vae runs/sd_vae).

DiT-S/2 (hidden 384, depth 12, 6 heads, patch 2) inflated to video: temporal attention in every
block, cross-attention to 384-d MiniLM text tokens (32 of them), 1000 classes. DDPM with 1000
linear-β steps, ε-prediction and learned-range variance (hybrid loss), importance-sampled
timesteps, AdamW lr 1e-4, wd 0, batch 256, EMA 0.9999, bf16 compute on accelerators.

Memory: the blocks run under nn.scan with the "dots" remat policy. Each block keeps its Dense
outputs and recomputes norms, modulation, GELU and the attention cores in the backward pass.
With 32 clips per device (batch 256 on 8 devices) autodiff keeps 18.2 GiB of activations
instead of 50.5 GiB, at +2.7% matmul work (docs/performance.md, "Train-step memory"). On a device
with room for the rest, this turns it off:
    --config.model.kwargs.scan_blocks=False --config.model.kwargs.remat=none

`configs/dit3d_s2.py:benchmark` is the same model on "random" data (deterministic synthetic
latents, labels and text embeddings): a throughput/scaling benchmark that needs no dataset.
Multi-host: launch the same command on every host (SLURM/Open MPI/TPU pods are detected, or set
--config.distributed=True); --config.mesh.fsdp=N shards params and optimizer state N ways.
"""
from dit3d_jax.train.config import default_config, parse_variant


def get_config(arg: str = ""):
    """arg: "" (train on a latent dataset) or "benchmark" (synthetic data)."""
    benchmark = parse_variant(arg, benchmark=False).benchmark
    config = default_config()
    config.model.name = "DiT3D-S/2"
    config.model.kwargs.update(dict(num_frames=16, input_size=32, in_channels=4, text_dim=384,
                                    num_classes=1000, learn_sigma=True, temporal_every=1,
                                    scan_blocks=True, remat="dots"))
    config.objective.update(dict(name="gaussian", num_timesteps=1000, schedule="linear",
                                 predict="eps"))
    if benchmark:
        config.data.update(dict(name="random", global_batch_size=256, text_encoder="",
                                text_max_length=32))
    else:
        config.data.update(dict(name="latents", path="", global_batch_size=256,
                                text_encoder="minilm", text_max_length=32))
    config.train.update(dict(num_steps=400_000, log_every=100, checkpoint_every=5_000,
                             keep_checkpoints=3))
    return config
