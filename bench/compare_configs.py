"""Train-step cost of whole training configs side by side (e.g. ViT3D vs DiT3D on the demo).

    python bench/compare_configs.py configs/shapes_demo.py configs/vit3d_shapes.py \
        --freeze none backbone --steps 5 --rounds 3

For each config × freeze mode: parameters, trainable parameters, matmul FLOPs of one forward per
clip (counted in the traced program, `flops.jaxpr_matmul_flops`), and the steady steps/s of the
config's own jitted train step (`make_train_step`, the config's batch size, random clips and
captions), each step synchronised. The cases are timed in interleaved rounds (A, B, A, B, …) and
the median round is reported, so a machine whose load drifts slows every case alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flops  # noqa: E402
import harness  # noqa: E402


def random_batch(model, batch: int, text_len: int) -> dict:
    """A host batch of uniform clips in [-1, 1] and random captions (lengths 1..text_len)."""
    import numpy as np
    rng = np.random.default_rng(0)
    s, c = model.input_size, model.in_channels
    out = {"video": rng.uniform(-1, 1, (batch, model.num_frames, s, s, c)).astype(np.float32),
           "label": rng.integers(0, max(model.num_classes, 1), batch).astype(np.int32)}
    if model.text_dim:
        out["text_emb"] = rng.standard_normal((batch, text_len, model.text_dim)).astype(
            np.float32)
        out["text_mask"] = np.arange(text_len)[None] < rng.integers(1, text_len + 1, batch)[:, None]
    return out


def prepare(path: str, freeze: str) -> dict:
    """Compiled step, state and batch of one case, plus its counts."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from dit3d_jax.diffusion.objective import make_objective
    from dit3d_jax.models import count_params, param_shapes
    from dit3d_jax.train import create_train_state, make_mesh, make_train_step, shard_batch
    from dit3d_jax.train.config import load_config_file
    from dit3d_jax.train.loop import model_from_config
    from dit3d_jax.train.optim import TRAINABLE, freeze_labels

    config = load_config_file(path, {"optim.freeze": freeze})
    model = model_from_config(config)
    shapes = param_shapes(model)
    labels = jax.tree_util.tree_leaves(freeze_labels(model, freeze))
    trainable = sum(int(np.prod(s.shape)) for lab, s in
                    zip(labels, jax.tree_util.tree_leaves(shapes)) if lab == TRAINABLE)
    text_len = config.data.text_max_length
    one = random_batch(model, 1, text_len)
    cond = dict(text=one.get("text_emb"), text_mask=one.get("text_mask"))
    forward = flops.jaxpr_matmul_flops(
        lambda p, x, t: model.apply({"params": p}, x, t, **cond), shapes, one["video"],
        jnp.zeros((1,)))
    objective = make_objective(config.objective, model.learn_sigma)
    mesh = make_mesh(config.mesh)
    state, sharding = create_train_state(config, model, objective, mesh, jax.random.key(0))
    step = make_train_step(config, model, objective, mesh, sharding)
    batch = shard_batch(mesh, random_batch(model, config.data.global_batch_size, text_len))
    start = time.perf_counter()
    state, _ = step(state, batch)
    jax.block_until_ready(state)
    return dict(name=f"{os.path.basename(path)} freeze={freeze}", step=step, state=state,
                batch=batch, params=count_params(shapes), trainable=trainable,
                gflop=forward / 1e9, compile_s=time.perf_counter() - start,
                batch_size=config.data.global_batch_size, rates=[])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", help="configs/NAME.py files")
    parser.add_argument("--freeze", nargs="+", default=["none"], help="optim.freeze modes")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import jax

    cases = [prepare(path, freeze) for path in args.configs for freeze in args.freeze]
    for _ in range(args.rounds):
        for case in cases:
            start = time.perf_counter()
            for _ in range(args.steps):
                case["state"], metrics = case["step"](case["state"], case["batch"])
            jax.block_until_ready(metrics)
            case["rates"].append(args.steps / (time.perf_counter() - start))
    rows = [[c["name"], f"{c['params']:,}", f"{c['trainable']:,}", f"{c['gflop']:.3f}",
             f"{c['compile_s']:.0f}", str(c["batch_size"]),
             f"{statistics.median(c['rates']):.2f} ({min(c['rates']):.2f}–{max(c['rates']):.2f})"]
            for c in cases]
    info = harness.machine()
    title = (f"{info['cpu_model']} ({info['cpu_cores']} cores), {jax.default_backend()}, jax "
             f"{info['jax']}, flax {info['flax']}: {args.rounds} interleaved rounds of "
             f"{args.steps} steps")
    harness.print_table(["case", "params", "trainable", "fwd GFLOP/clip", "first step s",
                        "batch", "steps/s median (min–max)"], rows, title=title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
