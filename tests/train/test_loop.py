"""train_and_evaluate and train.py: exact resume after SIGKILL, SIGTERM, init_from, the CLI.

Runs that must die, or need their own process, are subprocesses on configs/tiny.py; they share a
persistent JAX compilation cache, so only the first of them compiles the train step.
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from child_env import child_env
from tb_events import summary_values

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "tiny.py")

# A child run: argv[1] is JSON {"workdir", "overrides" (flattened config fields), "dump" (npz of
# the final state), "durable_marker" (print DURABLE <step> once that checkpoint is on disk, and
# block before saving any later step, so the test can kill it with no later checkpoint)}.
CHILD = r"""
import json, sys, time
import jax, numpy as np
from absl import logging
logging.set_verbosity(logging.INFO)
from dit3d_jax.train.config import load_config_file
args = json.loads(sys.argv[1])
config = load_config_file(args["config"], args.get("overrides", {}))
from dit3d_jax.train import checkpoint
from dit3d_jax.train.loop import train_and_evaluate
marker = args.get("durable_marker")
if marker is not None:
    original = checkpoint.Checkpointer.save
    def save(self, step, state, data_state):
        if step > marker:
            time.sleep(600)  # killed here at the latest
        out = original(self, step, state, data_state)
        if step == marker:
            self.wait_until_finished()
            print(f"DURABLE {step}", flush=True)
        return out
    checkpoint.Checkpointer.save = save
state = train_and_evaluate(config, args["workdir"])
flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
np.savez(args["dump"], **{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat})
print("FINISHED", flush=True)
"""


def start_child(tmp_path, name, **args):
    args = dict(config=TINY, dump=str(tmp_path / f"{name}.npz"), **args)
    log = open(tmp_path / f"{name}.log", "w")  # pylint: disable=consider-using-with
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO,
                            env=child_env(), stdout=subprocess.PIPE, stderr=log, text=True)
    return proc


def run_child(tmp_path, name, **args):
    proc = start_child(tmp_path, name, **args)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    return dict(np.load(tmp_path / f"{name}.npz"))


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f)]


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    """6 steps straight == 3 steps, SIGKILL once the step-3 checkpoint is durable, 3 more."""
    straight = run_child(tmp_path, "straight", workdir=str(tmp_path / "a"),
                         overrides={"train.num_steps": 6, "train.checkpoint_every": 3})

    proc = start_child(tmp_path, "killed", workdir=str(tmp_path / "b"), durable_marker=3,
                       overrides={"train.num_steps": 6, "train.checkpoint_every": 3})
    for line in proc.stdout:
        if line.startswith("DURABLE 3"):
            break
    else:
        pytest.fail("child exited before its step-3 checkpoint: "
                    + (tmp_path / "killed.log").read_text()[-3000:])
    # Let it log steps 4-6 (it then blocks before saving step 6): the resumed run must drop
    # those records and redo the steps.
    deadline = time.time() + 120
    while len(losses(tmp_path / "b")) < 6:
        assert time.time() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["3"]

    resumed = run_child(tmp_path, "resumed", workdir=str(tmp_path / "b"),
                        overrides={"train.num_steps": 6, "train.checkpoint_every": 3})
    log = (tmp_path / "resumed.log").read_text()
    assert "Restoring from" in log and "/checkpoints/3" in log

    assert losses(tmp_path / "a") == losses(tmp_path / "b")          # bit-identical floats
    assert [s for s, _ in losses(tmp_path / "b")] == [1, 2, 3, 4, 5, 6]
    assert straight.keys() == resumed.keys()
    assert any(".params" in k for k in straight)
    for key in straight:
        np.testing.assert_array_equal(straight[key], resumed[key], err_msg=key)
    assert int(resumed[".step"]) == 6


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    """SIGTERM mid-run: the loop checkpoints the step it is at and returns (exit 0)."""
    workdir = tmp_path / "w"
    proc = start_child(tmp_path, "term", workdir=str(workdir),
                       overrides={"train.num_steps": 100_000, "train.checkpoint_every": 100_000})
    deadline = time.time() + 240
    while not (workdir / "metrics.jsonl").exists() or not losses(workdir):
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "term.log").read_text()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "FINISHED" in out, (tmp_path / "term.log").read_text()
    steps = [int(s) for s in os.listdir(workdir / "checkpoints")]
    state = np.load(tmp_path / "term.npz")
    assert len(steps) == 1 and 1 <= steps[0] < 100_000
    assert int(state[".step"]) == steps[0]
    assert "Stopping at step" in (tmp_path / "term.log").read_text()


def test_metrics_writer_drops_records_after_the_resumed_step(tmp_path):
    from dit3d_jax.utils.logging import MetricsWriter, read_metrics
    writer = MetricsWriter(str(tmp_path))
    for step in range(1, 6):
        writer.write(step, {"loss": step / 10, "bad": float("nan")})
    writer.close()
    writer = MetricsWriter(str(tmp_path), start_step=3)   # resumed from the step-3 checkpoint
    writer.write(4, {"loss": 0.0})
    writer.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path))] == [
        (1, 0.1), (2, 0.2), (3, 0.3), (4, 0.0)]
    assert read_metrics(str(tmp_path))[0]["bad"] is None    # JSON has no NaN


def test_summary_skips_non_finite_steps_and_says_so(caplog):
    from dit3d_jax.train.loop import summarize
    ok = dict(loss=1.0, mse=0.9, vb=0.1, grad_norm=2.0, lr=1e-4, skipped=0.0)
    bad = dict(loss=float("nan"), mse=float("nan"), vb=0.0, grad_norm=float("inf"), lr=1e-4,
               skipped=1.0)
    later = dict(ok, loss=3.0, lr=2e-4)
    with caplog.at_level("WARNING"):
        record = summarize([11, 12, 13], [ok, bad, later])
    assert record["loss"] == 2.0 and record["lr"] == 2e-4 and record["skipped"] == 1
    assert "Step 12 skipped" in caplog.text
    assert "Step 11" not in caplog.text and "Step 13" not in caplog.text


def test_train_py_runs_logs_and_rejects_typos(tmp_path):
    workdir = tmp_path / "cli"
    cmd = [sys.executable, "train.py", "--config", "configs/tiny.py", "--workdir", str(workdir)]
    bad = subprocess.run(cmd + ["--config.trian.num_steps=2"], cwd=REPO, env=child_env(),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and 'Did you mean "train" instead of "trian"' in bad.stderr
    assert not workdir.exists()

    ok = subprocess.run(cmd + ["--config.train.num_steps=2"], cwd=REPO, env=child_env(),
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "Creating device mesh" in ok.stderr
    records = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["skipped"] == 0 for r in records)
    saved = json.load(open(workdir / "config.json"))
    assert saved["train"]["num_steps"] == 2 and saved["model"]["kwargs"]["hidden_size"] == 64
    assert json.load(open(workdir / "model.json"))["family"] == "DiT3D"
    tb = {(tag, step): value for tag, step, value in read_scalars(workdir / "tb")}
    for r in records:
        assert tb[("loss", r["step"])] == pytest.approx(r["loss"], rel=1e-6)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]

    from dit3d_jax.train.checkpoint import load_workdir
    model, ema, config = load_workdir(str(workdir))
    _, raw, _ = load_workdir(str(workdir), ema=False)
    assert model.num_frames == 4 and config.train.num_steps == 2
    pairs = list(zip(jax.tree_util.tree_leaves(ema), jax.tree_util.tree_leaves(raw)))
    assert all(e.shape == r.shape for e, r in pairs)
    assert any(not np.array_equal(e, r) for e, r in pairs)      # EMA lags the trained params


def read_scalars(tb_dir):
    """(tag, step, value) of every scalar in the TFRecord event files of tb_dir."""
    return [(v.tag, step, v.simple_value) for step, v in summary_values(tb_dir)
            if v.HasField("simple_value")]


def test_init_from_inflates_exported_image_dit(tmp_path, monkeypatch):
    """A save_exported image DiT initialises a DiT3D run: every DiT param copied, at step 0."""
    from dit3d_jax.models import get_model, init_params
    from dit3d_jax.models.export import save_exported
    from dit3d_jax.train.checkpoint import load_workdir
    from dit3d_jax.train.config import load_config_file
    from dit3d_jax.train.loop import train_and_evaluate
    config = load_config_file(TINY)

    kw = config.model.kwargs
    image = get_model("DiT-S/2", hidden_size=kw.hidden_size, depth=kw.depth,
                      num_heads=kw.num_heads, input_size=kw.input_size,
                      in_channels=kw.in_channels, num_classes=kw.num_classes)
    dit_params = jax.device_get(init_params(image, jax.random.key(42)))
    save_exported(str(tmp_path / "export"), image, dit_params)
    config.init_from = str(tmp_path / "export")
    config.train.num_steps = 0

    state = train_and_evaluate(config, str(tmp_path / "run"))
    assert int(state.step) == 0
    flat = lambda t: {jax.tree_util.keystr(p): np.asarray(v)
                      for p, v in jax.tree_util.tree_flatten_with_path(jax.device_get(t))[0]}
    src, got, ema = flat(dit_params), flat(state.params), flat(state.ema_params)
    assert set(src) < set(got)                                  # DiT3D has more (video/text)
    assert any("temporal" in k for k in set(got) - set(src))
    for key, value in src.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
        np.testing.assert_array_equal(ema[key], value, err_msg=key)

    model, params, saved_config = load_workdir(str(tmp_path / "run"))
    assert type(model).__name__ == "DiT3D" and model.hidden_size == kw.hidden_size
    assert saved_config.init_from == str(tmp_path / "export")
    loaded = flat(params)
    for key, value in got.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)
