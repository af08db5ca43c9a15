"""Faults a run survives: a corrupt newest checkpoint, no intact checkpoint, a write that fails
during an asynchronous save. Each continued run is compared, bit for bit, with an uninterrupted
one (configs/tiny.py, 9 steps, a checkpoint every 3). Training runs are subprocesses sharing
the suite's persistent compilation cache, so the train step compiles once."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from dit3d_jax.train.checkpoint import CheckpointError, load_workdir
from child_env import child_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "tiny.py")
RUN = {"train.num_steps": 9, "train.checkpoint_every": 3, "train.keep_checkpoints": 3}
ENV = child_env()

# A run of configs/tiny.py with RUN: argv[1] the workdir, argv[2] where to save the final state.
CHILD = r"""
import sys
import jax, numpy as np
from absl import logging
logging.set_verbosity(logging.INFO)
from dit3d_jax.train.config import load_config_file
from dit3d_jax.train.loop import train_and_evaluate
state = train_and_evaluate(load_config_file(sys.argv[3], eval(sys.argv[4])), sys.argv[1])
flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
np.savez(sys.argv[2], **{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat})
"""

# train.py, with every file write of the process limited to 64 KiB (RLIMIT_FSIZE: the kernel
# fails larger writes with EFBIG) from the save after step 3 on: the step-6 save then fails in
# orbax's background writer, as on a full disk.
FAILING_CHILD = r"""
import resource, runpy, signal, sys
from dit3d_jax.train import checkpoint
original = checkpoint.Checkpointer.save
def save(self, step, state, data_state):
    if step > 3:
        self.wait_until_finished()  # step 3 is durable before the limit
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, resource.RLIM_INFINITY))
    return original(self, step, state, data_state)
checkpoint.Checkpointer.save = save
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


def train(workdir):
    """(final state as {path: array}, stderr) of a RUN in workdir (resumes if it has one)."""
    dump = workdir + ".npz"
    out = subprocess.run([sys.executable, "-c", CHILD, workdir, dump, TINY, repr(RUN)],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(np.load(dump)), out.stderr


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f)]


def corrupt(workdir, step):
    """Truncates every array data file of checkpoint `step` to 100 bytes."""
    files = glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "ocdbt.*", "d",
                                   "*"))
    assert files
    for path in files:
        os.truncate(path, 100)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 9-step run: (workdir, final state)."""
    workdir = str(tmp_path_factory.mktemp("straight") / "run")
    state, _ = train(workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["3", "6", "9"]
    return workdir, state


def assert_same_run(workdir, straight_workdir, state, straight_state):
    assert losses(workdir) == losses(straight_workdir)              # bit-identical floats
    assert [s for s, _ in losses(workdir)] == list(range(1, 10))
    got = state
    assert got.keys() == straight_state.keys() and int(got[".step"]) == 9
    for key, value in straight_state.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_corrupt_newest_falls_back_and_the_continued_run_matches(straight, tmp_path, caplog):
    straight_workdir, straight_state = straight
    workdir = str(tmp_path / "run")
    shutil.copytree(straight_workdir, workdir)
    corrupt(workdir, 9)

    # sample.py's reader: the EMA params of step 6, after one warning.
    with caplog.at_level("WARNING"):
        _, ema, _ = load_workdir(workdir)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "step 9 did not restore" in warnings[0]
    assert "restored step 6 instead" in warnings[0] and "OUT_OF_RANGE" in warnings[0]
    _, ema6, _ = load_workdir(workdir, step=6)
    for key, value in flat(ema6).items():
        np.testing.assert_array_equal(flat(ema)[key], value, err_msg=key)

    state, log = train(workdir)
    warnings = [line for line in log.splitlines() if "did not restore" in line]
    assert len(warnings) == 1 and "restored step 6 instead" in warnings[0]
    assert "bad_checkpoints/9" in warnings[0]
    # The bad checkpoint is kept aside, and a new step 9 took its place.
    assert os.path.isdir(os.path.join(workdir, "bad_checkpoints", "9", "state"))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["3", "6", "9"]
    assert_same_run(workdir, straight_workdir, state, straight_state)


def test_no_intact_checkpoint_is_one_error_listing_each_step(straight, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(straight[0], workdir)
    for step in (3, 6, 9):
        corrupt(workdir, step)
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* restores; tried step 9: "
                                              r".*; step 6: .*; step 3: "):
        load_workdir(workdir)

    out = subprocess.run([sys.executable, "train.py", "--config", TINY, "--workdir", workdir],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert out.returncode == 2 and len(errors) == 1, out.stderr[-3000:]
    assert re.search(r"tried step 9: .*; step 6: .*; step 3: ", errors[0])
    assert "Traceback" not in out.stderr
    # Nothing was moved or deleted, and the run did not start over.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["3", "6", "9"]
    assert not os.path.exists(os.path.join(workdir, "bad_checkpoints"))
    assert losses(workdir) == losses(straight[0])


def test_write_failure_in_async_save_is_one_error_and_resume_is_exact(straight, tmp_path):
    straight_workdir, straight_state = straight
    workdir = str(tmp_path / "run")
    overrides = [f"--config.{k}={v}" for k, v in RUN.items()]
    out = subprocess.run(
        [sys.executable, "-c", FAILING_CHILD, "--config", TINY, "--workdir", workdir,
         *overrides, "--config.train.keep_checkpoints=1"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert out.returncode == 1 and len(errors) == 1, out.stderr[-3000:]
    assert re.search(r"checkpoint: saving step 6 to .*/checkpoints/6 failed: File too large "
                     r".*; last durable checkpoint: step 3 \(.*/checkpoints/3\)", errors[0])
    assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr
    # keep_checkpoints=1, yet step 3 is still there: orbax drops it only after a save commits.
    assert [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()] == ["3"]

    state, _ = train(workdir)   # the cause is gone
    assert_same_run(workdir, straight_workdir, state, straight_state)


def test_corrupt_export_is_one_clear_error(tmp_path, capsys):
    """init_from / sample.py --checkpoint: one params directory, nothing to fall back to."""
    from dit3d_jax.models import get_model, init_params
    from dit3d_jax.models.export import load_exported, save_exported
    sys.path.insert(0, REPO)
    import sample  # pylint: disable=import-outside-toplevel
    model = get_model("DiT-S/8", depth=1, hidden_size=32, num_heads=2, input_size=8,
                      in_channels=3, num_classes=4)
    save_exported(str(tmp_path / "export"), model, init_params(model, jax.random.key(0)))
    files = glob.glob(str(tmp_path / "export" / "params" / "ocdbt.*" / "d" / "*"))
    assert files
    for path in files:
        os.truncate(path, 10)
    with pytest.raises(ValueError, match=r"checkpoint: .*params does not restore: "):
        load_exported(str(tmp_path / "export"))
    assert sample.main(["--checkpoint", str(tmp_path / "export"), "--label", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(r"error: --checkpoint .*params does not restore",
                                              err)
