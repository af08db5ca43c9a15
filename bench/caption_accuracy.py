"""Learning check: does a trained DiT3D draw what its caption says?

    python bench/caption_accuracy.py --config configs/shapes_demo.py --workdir runs/demo
    python bench/caption_accuracy.py --config configs/shapes_demo.py:size=gpu --workdir runs/acc_big

Trains `--config` in `--workdir` (resuming; skipped with --notrain), then samples `--num` videos
for each held-out caption and for up to `--max_train_captions` training captions, and scores them
with the analytic detector (`dit3d_jax.data.detector`): the fraction whose colour, shape and
direction all match the prompt, and each attribute alone. Prints a table and writes
WORKDIR/caption_accuracy.json.
"""
from __future__ import annotations

import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/shapes_demo.py", "Training config.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (trained here, or already trained).")
flags.DEFINE_bool("train", True, "Train (or resume) before scoring.")
flags.DEFINE_integer("num", 2, "Samples per caption.")
flags.DEFINE_integer("max_train_captions", 24, "Training captions scored (evenly spaced).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_float("cfg_scale", None, "Default: the config's.")
flags.DEFINE_integer("sample_steps", None, "Default: the config's.")
flags.DEFINE_string("compile_cache", None, "Persistent compilation cache directory, or 'off' "
                    "(default: $DIT3D_JAX_CACHE, else ~/.cache/dit3d_jax/jax_cache).")
flags.mark_flags_as_required(["workdir"])


def score(model, params, config, captions, encoder, seed):
    """-> (accuracy dict, seconds) for `FLAGS.num` samples of each caption."""
    from dit3d_jax.data.detector import caption_accuracy
    from dit3d_jax.diffusion.objective import make_objective
    from dit3d_jax.generate import generate, sample_settings
    start = time.perf_counter()
    videos = generate(model, params, make_objective(config.objective, model.learn_sigma),
                      prompts=captions, num=FLAGS.num, seed=seed, encoder=encoder,
                      **sample_settings(config, steps=FLAGS.sample_steps,
                                        cfg_scale=FLAGS.cfg_scale))
    expected = [c for c in captions for _ in range(FLAGS.num)]
    return caption_accuracy(videos, expected), time.perf_counter() - start


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from dit3d_jax.data.shapes import captions as split_captions
    from dit3d_jax.generate import text_encoder_for
    from dit3d_jax.train.checkpoint import load_workdir
    from dit3d_jax.train.loop import train_and_evaluate
    from dit3d_jax.utils import compile_cache

    compile_cache.enable(FLAGS.compile_cache)
    train_seconds = None
    if FLAGS.train:
        start = time.perf_counter()
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
        train_seconds = time.perf_counter() - start
    model, params, config = load_workdir(FLAGS.workdir)
    if config.data.name != "moving_shapes":
        raise app.UsageError("the learning check needs a run trained on moving_shapes")
    encoder = text_encoder_for(config)
    train_caps = list(split_captions("train", config.data.config))
    stride = max(1, len(train_caps) // FLAGS.max_train_captions)
    splits = {"heldout": list(split_captions("heldout", config.data.config)),
              "train": train_caps[::stride][:FLAGS.max_train_captions]}
    report = {"workdir": os.path.abspath(FLAGS.workdir), "train_seconds": train_seconds,
              "num_steps": int(config.train.num_steps), "samples_per_caption": FLAGS.num}
    print(f"{'split':8} {'videos':>6} {'all':>6} {'colour':>7} {'shape':>6} {'direction':>9}"
          f" {'sample s':>8}")
    for split, caps in splits.items():
        acc, seconds = score(model, params, config, caps, encoder, FLAGS.seed)
        report[split] = dict(acc, videos=len(caps) * FLAGS.num, sample_seconds=seconds)
        print(f"{split:8} {len(caps) * FLAGS.num:6d} {acc['all']:6.1%} {acc['colour']:7.1%} "
              f"{acc['shape']:6.1%} {acc['direction']:9.1%} {seconds:8.1f}")
    path = os.path.join(FLAGS.workdir, "caption_accuracy.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
