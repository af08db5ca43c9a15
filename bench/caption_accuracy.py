"""Learning check: does a trained DiT3D draw what its caption says?

    python bench/caption_accuracy.py --config configs/shapes_demo.py --workdir runs/demo
    python bench/caption_accuracy.py --config configs/shapes_demo.py:size=gpu --workdir runs/acc_big

Trains `--config` (with `--config.NAME=VALUE` overrides, as train.py) in `--workdir` (resuming;
skipped with --no-train), then samples `--num` videos for each held-out caption and for up to
`--max-train-captions` training captions, and scores them with the analytic detector
(`dit3d_jax.data.detector`): the fraction whose colour, shape and direction all match the
prompt, and each attribute alone. Prints a table and writes WORKDIR/caption_accuracy.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from dit3d_jax.utils import compile_cache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from dit3d_jax.utils.cli import ArgumentParser, UsageError, run


def parse_args(argv):
    """(flags, config): the flags and the training config (`--config` with its
    `--config.NAME=VALUE` overrides, as train.py reads them); UsageError for bad input."""
    from dit3d_jax.train.config import parse_config_args
    p = ArgumentParser(description=__doc__.split("\n")[0],
                       epilog="--config.NAME=VALUE overrides any field of the config")
    p.add_argument("--config", default="configs/shapes_demo.py",
                   metavar="configs/NAME.py[:arg]", help="training config")
    p.add_argument("--workdir", required=True, help="run directory (trained here, or already "
                   "trained)")
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                   help="train (or resume) before scoring")
    p.add_argument("--num", type=int, default=2, help="samples per caption")
    p.add_argument("--max-train-captions", type=int, default=24,
                   help="training captions scored (evenly spaced)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--cfg-scale", type=float, default=None, help="default: the config's")
    p.add_argument("--sample-steps", type=int, default=None, help="default: the config's")
    p.add_argument("--verbose", action="store_true", help="show the traceback of a user error")
    compile_cache.add_flag(p)
    return parse_config_args(p, argv)


def score(model, params, config, captions, encoder, args):
    """-> (accuracy dict, seconds) for `args.num` samples of each caption (prompted with the
    caption, or with its class label for a model without text)."""
    from dit3d_jax.data.detector import caption_accuracy, parse_caption
    from dit3d_jax.data.shapes import label_of
    from dit3d_jax.diffusion.objective import make_objective
    from dit3d_jax.generate import generate, sample_settings
    if encoder is not None:
        condition = dict(prompts=captions, encoder=encoder)
    else:
        condition = dict(labels=[label_of(**parse_caption(c)) for c in captions])
    start = time.perf_counter()
    videos = generate(model, params, make_objective(config.objective, model.learn_sigma),
                      num=args.num, seed=args.seed, **condition,
                      **sample_settings(config, steps=args.sample_steps,
                                        cfg_scale=args.cfg_scale))
    expected = [c for c in captions for _ in range(args.num)]
    return caption_accuracy(videos, expected), time.perf_counter() - start


def main(argv) -> int:
    args, train_config = parse_args(argv)
    from dit3d_jax.utils.logging import narrate_to_stderr
    narrate_to_stderr()
    from dit3d_jax.data.shapes import captions as split_captions
    from dit3d_jax.generate import text_encoder_for
    from dit3d_jax.train.checkpoint import load_workdir
    from dit3d_jax.train.config import ConfigError
    from dit3d_jax.train.loop import train_and_evaluate

    compile_cache.enable(args.compile_cache)
    train_seconds = None
    if args.train:
        start = time.perf_counter()
        try:
            train_and_evaluate(train_config, args.workdir)
        except ConfigError as err:  # as train.py: its data, init_from or checkpoints
            raise UsageError(str(err)) from err
        train_seconds = time.perf_counter() - start
    model, params, config = load_workdir(args.workdir)
    if config.data.name != "moving_shapes":
        raise UsageError(f"--workdir {args.workdir!r}: the learning check needs a run trained "
                         f"on moving_shapes, got data.name={config.data.name!r}")
    encoder = text_encoder_for(config) if model.input_spec.text_dim > 0 else None
    train_caps = list(split_captions("train", config.data.config))
    stride = max(1, len(train_caps) // args.max_train_captions)
    splits = {"heldout": list(split_captions("heldout", config.data.config)),
              "train": train_caps[::stride][:args.max_train_captions]}
    report = {"workdir": os.path.abspath(args.workdir), "train_seconds": train_seconds,
              "num_steps": int(config.train.num_steps), "samples_per_caption": args.num}
    print(f"{'split':8} {'videos':>6} {'all':>6} {'colour':>7} {'shape':>6} {'direction':>9}"
          f" {'sample s':>8}")
    for split, caps in splits.items():
        acc, seconds = score(model, params, config, caps, encoder, args)
        report[split] = dict(acc, videos=len(caps) * args.num, sample_seconds=seconds)
        print(f"{split:8} {len(caps) * args.num:6d} {acc['all']:6.1%} {acc['colour']:7.1%} "
              f"{acc['shape']:6.1%} {acc['direction']:9.1%} {seconds:8.1f}")
    harness.write_json(os.path.join(args.workdir, "caption_accuracy.json"), report)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
