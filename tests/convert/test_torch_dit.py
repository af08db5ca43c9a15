"""The converter maps every DiT key, infers the variant, and refuses anything it cannot place."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from dit3d_jax.convert import convert_torch_state_dict, infer_model, inflate
from dit3d_jax.models import count_params, get_model, init_params
from dit3d_jax.models.export import load_exported
from torch_reference import TorchDiT, randomize_

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_state_dict():
    ref = randomize_(TorchDiT(input_size=16, patch_size=8, hidden_size=384, depth=2, num_heads=6,
                              num_classes=10, learn_sigma=False), seed=4)
    return {k: v.clone() for k, v in ref.state_dict().items()}


def test_variant_is_inferred_from_shapes(small_state_dict):
    model = infer_model(small_state_dict)
    assert (model.hidden_size, model.depth, model.num_heads, model.patch_size) == (384, 2, 6, 8)
    assert (model.input_size, model.num_classes, model.learn_sigma) == (16, 10, False)
    params = convert_torch_state_dict(small_state_dict)
    assert count_params(params) + 4 * 384 == sum(v.numel() for v in small_state_dict.values())
    # Linear (out, in) -> kernel (in, out); Conv2d (D, C, p, p) -> (p, p, C, D).
    np.testing.assert_array_equal(params["blocks_1"]["mlp"]["fc1"]["kernel"],
                                  small_state_dict["blocks.1.mlp.fc1.weight"].numpy().T)
    np.testing.assert_array_equal(params["x_embedder"]["proj"]["kernel"],
                                  small_state_dict["x_embedder.proj.weight"].numpy()
                                  .transpose(2, 3, 1, 0))


def test_scanned_model_gets_stacked_blocks_with_the_same_output(small_state_dict):
    plain = infer_model(small_state_dict)
    scanned = plain.clone(scan_blocks=True)
    params = convert_torch_state_dict(small_state_dict, scanned)
    assert params["blocks"]["mlp"]["fc2"]["kernel"].shape == (2, 1536, 384)
    x, t, y = np.ones((1, 16, 16, 4), np.float32), np.array([5.0]), np.array([3])
    np.testing.assert_allclose(
        scanned.apply({"params": params}, x, t, y),
        plain.apply({"params": convert_torch_state_dict(small_state_dict)}, x, t, y), rtol=1e-5,
        atol=1e-6)
    video = get_model("DiT3D-S/8", input_size=16, depth=2, num_classes=10, learn_sigma=False,
                      num_frames=2, text_dim=0, scan_blocks=True)
    inflated = inflate(convert_torch_state_dict(small_state_dict),
                       init_params(video, jax.random.key(0)))
    np.testing.assert_array_equal(inflated["blocks"]["attn"]["proj"]["bias"], params["blocks"]
                                  ["attn"]["proj"]["bias"])


def test_training_checkpoint_prefers_ema(small_state_dict):
    ema = {k: v + 1.0 if k != "pos_embed" else v for k, v in small_state_dict.items()}
    params = convert_torch_state_dict({"model": small_state_dict, "ema": ema, "opt": {},
                                       "args": None})
    np.testing.assert_allclose(params["final_layer"]["linear"]["bias"],
                               small_state_dict["final_layer.linear.bias"].numpy() + 1.0)


def test_every_bad_key_is_listed(small_state_dict):
    bad = dict(small_state_dict)
    bad["blocks.0.attn.extra.weight"] = torch.zeros(3)
    del bad["blocks.1.mlp.fc2.bias"]
    bad["blocks.0.mlp.fc1.weight"] = torch.zeros(7, 384)
    with pytest.raises(ValueError) as err:
        convert_torch_state_dict(bad)
    message = str(err.value)
    assert "unknown keys: ['blocks.0.attn.extra.weight']" in message
    assert "blocks_1/mlp/fc2/bias" in message
    assert "blocks.0.mlp.fc1.weight: (384, 7)" in message
    wrong_pos = dict(small_state_dict, pos_embed=small_state_dict["pos_embed"] * 2)
    with pytest.raises(ValueError, match="pos_embed"):
        convert_torch_state_dict(wrong_pos)
    with pytest.raises(ValueError, match="missing params"):
        convert_torch_state_dict(small_state_dict, get_model("DiT-S/8", input_size=16, depth=3,
                                                             num_classes=10, learn_sigma=False))


def test_inflate_refuses_mismatched_models(small_state_dict):
    params = convert_torch_state_dict(small_state_dict)
    other = get_model("DiT3D-S/8", input_size=16, depth=2, num_classes=11, learn_sigma=False,
                      num_frames=2, text_dim=0)
    with pytest.raises(ValueError, match="y_embedder/embedding_table/embedding"):
        inflate(params, init_params(other, jax.random.key(0)))


def test_script_writes_loadable_params_and_inflates(small_state_dict, tmp_path):
    ckpt = tmp_path / "dit.pt"
    torch.save({"model": small_state_dict, "ema": small_state_dict}, ckpt)
    out = tmp_path / "dit3d"
    result = subprocess.run(
        [sys.executable, str(ROOT / "convert_torch_weights.py"), "--checkpoint", str(ckpt),
         "--inflate-to", "DiT3D-S/8", "--num-frames", "3", "--text-dim", "16",
         "--output", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "tensors mapped: 32" in result.stdout and "variant: DiT-S/8 (depth 2)" in result.stdout
    assert "inflated to DiT3D-S/8" in result.stdout
    spec = json.loads((out / "model.json").read_text())
    assert spec["family"] == "DiT3D" and spec["fields"]["num_frames"] == 3
    model, params = load_exported(str(out))
    expected = convert_torch_state_dict(small_state_dict)
    np.testing.assert_array_equal(params["blocks_0"]["attn"]["qkv"]["kernel"],
                                  expected["blocks_0"]["attn"]["qkv"]["kernel"])
    assert "temporal_attn" in params["blocks_0"] and "blocks_2" not in params
    assert params["null_text_embedding"].shape == (16,)
    x = np.zeros((1, 3, 16, 16, 4), np.float32)
    assert model.apply({"params": params}, x, np.zeros(1), np.array([2])).shape == x.shape

    again = subprocess.run([sys.executable, str(ROOT / "convert_torch_weights.py"),
                            "--checkpoint", str(ckpt), "--output", str(out)],
                           capture_output=True, text=True, cwd=ROOT)
    assert again.returncode != 0 and "already holds params" in again.stderr
    missing = subprocess.run([sys.executable, str(ROOT / "convert_torch_weights.py"),
                              "--checkpoint", str(tmp_path / "nope.pt"), "--output",
                              str(tmp_path / "x")], capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_inflate_and_stack_blocks_accept_boxed_params():
    """A plain `model.init` returns nn.Partitioned leaves; inflate and stack_blocks unbox them
    (here into a scanned DiT3D, so inflate also stacks the boxed image blocks)."""
    import flax.linen as nn
    from dit3d_jax.models import init_boxed
    from dit3d_jax.models.dit import stack_blocks
    small = dict(input_size=16, depth=2, num_classes=10, hidden_size=32, num_heads=2)
    image = get_model("DiT-S/8", **small)
    video = get_model("DiT3D-S/8", **small, num_frames=2, text_dim=8, scan_blocks=True)
    boxed_image = jax.jit(lambda key: init_boxed(image, key))(jax.random.key(0))
    boxed_video = jax.jit(lambda key: init_boxed(video, key))(jax.random.key(1))
    assert any(isinstance(leaf, nn.Partitioned) for leaf in jax.tree_util.tree_leaves(
        boxed_image, is_leaf=lambda x: isinstance(x, nn.Partitioned)))
    got = inflate(boxed_image, boxed_video)
    want = inflate(nn.unbox(boxed_image), nn.unbox(boxed_video))
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert not isinstance(a, nn.Partitioned)
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got["final_layer"]["linear"]["kernel"],
                                  nn.unbox(boxed_image)["final_layer"]["linear"]["kernel"])
    stacked = stack_blocks(boxed_image, 2)
    plain = stack_blocks(nn.unbox(boxed_image), 2)
    assert jax.tree_util.tree_structure(stacked) == jax.tree_util.tree_structure(plain)
    assert stacked["blocks"]["mlp"]["fc1"]["kernel"].shape == (2, 32, 128)
