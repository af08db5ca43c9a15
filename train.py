"""Trains a DiT (image) or DiT3D (video) diffusion transformer.

    python train.py --config configs/dit3d_s2.py --workdir runs/dit3d_s2
    python train.py --config configs/tiny.py --workdir /tmp/tiny --config.train.num_steps=20

`--config.a.b=value` overrides a field of the (locked) config, so a misspelt name is an error.
Re-running with the same --workdir resumes from its latest checkpoint. The loop lives in
`dit3d_jax.train.loop.train_and_evaluate`; `dit3d_jax.train.config.load_config_file(path,
overrides)` builds the same config in-process (a notebook, a test).
"""
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config: configs/NAME.py[:arg].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics.jsonl, tb/, "
                    "config.json, model.json); re-running with it resumes.")
flags.DEFINE_string("compile_cache", None, "Persistent compilation cache directory, or 'off' "
                    "(default: $DIT3D_JAX_CACHE, else ~/.cache/dit3d_jax/jax_cache).")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
    """absl parsing, with a one-line error for an override the locked config does not have."""
    try:
        return FLAGS(argv)
    except flags.Error as err:
        sys.exit(f"FATAL Flags parsing error: {err}\nPass --helpshort or --helpfull to see help.")
    except (KeyError, AttributeError) as err:
        from dit3d_jax.train.config import (  # pylint: disable=import-outside-toplevel
            unknown_field_message)
        overrides = [a for a in argv[1:] if a.startswith("--config.")]
        sys.exit(f"train.py: a --config override names no field of the config "
                 f"({' '.join(overrides)}): {unknown_field_message(err)}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from dit3d_jax.train.loop import train_and_evaluate  # pylint: disable=import-outside-toplevel
    from dit3d_jax.utils import compile_cache  # pylint: disable=import-outside-toplevel
    compile_cache.enable(FLAGS.compile_cache)
    train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
