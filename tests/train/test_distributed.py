"""Two JAX processes (jax.distributed on CPU, one device each) train configs/tiny.py together,
and stop together when one of them gets SIGTERM."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
from child_env import child_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# argv[1]: JSON {"port", "process_id" (None: a single-process reference run), "workdir",
# "overrides" (config fields)}.
CHILD = r"""
import hashlib, json, sys
import jax, numpy as np
args = json.loads(sys.argv[1])
if args["process_id"] is not None:
    jax.distributed.initialize(coordinator_address=f"localhost:{args['port']}",
                               num_processes=2, process_id=args["process_id"])
from dit3d_jax.train.config import load_config_file
from dit3d_jax.train.loop import train_and_evaluate
config = load_config_file(args["config"], args["overrides"])
state = train_and_evaluate(config, args["workdir"])
params = jax.tree_util.tree_leaves(state.params)
digest = hashlib.sha256()
for leaf in params:
    digest.update(np.asarray(leaf.addressable_data(0)).tobytes())
print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                  "step": int(np.asarray(state.step.addressable_data(0))),
                  "sha256": digest.hexdigest(),
                  "sum": float(sum(np.asarray(l.addressable_data(0), np.float64).sum()
                                   for l in params))}), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdir, process_id, port=None, log=None, overrides=None):
    args = dict(config=os.path.join(REPO, "configs", "tiny.py"), workdir=str(workdir),
                process_id=process_id, port=port,
                overrides=overrides or {"train.num_steps": 3, "train.checkpoint_every": 3})
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO,
                            env=child_env(), stdout=subprocess.PIPE, stderr=log, text=True)


def _result(proc, log_path):
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, open(log_path).read()[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def test_two_processes_train_one_model_on_split_batches(tmp_path):
    port = _free_port()
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    procs = [_start(tmp_path / "multi", i, port, open(logs[i], "w")) for i in range(2)]
    results = [_result(p, log) for p, log in zip(procs, logs)]
    assert [r["process"] for r in results] == [0, 1]
    assert all(r["processes"] == 2 and r["step"] == 3 for r in results)
    assert results[0]["sha256"] == results[1]["sha256"]        # one model, bit for bit

    # Each process saved its own iterator position (3 batches read).
    data_dir = tmp_path / "multi" / "checkpoints" / "3" / "data"
    for i in range(2):
        assert json.loads((data_dir / f"process_{i}-of-2.json").read_text()) == {"batch": 3}

    # The same global batches on one process and one device: the same training up to
    # summation order, which holds only if each process fed its own half of every batch.
    ref_log = tmp_path / "ref.log"
    ref = _result(_start(tmp_path / "single", None, log=open(ref_log, "w")), ref_log)
    assert ref["processes"] == 1
    np.testing.assert_allclose(_losses(tmp_path / "multi"), _losses(tmp_path / "single"),
                               rtol=1e-5)
    np.testing.assert_allclose(results[0]["sum"], ref["sum"], rtol=1e-5)


def test_sigterm_to_one_process_stops_every_process_at_the_same_saved_step(tmp_path):
    """A preemption notice reaching only process 1: both agree on the step (at the next log
    step; tiny logs every step), both save that one checkpoint, both exit 0."""
    port, workdir = _free_port(), tmp_path / "multi"
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    overrides = {"train.num_steps": 100_000, "train.checkpoint_every": 100_000}
    procs = [_start(workdir, i, port, open(logs[i], "w"), overrides) for i in range(2)]
    deadline = time.time() + 300
    while not (workdir / "metrics.jsonl").exists() or not _losses(workdir):
        assert all(p.poll() is None for p in procs) and time.time() < deadline, \
            open(logs[0]).read()[-3000:] + open(logs[1]).read()[-3000:]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    results = [_result(p, log) for p, log in zip(procs, logs)]
    step = results[0]["step"]
    assert 1 <= step < 100_000 and results[1]["step"] == step
    assert results[0]["sha256"] == results[1]["sha256"]
    assert os.listdir(workdir / "checkpoints") == [str(step)]
    data_dir = workdir / "checkpoints" / str(step) / "data"
    for i in range(2):
        assert json.loads((data_dir / f"process_{i}-of-2.json").read_text()) == {"batch": step}
    assert "Stopping at step %d on SIGTERM" % step in open(logs[0]).read()
