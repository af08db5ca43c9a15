"""DiT3D-S/2 at full size: 16 frames of 32×32×4 latents, MiniLM-width text, DiT's recipe.

    python train.py --config configs/dit3d_s2.py --workdir runs/dit3d_s2

DiT-S/2 (hidden 384, depth 12, 6 heads, patch 2) inflated to video: temporal attention in every
block, cross-attention to 384-d text tokens (32 of them), 1000 classes. DDPM with 1000 linear-β
steps, ε-prediction and learned-range variance (hybrid loss), importance-sampled timesteps,
AdamW lr 1e-4, wd 0, batch 256, EMA 0.9999, bf16 compute on accelerators.

Memory: the blocks run under nn.scan with the "dots" remat policy. Each block keeps its Dense
outputs and recomputes norms, modulation, GELU and the attention cores in the backward pass.
With 32 clips per device (batch 256 on 8 devices) autodiff keeps 18.2 GiB of activations
instead of 50.5 GiB, at +2.7% matmul work (docs/performance.md, "Train-step memory"). On a device
with room for the rest, this turns it off:
    --config.model.kwargs.scan_blocks=False --config.model.kwargs.remat=none

Data: "random" (deterministic synthetic latents, labels and text embeddings) until a latent
dataset exists; that makes this config a throughput/scaling benchmark. With pre-extracted latents
(.npy, × 0.18215, optional captions) train on them with
    --config.data.name=latent_folder --config.data.path=/path/to/latents --config.data.text_encoder=minilm
Start from image weights converted by convert_torch_weights.py (inflated into the video model):
    --config.init_from=runs/dit_s2_converted
Multi-host: launch the same command on every host (SLURM/Open MPI/TPU pods are detected, or set
--config.distributed=True); --config.mesh.fsdp=N shards params and optimizer state N ways.
"""
from dit3d_jax.train.config import default_config


def get_config():
    config = default_config()
    config.model.name = "DiT3D-S/2"
    config.model.kwargs.update(dict(num_frames=16, input_size=32, in_channels=4, text_dim=384,
                                    num_classes=1000, learn_sigma=True, temporal_every=1,
                                    scan_blocks=True, remat="dots"))
    config.objective.update(dict(name="gaussian", num_timesteps=1000, schedule="linear",
                                 predict="eps"))
    config.data.update(dict(name="random", global_batch_size=256, text_encoder="",
                            text_max_length=32))
    config.train.update(dict(num_steps=400_000, log_every=100, checkpoint_every=5_000,
                             keep_checkpoints=3))
    return config
