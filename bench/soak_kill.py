"""Soak test: kill a training run with SIGKILL at N random moments, resume it each time, and
check that it ends bit-identical to a run that was never interrupted.

    python bench/soak_kill.py --n 5                      # configs/tiny.py, 30 steps
    python bench/soak_kill.py --n 20 --steps 150 --seed 1

Runs `train.py --config configs/tiny.py` (one checkpoint every --checkpoint-every steps) once
straight through in OUT/straight, timing its start-up (until the first logged step) and its
steps; then in OUT/killed: start, `kill -9` at a random moment, repeat N times, then run to the
end. A quarter of the kills land at a uniform moment of the start-up (imports, restore,
compilation); the rest at a uniform moment within the time of steps/(N+1) steps after that life
logged its first step (a step, an asynchronous save, the metrics write), so the run is still
unfinished at each of the N kills. Compares the
per-step losses (metrics.jsonl) and every array of the final checkpoint's TrainState (params,
EMA, optimizer and sampler state, rng, step). Prints one line per kill and the verdict; exit
status 0 when identical. Not part of the test suite (minutes of CPU); results go to
docs/reliability.md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(workdir: str, args) -> list[str]:
    return [sys.executable, os.path.join(REPO, "train.py"), "--config",
            os.path.join(REPO, "configs", "tiny.py"), "--workdir", workdir,
            f"--config.train.num_steps={args.steps}",
            f"--config.train.checkpoint_every={args.checkpoint_every}"]


def environment() -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
                XLA_FLAGS="--xla_backend_optimization_level=0",
                JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(),
                                                       "dit3d_jax_test_jax_cache"),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def losses(workdir: str) -> list[tuple[int, float]]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


def checkpoints(workdir: str) -> list[int]:
    path = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def final_state(workdir: str, step: int) -> dict:
    """{path: numpy array} of the TrainState saved at `step`."""
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    warnings.filterwarnings("ignore", message="Sharding info not provided")  # 1 device: fine
    tree = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                         "state"))
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=5, help="how many SIGKILLs")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--checkpoint-every", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    p.add_argument("--out", default=None, help="scratch directory (default: a new temp dir)")
    args = p.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="soak_kill_")
    os.makedirs(out, exist_ok=True)
    straight, killed = os.path.join(out, "straight"), os.path.join(out, "killed")
    for path in (straight, killed):
        shutil.rmtree(path, ignore_errors=True)
    env, rng = environment(), random.Random(args.seed)

    t0 = time.perf_counter()
    with open(os.path.join(out, "straight.log"), "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command(straight, args), env=env, cwd=REPO, stdout=log,
                                stderr=log)
        while proc.poll() is None and not losses(straight):
            time.sleep(0.05)
        startup = time.perf_counter() - t0
        proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(open(os.path.join(out, "straight.log"), encoding="utf-8").read()[-3000:])
        return 1
    window = (wall - startup) / (args.n + 1)
    print(f"straight run: {args.steps} steps in {wall:.1f} s ({startup:.1f} s to the first "
          f"step); kills: 1/4 in [0, {startup:.1f}) s after a start, 3/4 in [0, {window:.1f}) s "
          f"after a life's first step")

    for i in range(args.n):
        in_startup = rng.random() < 0.25
        delay = rng.uniform(0.0, startup if in_startup else window)
        before = checkpoints(killed)
        path = os.path.join(out, f"kill_{i}.log")
        with open(path, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(command(killed, args), env=env, cwd=REPO, stdout=log,
                                    stderr=log)
            if not in_startup:  # wait for this life's first step
                while proc.poll() is None and "First log at step" not in open(
                        path, encoding="utf-8").read():
                    time.sleep(0.05)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.kill()  # SIGKILL
                proc.wait()
        logged = losses(killed)
        print(f"kill {i + 1}/{args.n}: {delay:5.1f} s after "
              f"{'the start' if in_startup else 'its first step'}, exit {proc.returncode}, "
              f"checkpoints {before} -> {checkpoints(killed)}, last logged step "
              f"{logged[-1][0] if logged else None}")

    done = subprocess.run(command(killed, args), env=env, cwd=REPO, capture_output=True,
                          text=True)
    if done.returncode != 0:
        print(done.stderr[-3000:])
        return 1
    a, b = final_state(straight, args.steps), final_state(killed, args.steps)
    same_state = a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)
    same_losses = losses(straight) == losses(killed)
    print(f"final run resumed and finished; losses identical: {same_losses} "
          f"({len(losses(killed))} steps); TrainState identical: {same_state} ({len(a)} arrays)")
    return 0 if same_state and same_losses else 1


if __name__ == "__main__":
    sys.exit(main())
