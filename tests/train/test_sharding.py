"""The sharded step on 8 simulated CPU devices equals the single-device step.

JAX fixes its device count at import, so the checks run in a subprocess (this file executed as a
script with XLA_FLAGS=--xla_force_host_platform_device_count=8). The script asserts and prints
the measured differences as JSON; the test reports them.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
# Sharded vs single device: losses and gradient norms to rtol 1e-5. Params after 2 AdamW steps
# (lr 1e-3) to rtol 1e-5 plus atol 2e-5 = 2% of one lr step: the reduction order differs across
# devices, and Adam divides each gradient entry by its own magnitude, so entries whose exact
# gradient is ~0 (e.g. attention key biases: softmax is shift-invariant) turn rounding noise into
# updates of up to lr·|noise|/eps. Measured here: max |Δparam| 6.6e-6, |Δloss|/loss 2e-7.
RTOL, PARAM_ATOL = 1e-5, 2e-5


def check_mesh_and_rules(jax, ml_collections, P):
    from dit3d_jax.train import make_mesh, param_shardings
    from test_step import build, tiny_config

    mesh = make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=2)))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}, mesh.shape
    for data, fsdp, match in ((3, 1, "multiple of 3"), (-1, 3, "multiple of 3"),
                              (2, 2, "must equal the device count 8"), (0, 1, "mesh.data")):
        try:
            make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp)))
        except ValueError as err:
            assert match in str(err), (match, str(err))
        else:
            raise AssertionError(f"mesh data={data} fsdp={fsdp} was accepted")
    # A dim the mesh axis does not divide falls back to replication, the rest stays sharded:
    # the label table is (num_classes + 1 = 11, 64); 11 is odd, 64 splits over data=4.
    model, _ = build(tiny_config())
    shardings = param_shardings(model, mesh, (("vocab", "fsdp"), ("embed", "data")))
    spec = shardings["y_embedder"]["embedding_table"]["embedding"].spec
    assert tuple(spec) == (None, "data"), spec
    assert tuple(shardings["x_embedder"]["proj"]["kernel"].spec) == (None, None, None, "data")


def main():
    import jax
    import ml_collections
    import numpy as np
    from jax.sharding import PartitionSpec as P

    sys.path.insert(0, HERE)
    from test_step import build, host_batch, perturbed_params, tiny_config, to_host

    from dit3d_jax.train import create_train_state, make_mesh, make_train_step, optim, shard_batch

    assert len(jax.devices()) == 8, jax.devices()
    check_mesh_and_rules(jax, ml_collections, P)

    config = tiny_config(freeze="none")
    config.mesh.data, config.mesh.fsdp = 4, 2
    model, objective = build(config)
    meshes = {"sharded": make_mesh(config.mesh),
              "single": make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1)),
                                  devices=jax.devices()[:1])}
    batches = [host_batch(20 + i, batch=8) for i in range(2)]
    params = perturbed_params(model, 5)
    report, results = {}, {}
    for name, mesh in meshes.items():
        fresh, _ = create_train_state(config, model, objective, mesh, jax.random.key(0))
        results[name + "_init"] = to_host(fresh)
        state, sharding = create_train_state(config, model, objective, mesh, jax.random.key(0),
                                             params=params)
        step = make_train_step(config, model, objective, mesh, sharding)
        losses = []
        for b in batches:
            batch = shard_batch(mesh, b)
            state, metrics = step(state, batch)
            losses += [float(metrics["loss"]), float(metrics["grad_norm"])]
        if name == "sharded":
            kernel = state.params["blocks_0"]["mlp"]["fc1"]["kernel"]          # (embed, mlp)
            assert kernel.shape == (64, 256)
            assert tuple(kernel.sharding.spec) == ("fsdp", None), kernel.sharding.spec
            shard_shapes = {s.data.shape for s in kernel.addressable_shards}
            assert shard_shapes == {(32, 256)}, shard_shapes
            ema = state.ema_params["blocks_0"]["mlp"]["fc1"]["kernel"]
            assert ema.sharding.spec == kernel.sharding.spec
            mu = [x for x in jax.tree_util.tree_leaves(state.opt_state) if x.shape == (64, 256)]
            assert mu and all(x.sharding.spec == kernel.sharding.spec for x in mu)
            assert batch["video"].sharding.spec == P(("data", "fsdp"))
            assert {s.data.shape[0] for s in batch["video"].addressable_shards} == {1}
            assert "caption" not in batch
            assert state.importance.history.sharding.spec == P()
            report["kernel_shard_shape"] = sorted(shard_shapes)[0]
        results[name] = (losses, to_host(state))

    assert all(np.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(results["sharded_init"]),
        jax.tree_util.tree_leaves(results["single_init"]))), "init differs across meshes"
    (loss_a, state_a), (loss_b, state_b) = results["sharded"], results["single"]
    np.testing.assert_allclose(loss_a, loss_b, rtol=RTOL)
    worst, changed = 0.0, 0
    for (path, a), b, p0 in zip(jax.tree_util.tree_flatten_with_path(state_a.params)[0],
                                jax.tree_util.tree_leaves(state_b.params),
                                jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=PARAM_ATOL, err_msg=optim.path_str(path))
        worst = max(worst, float(np.max(np.abs(a - b))))
        changed += not np.array_equal(a, np.asarray(p0))
    # The global batch of 8 (two steps: 16 samples) reached the importance sampler on both.
    assert int(state_a.importance.count.sum()) == int(state_b.importance.count.sum()) == 16
    np.testing.assert_array_equal(state_a.importance.count, state_b.importance.count)
    np.testing.assert_allclose(state_a.importance.history, state_b.importance.history, rtol=RTOL)
    report.update(loss_and_grad_norm_sharded=loss_a, loss_and_grad_norm_single=loss_b,
                  max_param_diff=worst, changed_leaves=changed,
                  leaves=len(jax.tree_util.tree_leaves(params)))
    print("REPORT " + json.dumps(report))


def test_sharded_step_matches_single_device():
    # Backend optimisation level 0 halves the compile time; both meshes compile the same way.
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                          " --xla_force_host_platform_device_count=8"
                          " --xla_backend_optimization_level=0").strip())
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env,
                          capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(HERE)))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("REPORT ")]
    report = json.loads(line[-1][len("REPORT "):])
    print(report)
    assert report["kernel_shard_shape"] == [32, 256]
    assert report["max_param_diff"] <= PARAM_ATOL + RTOL
    assert report["changed_leaves"] >= report["leaves"] - 1   # all but the null caption trained


if __name__ == "__main__":
    main()
