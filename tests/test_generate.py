"""sample_settings: each sampling setting as given, else the run config's `sample` section, else
DiT's; a sampler that does not exist or does not fit the objective is an error naming it."""
import pytest

from dit3d_jax.generate import sample_settings
from dit3d_jax.train.config import default_config


def flow_config():
    config = default_config()
    config.objective.name = "flow"
    config.sample.update(dict(sampler="euler", steps=32, cfg_scale=3.0))
    return config


def test_given_values_win_then_the_config_then_dit_defaults():
    config = flow_config()
    assert sample_settings(config) == dict(sampler="euler", steps=32, cfg_scale=3.0, eta=0.0)
    assert sample_settings(config, sampler="heun", steps=4, cfg_scale=0.0, eta=0.5) == dict(
        sampler="heun", steps=4, cfg_scale=0.0, eta=0.5)  # 0 guidance is a value, not "unset"
    assert sample_settings(None) == dict(sampler="ddpm", steps=250, cfg_scale=4.0, eta=0.0)
    assert sample_settings(None, sampler="ddim", steps=50)["sampler"] == "ddim"


@pytest.mark.parametrize("config,kwargs,match", [
    (None, dict(sampler="plms"), r"^sampler 'plms': expected one of \('ddpm', 'ddim', "),
    (None, dict(sampler="heun"), r"^sampler 'heun' does not fit the gaussian objective"),
    (flow_config(), dict(sampler="ddim"), r"^sampler 'ddim' does not fit the flow objective"),
    (flow_config(), dict(steps=0), r"^steps 0: expected a positive number of steps"),
])
def test_bad_settings_are_errors_that_start_with_the_argument(config, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_settings(config, **kwargs)
