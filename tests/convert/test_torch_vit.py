"""The torchvision-ViT converter: features match an independent PyTorch ViT (with and without a
resized position grid), PyTorch's bicubic convention is reproduced, bad files are refused, and the
output initialises a ViT3D through init_from."""
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dit3d_jax.convert.torch_vit import (convert_torch_vit, infer_vit, resize_position_embedding,
                                         torch_bicubic_matrix)
from dit3d_jax.models import get_model
from dit3d_jax.models.export import save_exported
from dit3d_jax.train.loop import params_from_export
from torch_vit_reference import RefViT, normalise, randomize_vit_

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(patch=4, dim=192, depth=2, heads=3, mlp_dim=384)  # "Ti" width; 16×16 frames: 4×4


@pytest.fixture(scope="module")
def reference():
    return randomize_vit_(RefViT(16, **SMALL), seed=3).eval()


@pytest.fixture(scope="module")
def state_dict(reference):
    return {k: v.detach().clone() for k, v in reference.state_dict().items()}


def _frames(n, size, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _relative_error(got, want):
    return np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want))


def test_features_match_the_pytorch_vit(reference, state_dict):
    model = infer_vit(state_dict)
    assert (model.hidden_size, model.depth, model.num_heads, model.patch_size,
            model.input_size, model.mlp_ratio) == (192, 2, 3, 4, 16, 2.0)
    params = convert_torch_vit(state_dict)
    frames = _frames(3, 16)
    with torch.no_grad():
        want = reference.features(normalise(torch.from_numpy(frames).permute(0, 3, 1, 2))).numpy()
    got = model.apply({"params": params}, frames)
    assert got.shape == (3, 17, 192)
    assert _relative_error(got, want) <= 1e-5


def test_older_mlp_key_spelling_converts_to_the_same_params(state_dict):
    old = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
           for k, v in state_dict.items()}
    assert any("linear_1" in k for k in old)
    a, b = convert_torch_vit(state_dict), convert_torch_vit(old)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("n_in,n_out", [(4, 6), (14, 4), (7, 7), (3, 8), (5, 3)])
def test_bicubic_matrix_is_pytorchs_interpolate(n_in, n_out):
    grid = np.random.default_rng(n_in * 10 + n_out).standard_normal((1, 5, n_in, n_in))
    want = F.interpolate(torch.from_numpy(grid), size=(n_out, n_out), mode="bicubic",
                         align_corners=False).numpy()
    w = torch_bicubic_matrix(n_in, n_out)
    np.testing.assert_allclose(np.einsum("ai,ncij,bj->ncab", w, grid, w), want, atol=1e-12)
    pos = np.concatenate([np.full((1, 1, 5), 7.0), grid.reshape(1, 5, -1).transpose(0, 2, 1)], 1)
    resized = resize_position_embedding(pos, n_out)
    assert resized.shape == (1, 1 + n_out ** 2, 5)
    np.testing.assert_array_equal(resized[0, 0], 7.0)  # the class position is kept
    np.testing.assert_allclose(resized[0, 1:], want.reshape(5, -1).T, atol=1e-12)


@pytest.mark.parametrize("size", [24, 12])
def test_features_match_with_a_resized_position_grid(state_dict, size):
    """A ViT at another size vs the PyTorch ViT whose grid F.interpolate resized (bicubic)."""
    grid, dim = size // SMALL["patch"], SMALL["dim"]
    pos = state_dict["encoder.pos_embedding"]
    patches = pos[:, 1:].reshape(1, 4, 4, dim).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    resized = dict(state_dict)
    resized["encoder.pos_embedding"] = torch.cat(
        [pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)], dim=1)
    reference = RefViT(size, **SMALL).eval()
    reference.load_state_dict(resized)
    model = infer_vit(state_dict).clone(input_size=size)
    params = convert_torch_vit(state_dict, model)
    assert params["pos_embedding"].shape == (1, 1 + grid * grid, dim)
    frames = _frames(2, size, seed=1)
    with torch.no_grad():
        want = reference.features(normalise(torch.from_numpy(frames).permute(0, 3, 1, 2))).numpy()
    assert _relative_error(model.apply({"params": params}, frames), want) <= 1e-5


def test_every_bad_key_is_listed(state_dict):
    bad = dict(state_dict)
    bad["encoder.layers.encoder_layer_0.extra.weight"] = torch.zeros(3)
    del bad["encoder.layers.encoder_layer_1.ln_2.bias"]
    bad["encoder.layers.encoder_layer_1.mlp.0.weight"] = torch.zeros(7, 192)
    bad["encoder.layers.encoder_layer_1.mlp.linear_2.bias"] = torch.zeros(192)
    with pytest.raises(ValueError) as err:
        convert_torch_vit(bad)
    message = str(err.value)
    assert "unknown keys: ['encoder.layers.encoder_layer_0.extra.weight']" in message
    assert "missing params: ['encoder_layer_1/ln_2/bias']" in message
    assert "encoder.layers.encoder_layer_1.mlp.0.weight: (192, 7)" in message
    assert "encoder.layers.encoder_layer_1.mlp.linear_2.bias: encoder.layers.encoder_layer_1" \
           ".mlp.3.bias already filled" in message
    with pytest.raises(ValueError, match="not a torchvision ViT"):
        convert_torch_vit({"pos_embed": torch.zeros(1, 4, 8)})
    with pytest.raises(ValueError, match=r"encoder.pos_embedding: \(1, 16, 192\)"):
        convert_torch_vit(dict(state_dict, **{"encoder.pos_embedding": torch.zeros(1, 16, 192)}),
                          infer_vit(state_dict))


def test_converted_vit_initialises_a_vit3d_through_init_from(state_dict, tmp_path):
    backbone = infer_vit(state_dict)
    params = convert_torch_vit(state_dict)
    save_exported(str(tmp_path / "vit"), backbone, params)
    video = get_model("ViT3D-Ti/4", depth=2, mlp_ratio=2.0,
                      input_size=16, num_frames=2, text_dim=8)
    out = params_from_export(str(tmp_path / "vit"), video, jax.random.key(0))
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        node = out
        for key in path:
            node = node[key.key]
        np.testing.assert_array_equal(node, leaf)
    assert "video_block_0" in out and "t_embedder" in out
    wrong = video.clone(input_size=24)
    with pytest.raises(ValueError, match="pos_embedding"):
        params_from_export(str(tmp_path / "vit"), wrong, jax.random.key(0))


def test_script_converts_and_resizes_and_refuses_bad_files(state_dict, tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(state_dict, path)
    out = tmp_path / "converted"
    done = subprocess.run([sys.executable, str(ROOT / "convert_torch_weights.py"), "--vit",
                           str(path), "--input-size", "24", "--output", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "variant: ViT-" in done.stdout and "position grid resized from 16" in done.stdout
    assert (out / "model.json").exists()
    torch.save(dict(state_dict, **{"encoder.extra": torch.zeros(2)}), path)
    bad = subprocess.run([sys.executable, str(ROOT / "convert_torch_weights.py"), "--vit",
                          str(path), "--output", str(tmp_path / "bad")],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "unknown keys: ['encoder.extra']" in bad.stderr


def test_the_vit_b_16_layout_maps_onto_vit_b_16():
    """Every key of torchvision's vit_b_16 (shapes from the issue) lands on a ViT-B/16 param of
    the transposed shape; with the skipped classifier they count 86,567,656."""
    from dit3d_jax.convert.torch_dit import _expected_shapes
    from dit3d_jax.convert.torch_vit import vit_flax_path
    d = 768
    shapes = {"conv_proj.weight": (d, 3, 16, 16), "conv_proj.bias": (d,),
              "class_token": (1, 1, d), "encoder.pos_embedding": (1, 197, d),
              "encoder.ln.weight": (d,), "encoder.ln.bias": (d,)}
    for i in range(12):
        p = f"encoder.layers.encoder_layer_{i}."
        shapes.update({p + "ln_1.weight": (d,), p + "ln_1.bias": (d,), p + "ln_2.weight": (d,),
                       p + "ln_2.bias": (d,), p + "self_attention.in_proj_weight": (3 * d, d),
                       p + "self_attention.in_proj_bias": (3 * d,),
                       p + "self_attention.out_proj.weight": (d, d),
                       p + "self_attention.out_proj.bias": (d,), p + "mlp.0.weight": (3072, d),
                       p + "mlp.0.bias": (3072,), p + "mlp.3.weight": (d, 3072),
                       p + "mlp.3.bias": (d,)})
    expected = _expected_shapes(get_model("ViT-B/16"))
    mapped = {}
    for key, shape in shapes.items():
        path = vit_flax_path(key)
        kernel = path[-1] == "kernel"
        mapped[path] = shape[2:] + shape[1::-1] if kernel and len(shape) == 4 else \
            shape[::-1] if kernel else shape
    assert mapped == expected
    assert sum(np.prod(s) for s in shapes.values()) + 768 * 1000 + 1000 == 86_567_656
