"""sample_settings: each sampling setting as given, else the run config's `sample` section, else
DiT's; a sampler that does not exist or does not fit the objective is an error naming it.
generate's compute dtype: "auto" is the trainer's rule for this CPU, bfloat16 stays close to
float32."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit3d_jax.diffusion.objective import make_objective
from dit3d_jax.generate import generate, sample_settings
from dit3d_jax.models import get_model, init_params
from dit3d_jax.train.config import default_config
from dit3d_jax.train.step import cpu_has_fast_bf16


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


def test_generate_compute_dtype():
    model = get_model("DiT-S/8", depth=1, input_size=16, num_classes=4, hidden_size=64,
                      num_heads=2)
    params = init_params(model, jax.random.key(0))
    params = jax.tree_util.tree_map(lambda p: p + 0.02 * np.sign(p + 0.5), params)  # non-zero
    objective = make_objective(default_config().objective, model.learn_sigma)
    run = lambda dtype: generate(model, params, objective, labels=[1, 2], sampler="ddim",
                                 steps=4, cfg_scale=2.0, progress=False, dtype=dtype)
    f32, auto, bf16 = run("float32"), run("auto"), run("bfloat16")
    # CPU: auto means bfloat16 where the CPU has AVX512-BF16, else float32.
    np.testing.assert_array_equal(auto, bf16 if cpu_has_fast_bf16() else f32)
    assert bf16.dtype == np.float32 and not np.array_equal(bf16, f32)  # really ran in bf16
    assert np.abs(bf16 - f32).max() <= 0.05 * np.abs(f32).max()
    with pytest.raises(ValueError, match="compute_dtype"):
        run("float16")


def test_generate_passes_guidance_channels_to_the_sampler():
    """guidance_channels=3 (DiT's sample.py) guides only the first 3 of the 4 latent channels:
    generate gives exactly what sample() gives with it, and not what full guidance gives."""
    from dit3d_jax.diffusion import sample
    from dit3d_jax.generate import model_apply_fn
    model = get_model("DiT-S/8", depth=1, input_size=16, num_classes=4, hidden_size=64,
                      num_heads=2)
    params = init_params(model, jax.random.key(0))
    params = jax.tree_util.tree_map(lambda p: p + 0.02 * np.sign(p + 0.5), params)
    objective = make_objective(default_config().objective, model.learn_sigma)
    kw = dict(sampler="ddim", steps=4, cfg_scale=4.0, progress=False)
    run = lambda g: generate(model, params, objective, labels=[1, 2], dtype="float32",
                             guidance_channels=g, **kw)
    three, every = run(3), run(None)
    want = sample(model_apply_fn(model.clone(dtype=jnp.float32)), params, (2, 16, 16, 4),
                  {"y": np.array([1, 2], np.int32)}, jax.random.key(0), objective=objective,
                  guidance_channels=3, **kw)
    np.testing.assert_array_equal(three, np.asarray(want))
    assert np.abs(three - every).max() > 1e-3
    with pytest.raises(ValueError, match=r"guidance_channels: expected an int in \[1, 4\]"):
        run(5)
