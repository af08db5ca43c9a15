"""The optimizer against a float64 NumPy AdamW; the freeze partition against the model family."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dit3d_jax.models import get_model, param_shapes
from dit3d_jax.train import optim

TINY = dict(depth=2, input_size=16, num_frames=2, hidden_size=64, num_heads=4, text_dim=16,
            num_classes=10)


def optim_config(**overrides):
    c = ml_collections.ConfigDict(dict(lr=1e-2, weight_decay=0.1, b1=0.9, b2=0.99, warmup_steps=4,
                                       grad_clip=1.0, accum_steps=1, freeze="none"))
    c.update(overrides)
    return c


def ref_adamw(params, grads_seq, lr, warmup, b1, b2, wd, clip, eps=1e-8):
    """Decoupled AdamW (Loshchilov & Hutter) with linear warm-up and global-norm clipping."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for step, grads in enumerate(grads_seq):
        g = {k: np.asarray(x, np.float64) for k, x in grads.items()}
        norm = np.sqrt(sum(np.sum(x ** 2) for x in g.values()))
        if clip > 0 and norm > clip:
            g = {k: x * clip / norm for k, x in g.items()}
        rate = lr * min((step + 1) / warmup, 1.0) if warmup else lr
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            m_hat = m[k] / (1 - b1 ** (step + 1))
            v_hat = v[k] / (1 - b2 ** (step + 1))
            p[k] = p[k] - rate * (m_hat / (np.sqrt(v_hat) + eps) + wd * p[k])
    return p


def run(tx, labels, params, grads_seq):
    state = tx.init(params)
    for g in grads_seq:
        updates, state = tx.update(g, state, params)
        params = optim.apply_updates(params, updates, labels)
    return params, state


def small_problem(n_steps=6, seed=0):
    rng = np.random.default_rng(seed)
    params = {"a": rng.normal(size=(3, 4)).astype(np.float32),
              "b": rng.normal(size=(5,)).astype(np.float32)}
    grads = [{k: (rng.normal(size=x.shape) * 0.7).astype(np.float32) for k, x in params.items()}
             for _ in range(n_steps)]
    return params, grads


def test_warmup_is_linear_then_constant():
    schedule = optim.make_schedule(optim_config(lr=2e-3, warmup_steps=10))
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 4, 9, 10, 20)],
                               [2e-4, 1e-3, 2e-3, 2e-3, 2e-3], rtol=1e-6)
    assert float(optim.make_schedule(optim_config(warmup_steps=0))(0)) == pytest.approx(1e-2)


def test_adamw_with_clip_and_warmup_matches_reference():
    params, grads = small_problem()
    cfg = optim_config()
    labels = {"a": optim.TRAINABLE, "b": optim.TRAINABLE}
    got, _ = run(optim.make_optimizer(cfg, labels), labels, params, grads)
    want = ref_adamw(params, grads, 1e-2, 4, 0.9, 0.99, 0.1, 1.0)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    # The clip mattered: the gradients' norm exceeds 1.
    assert float(optim.global_norm(list(grads[0].values()))) > 1.0


def test_accumulation_equals_one_step_on_the_mean_gradient():
    params, grads = small_problem(4)
    labels = {"a": optim.TRAINABLE, "b": optim.TRAINABLE}
    tx = optim.make_optimizer(optim_config(accum_steps=2, warmup_steps=0), labels)
    state = tx.init(params)
    p = params
    applied = []
    for g in grads:
        updates, state = tx.update(g, state, p)
        p = optim.apply_updates(p, updates, labels)
        applied.append(bool(optim.update_applied(state)))
    assert applied == [False, True, False, True]
    assert int(optim.applied_updates(state)) == 2
    means = [{k: (grads[i][k] + grads[i + 1][k]) / 2 for k in params} for i in (0, 2)]
    want = ref_adamw(params, means, 1e-2, 0, 0.9, 0.99, 0.1, 1.0)
    for k in params:
        np.testing.assert_allclose(p[k], want[k], rtol=1e-5, atol=1e-6)


def test_frozen_leaves_are_untouched_and_have_no_moments():
    params, grads = small_problem(3)
    labels = {"a": optim.FROZEN, "b": optim.TRAINABLE}
    got, state = run(optim.make_optimizer(optim_config(), labels), labels, params, grads)
    assert np.array_equal(got["a"], params["a"])
    adam = [s for s in jax.tree_util.tree_leaves(
        state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)]
    assert len(adam) == 1
    assert [x.shape for x in jax.tree_util.tree_leaves(adam[0].mu)] == [(5,)]
    assert [x.shape for x in jax.tree_util.tree_leaves(adam[0].nu)] == [(5,)]
    # The trainable leaf follows AdamW on its own gradients (clipping sees only trainable ones).
    want = ref_adamw({"b": params["b"]}, [{"b": g["b"]} for g in grads], 1e-2, 4, 0.9, 0.99,
                     0.1, 1.0)
    np.testing.assert_allclose(got["b"], want["b"], rtol=1e-5, atol=1e-6)


def _paths(tree):
    return {optim.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_backbone_labels_are_the_image_dit_params():
    video = get_model("DiT3D-S/8", **TINY)
    labels = optim.freeze_labels(video, "backbone")
    flat = {optim.path_str(p): label
            for p, label in jax.tree_util.tree_flatten_with_path(labels)[0]}
    image_kwargs = {k: v for k, v in TINY.items() if k not in ("num_frames", "text_dim")}
    image_paths = _paths(param_shapes(get_model("DiT-S/8", **image_kwargs)))
    assert {p for p, label in flat.items() if label == optim.FROZEN} == image_paths
    trainable = {p for p, label in flat.items() if label == optim.TRAINABLE}
    # The rule-of-thumb reading: video layers are temporal_*, cross_attn, text_*, null text.
    video_names = ("temporal_", "cross_attn", "text_", "null_text_embedding")
    assert trainable == {p for p in flat if any(n in p for n in video_names)}
    assert trainable


def test_regex_and_bad_freeze_values():
    video = get_model("DiT3D-S/8", **TINY)
    labels = optim.freeze_labels(video, r"^blocks_0/")
    flat = {optim.path_str(p): label
            for p, label in jax.tree_util.tree_flatten_with_path(labels)[0]}
    assert all((label == optim.FROZEN) == p.startswith("blocks_0/") for p, label in flat.items())
    assert set(jax.tree_util.tree_leaves(optim.freeze_labels(video, "none"))) == {optim.TRAINABLE}
    with pytest.raises(ValueError, match="optim.freeze.*matches no parameter"):
        optim.freeze_labels(video, "no_such_layer")
    with pytest.raises(ValueError, match="optim.freeze.*valid regex"):
        optim.freeze_labels(video, "blocks_(")
    with pytest.raises(ValueError, match="optim.freeze.*image"):
        optim.freeze_labels(get_model("DiT-S/8", depth=1, input_size=16, hidden_size=64,
                                      num_heads=4), "backbone")
    with pytest.raises(ValueError, match="optim.freeze.*every parameter"):
        optim.freeze_labels(video, ".")
    with pytest.raises(ValueError, match="optim.accum_steps"):
        optim.make_optimizer(optim_config(accum_steps=0), {"a": optim.TRAINABLE})
