"""ViT3D: freshly initialised video layers leave the ViT's features untouched; once they are
non-zero, frames and text mix; the freeze partition freezes the ViT; bad input is refused."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit3d_jax.models import dummy_inputs, get_model, init_params
from dit3d_jax.train.optim import FROZEN, freeze_labels, path_str

F, TEXT_DIM = 3, 8
SMALL = dict(depth=2, hidden_size=32, num_heads=2, input_size=16, num_frames=F,
             text_dim=TEXT_DIM, num_classes=5)


@pytest.fixture(scope="module")
def setup():
    model = get_model("ViT3D-Ti/8", **SMALL)
    backbone = model.backbone_model()
    fresh = init_params(model, jax.random.key(0))
    backbone_paths = {p for p, _ in jax.tree_util.tree_flatten_with_path(
        init_params(backbone, jax.random.key(0)))[0]}
    keys = iter(jax.random.split(jax.random.key(1), 1000))
    # The backbone and the head random and non-zero; the video layers as freshly initialised.
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.1 * jax.random.normal(next(keys), v.shape)
        if p in backbone_paths or "final_layer" in jax.tree_util.keystr(p) else v, fresh)
    return model, backbone, backbone_paths, params


def _inputs(seed=0, b=2):
    k = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.uniform(k[0], (b, F, 16, 16, 3), minval=-1, maxval=1)
    text = jax.random.normal(k[1], (b, 4, TEXT_DIM))
    mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)[:b]
    return x, jnp.array([10.0, 500.0][:b]), jnp.array([1, 4][:b]), text, mask


def _only_backbone(params, backbone_paths):
    flat = {p: v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
            if p in backbone_paths}
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key.key, {})
        node[path[-1].key] = value
    return tree


def test_fresh_video_layers_pass_the_vit_features_to_the_head(setup):
    model, backbone, backbone_paths, params = setup
    x, t, y, text, mask = _inputs()
    out, state = model.apply({"params": params}, x, t, y, text=text, text_mask=mask,
                             mutable=["intermediates"])
    head_input = np.asarray(state["intermediates"]["head_input"][0])
    per_frame = backbone.apply({"params": _only_backbone(params, backbone_paths)},
                               x.reshape(-1, 16, 16, 3))
    want = np.asarray(per_frame)[:, 1:]  # the patch tokens; the class token is dropped
    assert head_input.shape == want.shape == (2 * F, 4, 32)
    assert np.max(np.abs(head_input - want)) <= 1e-5 * np.max(np.abs(want))
    # Fresh temporal attention and the identity 3-D convolution: frames stay independent.
    moved = model.apply({"params": params}, x.at[:, 0].add(0.5), t, y, text=text, text_mask=mask)
    assert out.shape == (2, F, 16, 16, 6)
    np.testing.assert_allclose(np.asarray(moved[:, -1]), np.asarray(out[:, -1]), atol=1e-6)
    assert np.abs(np.asarray(moved[:, 0]) - np.asarray(out[:, 0])).max() > 1e-3


def test_identity_conv_and_zero_gates_are_the_init():
    model = get_model("ViT3D-Ti/8", **SMALL)
    params = init_params(model, jax.random.key(2))
    kernel = np.asarray(params["smooth"]["kernel"])
    assert kernel.shape == (3, 3, 3, 6, 6)
    np.testing.assert_array_equal(kernel[1, 1, 1], np.eye(6))
    assert np.abs(kernel).sum() == 6 and not np.any(params["smooth"]["bias"])
    for i in range(2):
        block = params[f"video_block_{i}"]
        assert not np.any(block["temporal_attn"]["proj"]["kernel"])
        assert not np.any(block["cross_attn"]["proj"]["kernel"])
    assert not np.any(params["text_pool"]["kernel"])


def test_nonzero_video_layers_mix_frames_and_read_the_text(setup):
    model, _, backbone_paths, params = setup
    keys = iter(jax.random.split(jax.random.key(4), 1000))
    mixed = jax.tree_util.tree_map_with_path(
        lambda p, v: v if p in backbone_paths else v + 0.1 * jax.random.normal(next(keys), v.shape),
        params)
    x, t, y, text, mask = _inputs()
    base = np.asarray(model.apply({"params": mixed}, x, t, y, text=text, text_mask=mask))
    moved = np.asarray(model.apply({"params": mixed}, x.at[:, 0].add(0.5), t, y, text=text,
                                   text_mask=mask))
    assert np.abs(moved[:, -1] - base[:, -1]).max() > 1e-3  # frame 0 reaches the last frame
    other = np.asarray(model.apply({"params": mixed}, x, t, y, text=text + 1.0, text_mask=mask))
    assert np.abs(other - base).max() > 1e-3
    padded = np.asarray(model.apply({"params": mixed}, x, t, y, text=text.at[0, 2:].set(50.0),
                                    text_mask=mask))
    np.testing.assert_allclose(padded, base, atol=1e-5)  # padding tokens are masked out
    # CFG's unconditional rows: force_drop is the null label and the null caption.
    dropped = model.apply({"params": mixed}, x, t, y, text=text, text_mask=mask,
                          force_drop=jnp.array([True, False]))
    uncond = model.apply({"params": mixed}, x, t)
    np.testing.assert_allclose(np.asarray(dropped[0]), np.asarray(uncond[0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(dropped[1]), base[1], atol=1e-5)


def test_freeze_backbone_freezes_exactly_the_vit(setup):
    model, _, backbone_paths, _ = setup
    labels = freeze_labels(model, "backbone")
    frozen = {path_str(p) for p, label in jax.tree_util.tree_flatten_with_path(labels)[0]
              if label == FROZEN}
    assert frozen == {path_str(p) for p in backbone_paths}
    assert "conv_proj/kernel" in frozen and "encoder_layer_1/mlp_3/kernel" in frozen
    assert "pos_embedding" in frozen and "t_embedder/mlp_0/kernel" not in frozen


def test_bad_input_is_refused_with_one_clear_error():
    with pytest.raises(ValueError, match="in_channels: the ViT backbone takes RGB frames, "
                                         "expected 3, got 4"):
        get_model("ViT3D-Ti/8", **dict(SMALL, in_channels=4))
    with pytest.raises(ValueError, match="input_size 20 is not divisible by patch_size 8"):
        get_model("ViT3D-Ti/8", **dict(SMALL, input_size=20))
    with pytest.raises(ValueError, match="scan_blocks"):
        get_model("ViT3D-Ti/8", **dict(SMALL, scan_blocks=True))
    with pytest.raises(ValueError, match="unknown model name 'ViT3D-XL/16'"):
        get_model("ViT3D-XL/16")
    model = get_model("ViT3D-Ti/8", **SMALL)
    params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0),
                                                        **dummy_inputs(model))["params"]))
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    t = jnp.zeros((1,))
    with pytest.raises(ValueError, match=r"x: expected 3 frames \(num_frames\), got 4"):
        model.apply({"params": zeros}, jnp.zeros((1, 4, 16, 16, 3)), t)
    with pytest.raises(ValueError, match=r"x: expected 3 channels \(RGB, channels last\), got 4"):
        model.apply({"params": zeros}, jnp.zeros((1, F, 16, 16, 4)), t)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 3, 16, 16, 3\)"):
        model.apply({"params": zeros}, jnp.zeros((1, F, 8, 8, 3)), t)
