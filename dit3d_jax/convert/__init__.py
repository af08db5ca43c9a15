"""PyTorch DiT checkpoints -> Flax params (`convert_torch_state_dict`), DiT -> DiT3D (`inflate`)."""
from dit3d_jax.convert.torch_dit import (convert_torch_state_dict, flax_path, infer_model, inflate,
                                         select_state_dict)

__all__ = ["convert_torch_state_dict", "flax_path", "infer_model", "inflate", "select_state_dict"]
