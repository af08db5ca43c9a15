"""DiT3D: inflated from DiT it is DiT frame by frame; its video and text layers really mix."""
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from dit3d_jax.convert import inflate
from dit3d_jax.models import DiT3D, get_model, init_params
from dit3d_jax.models.dit import stack_blocks

SMALL = dict(depth=3, input_size=8, num_classes=7)
F, TEXT_DIM = 4, 12


@pytest.fixture(scope="module")
def models():
    image = get_model("DiT-S/4", **SMALL)
    video = get_model("DiT3D-S/4", num_frames=F, text_dim=TEXT_DIM, **SMALL)
    image_params = init_params(image, jax.random.key(0))
    flat, unravel = jax.flatten_util.ravel_pytree(image_params)  # all weights non-zero
    image_params = unravel(flat + 0.05 * jax.random.normal(jax.random.key(1), flat.shape))
    video_params = inflate(image_params, init_params(video, jax.random.key(2)))
    return image, video, image_params, video_params


def _inputs(seed, b=2):
    k = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k[0], (b, F, 8, 8, 4))
    text = jax.random.normal(k[1], (b, 5, TEXT_DIM))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]][:b], bool)
    return x, jnp.array([3.0, 700.0][:b]), jnp.array([1, 6][:b]), text, mask


def _perturb_video_layers(video_params, image_params, scale=0.1):
    """Makes every DiT3D-only leaf (temporal, cross-attention, text) random and non-zero."""
    image_paths = {p for p, _ in jax.tree_util.tree_flatten_with_path(image_params)[0]}
    keys = iter(jax.random.split(jax.random.key(3), 1000))
    return jax.tree_util.tree_map_with_path(
        lambda p, v: v if p in image_paths else v + scale * jax.random.normal(next(keys), v.shape),
        video_params)


def test_inflated_dit3d_equals_dit_frame_by_frame(models):
    image, video, image_params, video_params = models
    x, t, y, text, mask = _inputs(0)
    out = video.apply({"params": video_params}, x, t, y, text=text, text_mask=mask)
    per_frame = image.apply({"params": image_params}, x.reshape(-1, 8, 8, 4),
                            jnp.repeat(t, F), jnp.repeat(y, F))
    expected = np.asarray(per_frame).reshape(2, F, 8, 8, 8)
    assert out.shape == (2, F, 8, 8, 8)
    assert np.max(np.abs(np.asarray(out) - expected)) <= 1e-5 * np.max(np.abs(expected))


def test_temporal_attention_mixes_frames_and_text_changes_the_output(models):
    image, video, image_params, video_params = models
    params = _perturb_video_layers(video_params, image_params)
    x, t, y, text, mask = _inputs(0)
    base = np.asarray(video.apply({"params": params}, x, t, y, text=text, text_mask=mask))
    x2 = x.at[:, 0].add(1.0)  # change only frame 0
    moved = np.asarray(video.apply({"params": params}, x2, t, y, text=text, text_mask=mask))
    assert np.abs(moved[:, -1] - base[:, -1]).max() > 1e-3
    other_text = text + jax.random.normal(jax.random.key(9), text.shape)
    changed = np.asarray(video.apply({"params": params}, x, t, y, text=other_text,
                                     text_mask=mask))
    assert np.abs(changed - base).max() > 1e-3
    # Padding tokens are masked out: changing them changes nothing.
    padded = text.at[0, 3:].set(100.0)
    same = np.asarray(video.apply({"params": params}, x, t, y, text=padded, text_mask=mask))
    np.testing.assert_allclose(same, base, atol=1e-5)
    # With the temporal output projections back at zero, frame 0 cannot reach the last frame.
    no_time = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.zeros_like(v) if "temporal_attn" in jax.tree_util.keystr(p)
        and "proj" in jax.tree_util.keystr(p) else v, params)
    a = video.apply({"params": no_time}, x, t, y, text=text, text_mask=mask)
    b = video.apply({"params": no_time}, x2, t, y, text=text, text_mask=mask)
    np.testing.assert_allclose(np.asarray(a[:, -1]), np.asarray(b[:, -1]), atol=1e-6)


def test_temporal_every_places_temporal_attention_in_every_kth_block():
    model = get_model("DiT3D-S/8", depth=5, input_size=16, num_frames=2, text_dim=0,
                      temporal_every=2)
    params = init_params(model, jax.random.key(0))
    with_temporal = [i for i in range(5) if "temporal_attn" in params[f"blocks_{i}"]]
    assert with_temporal == [0, 2, 4]
    assert not any("cross_attn" in params[f"blocks_{i}"] for i in range(5))


def test_null_text_embedding_is_a_param_with_gradient_when_text_dropped(models):
    image, video, image_params, video_params = models
    params = _perturb_video_layers(video_params, image_params)
    assert params["null_text_embedding"].shape == (TEXT_DIM,)
    x, t, y, text, mask = _inputs(1)

    def loss(p, drop):
        out = video.apply({"params": p}, x, t, y, text=text, text_mask=mask, force_drop=drop)
        return jnp.mean(out ** 2)
    dropped = jax.grad(loss)(params, jnp.array([True, False]))
    kept = jax.grad(loss)(params, jnp.array([False, False]))
    assert np.abs(np.asarray(dropped["null_text_embedding"])).max() > 1e-6
    assert np.abs(np.asarray(kept["null_text_embedding"])).max() == 0.0
    # The dropped row ignores its text entirely.
    a = video.apply({"params": params}, x, t, y, text=text, text_mask=mask,
                    force_drop=jnp.array([True, False]))
    b = video.apply({"params": params}, x, t, y, text=-text, text_mask=mask,
                    force_drop=jnp.array([True, False]))
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), atol=1e-6)


def test_text_dropout_during_training_uses_the_dropout_rng(models):
    image, video, image_params, video_params = models
    params = _perturb_video_layers(video_params, image_params)
    x, t, y, text, mask = _inputs(2)
    always = video.clone(text_dropout_prob=1.0, class_dropout_prob=1.0)
    out = always.apply({"params": params}, x, t, y, text=text, text_mask=mask, train=True,
                       rngs={"dropout": jax.random.key(0)})
    null = video.apply({"params": params}, x, t, y, text=text, text_mask=mask,
                       force_drop=jnp.ones(2, bool))
    np.testing.assert_allclose(np.asarray(out), np.asarray(null), atol=1e-6)


def test_dit3d_bad_inputs_raise_one_clear_error(models):
    _, video, _, params = models
    x, t, y, text, mask = _inputs(0)
    cases = [(dict(x=x[:, :3]), "expected 4 frames"),
             (dict(x=x[..., :3]), "x: expected shape"),
             (dict(x=x[0]), "x: expected shape"),
             (dict(text=text[..., :5]), r"text: expected shape \(2, L, 12\)"),
             (dict(text_mask=mask[:, :3]), "text_mask: expected shape"),
             (dict(y=jnp.array([0, 7])), r"y: labels must be in \[0, 7\)")]
    for change, message in cases:
        args = {**dict(x=x, t=t, y=y, text=text, text_mask=mask), **change}
        with pytest.raises(ValueError, match=message):
            video.apply({"params": params}, args.pop("x"), args.pop("t"), **args)


def test_bf16_compute_tracks_float32_and_returns_float32(models):
    image, video, image_params, video_params = models
    params = _perturb_video_layers(video_params, image_params)
    x, t, y, text, mask = _inputs(3)
    ref = np.asarray(video.apply({"params": params}, x, t, y, text=text, text_mask=mask))
    low = video.clone(dtype=jnp.bfloat16).apply({"params": params}, x, t, y, text=text,
                                                text_mask=mask)
    assert low.dtype == jnp.float32  # params stay float32, the output is cast back
    err = np.linalg.norm(np.asarray(low) - ref) / np.linalg.norm(ref)
    assert err < 3e-2  # bf16 has an 8-bit mantissa; a dtype bug gives O(1) error
    grads = jax.grad(lambda p: jnp.mean(video.clone(dtype=jnp.bfloat16).apply(
        {"params": p}, x, t, y, text=text, text_mask=mask) ** 2))(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("remat", ["none", "dots"])
def test_scanned_blocks_equal_unrolled_blocks(models, remat):
    image, video, image_params, video_params = models
    params = _perturb_video_layers(video_params, image_params)
    scanned = video.clone(scan_blocks=True, remat=remat)
    stacked = stack_blocks(params, video.depth)
    assert stacked["blocks"]["attn"]["qkv"]["kernel"].shape == (3, 384, 1152)
    x, t, y, text, mask = _inputs(4)

    def loss(model, p):
        return jnp.mean(model.apply({"params": p}, x, t, y, text=text, text_mask=mask) ** 2)
    np.testing.assert_allclose(loss(scanned, stacked), loss(video, params), rtol=1e-5)
    g_ref = stack_blocks(jax.grad(lambda p: loss(video, p))(params), video.depth)
    g = jax.grad(lambda p: loss(scanned, p))(stacked)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="every block must be alike"):
        init_params(video.clone(scan_blocks=True, temporal_every=2), jax.random.key(0))


def test_cfg_drop_rates_give_the_unconditional_branch_its_joint_share(models):
    """Joint drop with p_j, else label and text each with their own p: P(both) = p_j +
    (1 - p_j)·p_c·p_t, P(label) = p_j + (1 - p_j)·p_c, P(text) = p_j + (1 - p_j)·p_t."""
    _, video, _, params = models
    assert (video.class_dropout_prob, video.text_dropout_prob,
            video.joint_dropout_prob) == (0.1, 0.1, 0.1)
    n = 200_000
    label, text = video.apply({"params": params}, n, None, True, method=DiT3D.condition_drops,
                              rngs={"dropout": jax.random.key(5)})
    label, text = np.asarray(label), np.asarray(text)
    rates = dict(both=np.mean(label & text), label=label.mean(), text=text.mean(),
                 label_only=np.mean(label & ~text), none=np.mean(~label & ~text))
    expected = dict(both=0.1 + 0.9 * 0.01, label=0.1 + 0.9 * 0.1, text=0.1 + 0.9 * 0.1,
                    label_only=0.9 * 0.1 * 0.9, none=0.9 * 0.9 * 0.9)
    for name, value in expected.items():  # binomial std at n=200k is <= 0.0011
        assert abs(rates[name] - value) < 0.005, (name, rates[name], value)
    # Rows with force_drop drop both whatever the draw; without train nothing else drops.
    forced = jnp.arange(8) % 3 == 0
    label, text = video.apply({"params": params}, 8, forced, False, method=DiT3D.condition_drops)
    np.testing.assert_array_equal(label, forced)
    np.testing.assert_array_equal(text, forced)
    # A model with labels only ignores the joint draw: labels drop with class_dropout_prob alone.
    only_labels = video.clone(text_dim=0)
    label, text = only_labels.apply({"params": init_params(only_labels, jax.random.key(0))}, n,
                                    None, True, method=DiT3D.condition_drops,
                                    rngs={"dropout": jax.random.key(6)})
    assert text is None and abs(np.mean(label) - 0.1) < 0.005


def test_joint_drop_during_training_is_the_unconditional_branch(models):
    image, video, image_params, video_params = models
    params = _perturb_video_layers(video_params, image_params)
    x, t, y, text, mask = _inputs(2)
    joint = video.clone(text_dropout_prob=0.0, class_dropout_prob=0.1, joint_dropout_prob=1.0)
    out = joint.apply({"params": params}, x, t, y, text=text, text_mask=mask, train=True,
                      rngs={"dropout": jax.random.key(0)})
    null = video.apply({"params": params}, x, t, y, text=text, text_mask=mask,
                       force_drop=jnp.ones(2, bool))
    np.testing.assert_allclose(np.asarray(out), np.asarray(null), atol=1e-6)


def test_all_false_text_mask_row_is_the_null_text(models):
    image, video, image_params, video_params = models
    params = _perturb_video_layers(video_params, image_params)
    x, t, _, text, mask = _inputs(7)
    empty = mask.at[0].set(False)
    # y=None: every row uses the null class, so force_drop changes only the text.
    got = video.apply({"params": params}, x, t, text=text, text_mask=empty)
    want = video.apply({"params": params}, x, t, text=text, text_mask=empty,
                       force_drop=jnp.array([True, False]))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    # ... and the label of such a row still counts (only the text is nulled).
    y = jnp.array([1, 6])
    with_label = video.apply({"params": params}, x, t, y, text=text, text_mask=empty)
    assert np.abs(np.asarray(with_label[0]) - np.asarray(got[0])).max() > 1e-3
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(video.apply(
        {"params": params}, x, t, text=text, text_mask=mask)[1]), atol=1e-6)


def test_bf16_residual_stream_stays_float32():
    """The blocks compute in bf16 but add into a float32 residual stream (PyTorch autocast's
    arrangement); a bf16 stream rounds every addition (docs/performance.md)."""
    model = get_model("DiT3D-S/4", depth=1, input_size=8, hidden_size=32, num_heads=2,
                      num_frames=2, text_dim=8, num_classes=3, dtype=jnp.bfloat16)
    params = init_params(model, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (1, 2, 8, 8, 4))
    args = (x, jnp.array([500.0]), jnp.array([1]))
    _, state = jax.jit(lambda p: model.apply({"params": p}, *args, text=jnp.ones((1, 3, 8)),
                                             capture_intermediates=True,
                                             mutable=["intermediates"]))(params)
    inter = state["intermediates"]
    (out,) = inter["blocks_0"]["__call__"]
    assert out.dtype == jnp.float32
    assert inter["blocks_0"]["attn"]["__call__"][0].dtype == jnp.bfloat16  # branches in bf16


def test_frame_embedding_starts_at_zero_then_tells_frames_apart(models):
    image, video, image_params, video_params = models
    framed = get_model("DiT3D-S/4", num_frames=F, text_dim=TEXT_DIM, frame_embedding=True, **SMALL)
    params = inflate(image_params, init_params(framed, jax.random.key(2)))
    assert params["frame_embed"].shape == (F, 384) and not np.any(params["frame_embed"])
    x, t, y, text, mask = _inputs(0)
    x = jnp.broadcast_to(x[:, :1], x.shape)  # every frame the same
    kw = dict(text=text, text_mask=mask)
    out = np.asarray(framed.apply({"params": params}, x, t, y, **kw))
    # At zero: the model without the embedding, whose frames (all equal) give equal outputs.
    np.testing.assert_allclose(out, video.apply({"params": video_params}, x, t, y, **kw),
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(out[:, 1:], np.broadcast_to(out[:, :1], out[:, 1:].shape),
                               rtol=0, atol=1e-5)
    # Non-zero: equal frames in, frame-dependent outputs out (no temporal layer needed for it).
    embed = 0.5 * jax.random.normal(jax.random.key(4), params["frame_embed"].shape)
    moved = np.asarray(framed.apply({"params": {**params, "frame_embed": embed}}, x, t, y, **kw))
    assert np.min(np.abs(moved[:, 1:] - moved[:, :1]).max(axis=(2, 3, 4))) > 1e-3


def test_vit3d_refuses_frame_embedding():
    model = get_model("ViT3D-Ti/4", input_size=8, num_frames=2, text_dim=0, num_classes=0,
                      depth=1, frame_embedding=True)
    with pytest.raises(ValueError, match="frame_embedding: expected False for ViT3D"):
        init_params(model, jax.random.key(0))
