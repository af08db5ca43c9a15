"""The training objective named by a config (`config.objective`), matched to the model."""
from __future__ import annotations

from typing import Any, Mapping

from dit3d_jax.diffusion.flow import RectifiedFlow, create_flow
from dit3d_jax.diffusion.gaussian import GaussianDiffusion, create_gaussian_diffusion

OBJECTIVES = ("gaussian", "flow")


def make_objective(cfg: Mapping[str, Any], learn_sigma: bool) -> GaussianDiffusion | RectifiedFlow:
    """cfg: name ('gaussian' | 'flow'), num_timesteps, and schedule/predict (gaussian) or
    t_sampling/ln_mean/ln_std (flow). learn_sigma: whether the model outputs 2C channels (a
    gaussian objective then learns the variance with DiT's hybrid loss)."""
    name = cfg.get("name", "gaussian")
    if name == "gaussian":
        if cfg.get("t_sampling", "uniform") != "uniform":
            raise ValueError(f"objective.t_sampling: the gaussian objective draws uniform "
                             f"timesteps (or the importance sampler's); got "
                             f"{cfg.get('t_sampling')!r}, which only name='flow' offers")
        return create_gaussian_diffusion(cfg.get("num_timesteps", 1000),
                                         cfg.get("schedule", "linear"), learn_sigma,
                                         cfg.get("predict", "eps"))
    if name == "flow":
        return create_flow(cfg.get("num_timesteps", 1000), cfg.get("t_sampling", "uniform"),
                           cfg.get("ln_mean", 0.0), cfg.get("ln_std", 1.0))
    raise ValueError(f"objective.name: expected one of {OBJECTIVES}, got {name!r}")
