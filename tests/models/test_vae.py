"""The Flax SD VAE: shapes, video folding, chunked decoding's memory bound, dtype, save/load.

Numerical parity with diffusers' PyTorch AutoencoderKL lives in tests/convert/test_torch_vae.py.
"""
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit3d_jax.models.vae import (AutoencoderKL, _decode_frames, decode_video, encode_video,
                                  init_vae, load_vae, param_shapes, sample_posterior, save_vae)

TINY = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)


@pytest.fixture(scope="module")
def tiny():
    vae = AutoencoderKL(**TINY)
    rng = np.random.default_rng(1)
    # Non-zero biases and non-unit norm scales, so every parameter matters.
    params = jax.tree_util.tree_map(
        lambda a: a + 0.1 * rng.standard_normal(a.shape, np.float32) if a.ndim == 1 else a,
        init_vae(vae, seed=0))
    return vae, params


@functools.lru_cache(maxsize=None)
def _jitted(vae, method):
    """One compiled function per (module, method) for the whole file."""
    return jax.jit(lambda p, x: vae.apply({"params": p}, x, method=method))


def test_video_folds_frames_into_the_batch_and_decodes_in_chunks(tiny):
    vae, params = tiny
    assert vae.downsample_factor == 2 and AutoencoderKL().downsample_factor == 8
    video = jax.random.uniform(jax.random.key(3), (2, 3, 8, 8, 3), minval=-1, maxval=1)
    mean, logvar = encode_video(vae, params, video)
    assert mean.shape == logvar.shape == (2, 3, 4, 4, 4)
    flat_mean, flat_logvar = _jitted(vae, AutoencoderKL.encode)(params, video.reshape(6, 8, 8, 3))
    np.testing.assert_allclose(mean.reshape(6, 4, 4, 4), flat_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logvar.reshape(6, 4, 4, 4), flat_logvar, rtol=1e-5, atol=1e-6)
    chunked_mean, _ = encode_video(vae, params, video, chunk=4)
    np.testing.assert_allclose(chunked_mean, mean, rtol=1e-5, atol=1e-6)

    # decode_video takes SCALED latents; 6 frames in chunks of 4 (the last chunk padded).
    expected = _jitted(vae, AutoencoderKL.decode)(params, flat_mean)
    assert expected.shape == (6, 8, 8, 3) and expected.dtype == jnp.float32
    for chunk in (4, 100):
        frames = decode_video(vae, params, mean * vae.scaling_factor, chunk=chunk)
        assert frames.shape == (2, 3, 8, 8, 3)
        np.testing.assert_allclose(frames.reshape(6, 8, 8, 3), expected, rtol=1e-5, atol=1e-5)


def test_logvar_is_clipped(tiny):
    vae, params = tiny
    for bias, bound in ((100.0, 20.0), (-100.0, -30.0)):
        shifted = jax.tree_util.tree_map(lambda a: a, params)
        shifted["quant_conv"]["bias"] = np.concatenate([params["quant_conv"]["bias"][:4],
                                                        np.full(4, bias, np.float32)])
        _, logvar = _jitted(vae, AutoencoderKL.encode)(shifted, jnp.zeros((6, 8, 8, 3)))
        np.testing.assert_array_equal(logvar, bound)


def test_chunked_decode_memory_does_not_grow_with_the_frame_count(tiny):
    vae, _ = tiny
    params = param_shapes(vae)

    def compiled(frames, chunk):
        latents = jax.ShapeDtypeStruct((frames, 8, 8, 4), jnp.float32)
        return _decode_frames.lower(vae, params, latents, chunk).compile().memory_analysis()

    few, many, whole = compiled(8, 2), compiled(32, 2), compiled(16, 16)
    # Beyond the output itself, 4x the frames in chunks of 2 needs at most one output's worth more
    # scratch (the padded/reshaped output); decoding 16 frames at once needs far more.
    assert many.temp_size_in_bytes - few.temp_size_in_bytes <= (many.output_size_in_bytes
                                                                 - few.output_size_in_bytes)
    assert 4 * many.temp_size_in_bytes < whole.temp_size_in_bytes


def test_bad_video_arguments_are_named(tiny):
    vae, params = tiny
    with pytest.raises(ValueError, match="chunk: expected a positive int"):
        decode_video(vae, params, jnp.zeros((1, 2, 4, 4, 4)), chunk=0)
    with pytest.raises(ValueError, match=r"decode_video latents: expected \(B, F, H, W, 4\)"):
        decode_video(vae, params, jnp.zeros((2, 4, 4, 4)), chunk=1)
    with pytest.raises(ValueError, match="multiples of 2"):
        encode_video(vae, params, jnp.zeros((1, 1, 5, 6, 3)))


def test_bfloat16_compute_stays_close_with_float32_norms(tiny):
    vae, params = tiny
    x = jax.random.uniform(jax.random.key(4), (6, 8, 8, 3), minval=-1, maxval=1)
    half = vae.clone(dtype=jnp.bfloat16)
    # Every GroupNorm sees float32 input; every conv computes in bfloat16 (recorded while tracing).
    seen = {"norm": set(), "conv": set()}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.GroupNorm):
            seen["norm"].add(args[0].dtype)
        if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
            seen["conv"].add(out.dtype)
        return out

    def reconstruct_half(p, x):
        with nn.intercept_methods(record):
            return half.apply({"params": p}, x)

    frames16 = jax.jit(reconstruct_half)(params, x)
    frames32 = _jitted(vae, AutoencoderKL.decode)(params,
                                                  _jitted(vae, AutoencoderKL.encode)(params, x)[0])
    assert seen == {"norm": {jnp.dtype(jnp.float32)}, "conv": {jnp.dtype(jnp.bfloat16)}}
    assert frames16.dtype == jnp.float32
    # bf16 rounding compounds over ~20 layers (measured 3.5% of the largest value); a wrong cast
    # or a bf16 norm would be off by O(1).
    assert float(jnp.abs(frames16 - frames32).max() / jnp.abs(frames32).max()) < 0.1


def test_posterior_draw_has_the_posterior_moments():
    mean = jnp.full((4000, 4), 0.5)
    logvar = jnp.full((4000, 4), np.log(0.25))
    z = sample_posterior(jax.random.key(5), mean, logvar)
    assert abs(float(z.mean()) - 0.5) < 0.02 and abs(float(z.std()) - 0.5) < 0.02


def test_save_and_load_round_trip(tiny, tmp_path):
    vae, params = tiny
    save_vae(tmp_path / "vae", vae, params)
    loaded, loaded_params = load_vae(str(tmp_path / "vae"))
    assert loaded == vae
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded_params, params)
    half, _ = load_vae(str(tmp_path / "vae"), dtype=jnp.bfloat16)
    assert half.dtype == jnp.bfloat16 and half.block_out_channels == (8, 16)
    assert json.loads((tmp_path / "vae" / "vae.json").read_text())["family"] == "AutoencoderKL"


def test_load_refuses_what_is_not_a_saved_vae(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_vae(str(tmp_path / "nowhere"))
    (tmp_path / "dit").mkdir()
    (tmp_path / "dit" / "model.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no vae.json.*a DiT, not a VAE"):
        load_vae(str(tmp_path / "dit"))
