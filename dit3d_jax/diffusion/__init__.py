"""Diffusion math: DDPM (DiT-exact) and rectified-flow objectives, and their samplers."""
from dit3d_jax.diffusion.flow import RectifiedFlow, create_flow
from dit3d_jax.diffusion.gaussian import (
    GaussianDiffusion,
    cosine_betas,
    create_gaussian_diffusion,
    get_beta_schedule,
    linear_betas,
    space_timesteps,
)
from dit3d_jax.diffusion.samplers import sample

__all__ = [
    "GaussianDiffusion",
    "RectifiedFlow",
    "cosine_betas",
    "create_flow",
    "create_gaussian_diffusion",
    "get_beta_schedule",
    "linear_betas",
    "sample",
    "space_timesteps",
]
