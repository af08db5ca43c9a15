"""Checkpointer: state + iterator state round trip, retention, and restoring onto another mesh."""
import json
import os
import subprocess
import sys

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from dit3d_jax.diffusion import importance
from dit3d_jax.train.checkpoint import Checkpointer, load_workdir
from dit3d_jax.train.state import TrainState
from child_env import child_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _abstract(tree, sharding):
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


@pytest.mark.parametrize("data_state", [{"batch": 7, "nested": {"pos": [1, 2]}},
                                        b"\x00grain-state\xff"])
def test_round_trip_keeps_state_iterator_and_last_k(tmp_path, data_state):
    sharding = NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("d",)),
                             PartitionSpec())
    ckpt = Checkpointer(str(tmp_path), keep=2)
    trees = {}
    for step in (1, 2, 3):
        trees[step] = {"w": jnp.arange(6.0).reshape(2, 3) * step,
                       "rng": jax.random.key_data(jax.random.key(step)),
                       "count": jnp.int32(step)}
        assert ckpt.save(step, trees[step], data_state)
    assert not ckpt.save(3, trees[3], data_state)         # a step is written once
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
    state, restored_data = ckpt.restore(_abstract(trees[3], sharding))
    ckpt.close()
    assert restored_data == data_state
    for key in trees[3]:
        np.testing.assert_array_equal(np.asarray(state[key]), np.asarray(trees[3][key]))
        assert state[key].sharding == sharding
    data_dir = tmp_path / "checkpoints" / "3" / "data"
    assert [n for n in os.listdir(data_dir) if n.endswith(".json")] == ["process_0-of-1.json"]


class SamplerTrainState(flax.struct.PyTreeNode):
    """TrainState as checkpoints before the rename saved it: `importance` was `sampler`."""
    step: Any
    params: Any
    ema_params: Any
    opt_state: Any
    sampler: Any
    rng: Any
    skipped: Any


def test_checkpoint_with_the_old_sampler_field_restores_into_importance(tmp_path):
    sharding = NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("d",)),
                             PartitionSpec())
    history = importance.ImportanceState(history=jnp.arange(8.0).reshape(4, 2),
                                         count=jnp.arange(4, dtype=jnp.int32))
    fields = dict(step=jnp.int32(5), params={"w": jnp.ones((2, 3))},
                  ema_params={"w": jnp.full((2, 3), 0.5)}, opt_state={"mu": jnp.zeros(3)},
                  rng=jax.random.key_data(jax.random.key(1)), skipped=jnp.int32(1))
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(5, SamplerTrainState(sampler=history, **fields), {"batch": 5})
    ckpt.wait_until_finished()
    state, _ = ckpt.restore(_abstract(TrainState(importance=history, **fields), sharding))
    ckpt.close()
    ckpt = Checkpointer(str(tmp_path), async_save=False)   # as load_workdir reads one field
    ema = ckpt.restore_field("ema_params", _abstract(fields["ema_params"], sharding))
    counts = ckpt.restore_field("importance", _abstract(history, sharding))
    ckpt.close()
    assert isinstance(state, TrainState) and int(state.step) == 5
    np.testing.assert_array_equal(state.importance.history, history.history)
    np.testing.assert_array_equal(state.importance.count, history.count)
    np.testing.assert_array_equal(ema["w"], fields["ema_params"]["w"])
    np.testing.assert_array_equal(counts.count, history.count)


def test_load_workdir_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_workdir(str(tmp_path))


CHILD = r"""
import json, sys
import jax, numpy as np
from dit3d_jax.train.config import load_config_file
from dit3d_jax.train.loop import train_and_evaluate
args = json.loads(sys.argv[1])
config = load_config_file(args["config"], args["overrides"])
state = train_and_evaluate(config, args["workdir"])
leaves = jax.tree_util.tree_leaves(state.params)
split = sum(x.sharding.shard_shape(x.shape) != x.shape for x in leaves)
print(json.dumps({"devices": jax.device_count(), "split_leaves": int(split),
                  "mesh": dict(leaves[0].sharding.mesh.shape)}), flush=True)
flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
np.savez(args["dump"], **{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat})
"""


def _run(tmp_path, name, overrides, devices):
    env = child_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                              "--xla_backend_optimization_level=0")
    args = dict(config=os.path.join(REPO, "configs", "tiny.py"), workdir=str(tmp_path / "run"),
                dump=str(tmp_path / f"{name}.npz"), overrides=overrides)
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), dict(np.load(tmp_path / f"{name}.npz"))


def test_checkpoint_from_8_devices_restores_on_1(tmp_path):
    """Saved sharded data=4 × fsdp=2 over 8 simulated devices; restored on 1 device: equal."""
    info8, saved = _run(tmp_path, "eight", {"mesh.data": 4, "mesh.fsdp": 2,
                                            "train.num_steps": 0}, devices=8)
    assert info8["devices"] == 8 and info8["mesh"] == {"data": 4, "fsdp": 2}
    assert info8["split_leaves"] > 0                  # params really were sharded over fsdp
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["0"]

    # Another seed: a fresh init would differ, so equality below means a restore.
    info1, restored = _run(tmp_path, "one", {"train.num_steps": 0, "seed": 1}, devices=1)
    assert info1["devices"] == 1 and info1["split_leaves"] == 0
    assert saved.keys() == restored.keys() and any(".params" in k for k in saved)
    for key in saved:
        np.testing.assert_array_equal(saved[key], restored[key], err_msg=key)
