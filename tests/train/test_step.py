"""The jitted train step on one device: freezing, EMA, NaN guard, metrics, determinism.

One step function is compiled for the module (tiny DiT3D, backbone frozen, importance sampling on)
and every test starts from a host copy of the same initial state. The sharded step is checked
against this single-device step in test_sharding.py.
"""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dit3d_jax.diffusion import importance
from dit3d_jax.diffusion.gaussian import create_gaussian_diffusion
from dit3d_jax.models import get_model, init_params
from dit3d_jax.train import create_train_state, make_mesh, make_train_step, shard_batch
from dit3d_jax.train.config import default_config
from dit3d_jax.train import optim
from dit3d_jax.train.step import compute_dtype, cpu_has_fast_bf16, model_inputs

B = 4


def tiny_config(**optim_overrides) -> ml_collections.ConfigDict:
    """default_config() shrunk to a 1-block DiT3D (temporal + cross-attention) on 2×16×16×4
    clips, float32 compute."""
    c = default_config()
    c.model.name = "DiT3D/8"
    c.model.kwargs = ml_collections.ConfigDict(dict(
        num_frames=2, input_size=16, in_channels=4, text_dim=16, num_classes=10,
        learn_sigma=True, temporal_every=1, attn_impl="xla", depth=1, hidden_size=64,
        num_heads=4))
    c.compute_dtype = "float32"
    c.objective.num_timesteps = 1000
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 2
    c.optim.grad_clip = 1.0
    c.ema_decay = 0.9
    c.importance.uniform_prob = 0.0   # lets a test plant a one-bin distribution
    c.mesh.data, c.mesh.fsdp = 1, 1
    c.data.global_batch_size = B
    c.optim.update(optim_overrides)
    return c


def build(config):
    model = get_model(config.model.name, **config.model.kwargs)
    objective = create_gaussian_diffusion(config.objective.num_timesteps,
                                          learn_sigma=model.learn_sigma)
    return model, objective


def perturbed_params(model, seed=0):
    """Init params plus noise: zero-initialised layers (final linear, attention outputs) would
    otherwise give the video layers exactly zero gradients."""
    params = init_params(model, jax.random.key(seed))

    @jax.jit
    def perturb(params, key):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(key, len(leaves))
        return jax.tree_util.tree_unflatten(
            treedef, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])

    return perturb(params, jax.random.key(seed + 1))


def host_batch(seed=0, nan=False, batch=B):
    rng = np.random.default_rng(seed)
    video = rng.uniform(-1, 1, (batch, 2, 16, 16, 4)).astype(np.float32)
    if nan:
        video[1, 0, 3, 3, 0] = np.nan
    return dict(video=video, label=rng.integers(0, 10, batch).astype(np.int32),
                text_emb=rng.normal(size=(batch, 3, 16)).astype(np.float32),
                text_mask=np.array([[True, True, False]] * batch), caption=np.array(["a"] * batch))


def to_host(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def to_host_copy(tree):
    """Fresh host buffers (the step donates its input state)."""
    return jax.tree_util.tree_map(np.array, tree)


def assert_trees_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def setup():
    config = tiny_config(freeze="backbone")
    model, objective = build(config)
    mesh = make_mesh(config.mesh)
    state, sharding = create_train_state(config, model, objective, mesh, jax.random.key(0),
                                         params=perturbed_params(model))
    # Compiled once for the module (LLVM optimisation off: same program, half the compile time).
    step = make_train_step(config, model, objective, mesh, sharding).lower(
        state, shard_batch(mesh, host_batch())).compile({"xla_backend_optimization_level": 0})
    labels = optim.freeze_labels(model, "backbone")
    initial = to_host(state)
    return dict(config=config, model=model, objective=objective, mesh=mesh, step=step,
                labels=labels, initial=initial,
                fresh=lambda: jax.device_put(to_host_copy(initial), sharding))


def split_by_label(tree, labels, skip_null_text=False):
    """(frozen leaves, trainable leaves) as NumPy. skip_null_text: leave out the learned null
    caption, which gets a gradient only when a caption is dropped (rare in a batch of 4)."""
    frozen, trainable = [], []
    flat = jax.tree_util.tree_flatten_with_path(labels)[0]
    for (path, label), leaf in zip(flat, jax.tree_util.tree_leaves(tree)):
        if skip_null_text and optim.path_str(path) == "null_text_embedding":
            continue
        (frozen if label == optim.FROZEN else trainable).append(np.asarray(leaf))
    return frozen, trainable


def test_frozen_backbone_is_bit_identical_and_video_layers_train(setup):
    state, s = setup["fresh"](), setup
    initial = s["initial"]
    state, m1 = s["step"](state, shard_batch(s["mesh"], host_batch(0)))
    after_one = to_host(state)
    state, m2 = s["step"](state, shard_batch(s["mesh"], host_batch(1)))
    final = to_host(state)
    assert float(m1["grad_norm"]) > 0 and float(m2["skipped"]) == 0
    for tree in ("params", "ema_params"):
        frozen0, train0 = split_by_label(getattr(initial, tree), s["labels"], True)
        frozen2, train2 = split_by_label(getattr(final, tree), s["labels"], True)
        for a, b in zip(frozen0, frozen2):
            np.testing.assert_array_equal(a, b)
        assert all(not np.array_equal(a, b) for a, b in zip(train0, train2))
    # EMA after the first update: 0.9·ema0 + 0.1·params1 on the trainable leaves.
    _, ema0 = split_by_label(initial.ema_params, s["labels"])
    _, p1 = split_by_label(after_one.params, s["labels"])
    _, ema1 = split_by_label(after_one.ema_params, s["labels"])
    for e0, p, e1 in zip(ema0, p1, ema1):
        np.testing.assert_allclose(e1, 0.9 * e0.astype(np.float64) + 0.1 * p, rtol=1e-6,
                                   atol=1e-7)
    # Adam moments exist only for the trainable leaves.
    n_trainable = sum(label == optim.TRAINABLE for label in jax.tree_util.tree_leaves(s["labels"]))
    n_all = len(jax.tree_util.tree_leaves(s["labels"]))
    adam = [x for x in jax.tree_util.tree_leaves(
        final.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(x, optax.ScaleByAdamState)]
    assert len(adam) == 1
    assert len(jax.tree_util.tree_leaves(adam[0].mu)) == n_trainable < n_all
    assert len(jax.tree_util.tree_leaves(adam[0].nu)) == n_trainable
    # Warm-up over 2 updates: lr/2, then lr.
    np.testing.assert_allclose([float(m1["lr"]), float(m2["lr"])], [5e-4, 1e-3], rtol=1e-6)


def test_metrics_are_float32_scalars_and_loss_is_mse_plus_vb(setup):
    state, s = setup["fresh"](), setup
    state, metrics = s["step"](state, shard_batch(s["mesh"], host_batch(2)))
    assert set(metrics) == {"loss", "mse", "vb", "grad_norm", "lr", "skipped"}
    assert all(v.shape == () and v.dtype == jnp.float32 for v in metrics.values())
    # Before the sampler warms up every weight is 1: loss = mean(mse + vb).
    np.testing.assert_allclose(float(metrics["loss"]),
                               float(metrics["mse"]) + float(metrics["vb"]), rtol=1e-5)
    # mse of an ε-prediction at init is about 1 (noise variance).
    assert 0.3 < float(metrics["mse"]) < 3.0
    assert int(state.step) == 1 and int(state.importance.count.sum()) == B


def test_sampled_timesteps_and_weights_reach_the_loss(setup):
    """A warmed-up sampler whose history is non-zero only at bin 7 draws t = 7 for every row, with
    weight 1/(T·p_7) = 1/T: the step's loss is mean(mse + vb) / T and bin 7 gets the B losses."""
    s = setup
    state = s["fresh"]()
    T, K = state.importance.history.shape
    history = np.zeros((T, K), np.float32)
    history[7] = 1.0
    planted = importance.ImportanceState(history=history, count=np.full((T,), K, np.int32))
    state = jax.device_put(state.replace(importance=planted), jax.tree_util.tree_map(
        lambda x: x.sharding, state))
    state, metrics = s["step"](state, shard_batch(s["mesh"], host_batch(6)))
    np.testing.assert_allclose(float(metrics["loss"]),
                               (float(metrics["mse"]) + float(metrics["vb"])) / T, rtol=1e-5)
    count = np.asarray(state.importance.count)
    assert count[7] == K + B and np.all(np.delete(count, 7) == K)


def test_nan_batch_is_skipped_and_next_step_trains(setup):
    state, s = setup["fresh"](), setup
    state, _ = s["step"](state, shard_batch(s["mesh"], host_batch(3)))
    before = to_host(state)
    state, bad = s["step"](state, shard_batch(s["mesh"], host_batch(4, nan=True)))
    after = to_host(state)
    assert float(bad["skipped"]) == 1.0 and not np.isfinite(float(bad["loss"]))
    assert int(after.skipped) == 1 and int(after.step) == 2
    for name in ("params", "ema_params", "opt_state", "importance"):
        assert_trees_equal(getattr(before, name), getattr(after, name))
    state, good = s["step"](state, shard_batch(s["mesh"], host_batch(5)))
    assert float(good["skipped"]) == 0.0 and np.isfinite(float(good["loss"]))
    assert int(state.skipped) == 1 and int(state.importance.count.sum()) == 2 * B
    _, train_before = split_by_label(after.params, s["labels"], True)
    _, train_now = split_by_label(to_host(state.params), s["labels"], True)
    assert all(not np.array_equal(a, b) for a, b in zip(train_before, train_now))


def test_same_state_and_batches_give_same_losses(setup):
    """Reruns are bit-identical; that create_train_state is a function of the seed is checked in
    test_sharding.py (one seed, two meshes, identical params)."""
    s = setup

    def run():
        state, out = s["fresh"](), []
        for i in range(3):
            state, m = s["step"](state, shard_batch(s["mesh"], host_batch(10 + i)))
            out.append(float(m["loss"]))
        return out, to_host(state)

    (l1, s1), (l2, s2) = run(), run()
    assert l1 == l2 and len(set(l1)) == 3
    assert_trees_equal(s1, s2)


def test_model_inputs_pick_the_conditioning_the_model_has():
    video = get_model("DiT3D-S/8", depth=1, input_size=16, num_frames=2, hidden_size=64,
                      num_heads=4, text_dim=0, num_classes=0)
    batch = host_batch()
    x, cond = model_inputs(video, batch)
    assert x is batch["video"] and cond == {}
    image = get_model("DiT-S/8", depth=1, input_size=16, hidden_size=64, num_heads=4)
    x, cond = model_inputs(image, dict(image=batch["video"][:, 0], label=batch["label"]))
    assert x.shape == (B, 16, 16, 4) and set(cond) == {"y"}
    with pytest.raises(ValueError, match="batch: expected a 'image' entry"):
        model_inputs(image, dict(label=batch["label"]))


def test_step_imports_without_the_data_stack_or_ml_collections():
    # A benchmark on a bare accelerator image has jax/flax/optax/orbax but none of these: the
    # models, the diffusion code and the train step must import (and so jit) without them.
    blocked = ("ml_collections", "grain", "tensorflow_datasets", "array_record", "tensorboardX",
               "tensorflow")
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {blocked!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import dit3d_jax.models, dit3d_jax.diffusion, dit3d_jax.train, dit3d_jax.train.step
        print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_logit_normal_timesteps_with_importance_sampling_is_an_error_at_build_time():
    """Importance sampling draws its own bins, so it would silently replace the logit-normal t."""
    from dit3d_jax.diffusion.objective import make_objective
    from dit3d_jax.train.step import make_step_fn
    config = tiny_config()
    config.objective.update(dict(name="flow", t_sampling="logit_normal"))
    model, _ = build(config)
    objective = make_objective(config.objective, model.learn_sigma)
    assert config.importance.enabled  # the default
    with pytest.raises(ValueError, match=r"objective.t_sampling='logit_normal'.*"
                                         r"importance.enabled=False"):
        make_step_fn(config, model, objective)
    config.importance.enabled = False
    assert callable(make_step_fn(config, model, objective))


def test_auto_compute_dtype_is_bf16_only_on_cpus_with_avx512_bf16(tmp_path):
    flags = "fpu vme avx2 avx512f avx512bw avx512_vnni"
    for name, extra, fast in [("zen4", " avx512_bf16 avx512vbmi", True),
                              ("skylake", "", False), ("amx", " amx_bf16 avx512_bf16", True)]:
        path = tmp_path / name
        path.write_text(f"processor\t: 0\nflags\t\t: {flags}{extra}\n\nprocessor\t: 1\n")
        assert cpu_has_fast_bf16(str(path)) is fast, name
    assert cpu_has_fast_bf16(str(tmp_path / "missing")) is False  # not Linux: float32
    on_cpu = jax.default_backend() == "cpu"
    expected = jnp.bfloat16 if not on_cpu or cpu_has_fast_bf16() else jnp.float32
    assert compute_dtype("auto") == expected
    assert compute_dtype("float32") == jnp.float32 and compute_dtype("bfloat16") == jnp.bfloat16
