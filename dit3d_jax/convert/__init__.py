"""PyTorch checkpoints -> Flax params: DiT (`convert_torch_state_dict`, `inflate` to DiT3D) and the
SD VAE in diffusers or LDM layout (`load_torch_vae`, `convert_vae_state_dict`)."""
from dit3d_jax.convert.torch_dit import (convert_torch_state_dict, flax_path, infer_model, inflate,
                                         select_state_dict)
from dit3d_jax.convert.torch_vae import (convert_vae_state_dict, infer_vae, load_torch_vae,
                                         read_vae_checkpoint, vae_from_config)

__all__ = ["convert_torch_state_dict", "flax_path", "infer_model", "inflate", "select_state_dict",
           "convert_vae_state_dict", "infer_vae", "load_torch_vae", "read_vae_checkpoint",
           "vae_from_config"]
