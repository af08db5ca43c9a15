"""Trains a DiT (image) or DiT3D (video) diffusion transformer.

    python train.py --config configs/dit3d_s2.py --workdir runs/dit3d_s2
    python train.py --config configs/tiny.py --workdir /tmp/tiny --config.train.num_steps=20
    python train.py --config configs/shapes_demo.py:size=gpu --workdir runs/demo_gpu

`configs/NAME.py:arg` picks a named variant of the file (its get_config(arg) lists them);
`--config.a.b=value` overrides a field of the (locked) config, so a misspelt name is an error.
Re-running with the same --workdir resumes from its newest checkpoint that restores. Bad input
(flag, config file, override, data path, init_from, checkpoints) is one `error:` line and exit
status 2; a failed checkpoint write one `error:` line and exit status 1 (--verbose: tracebacks).
The loop lives in `dit3d_jax.train.loop.train_and_evaluate`;
`dit3d_jax.train.config.load_config_file(path, overrides)` builds the same config in-process (a
notebook, a test).
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from dit3d_jax.utils.cli import Failure, UsageError, report, run, verbose_requested

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config: configs/NAME.py[:arg].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics.jsonl, tb/, "
                    "config.json, model.json); re-running with it resumes.")
flags.DEFINE_bool("verbose", False, "Show the traceback of a user error too.")
flags.DEFINE_string("compile_cache", None, "Persistent compilation cache directory, or 'off' "
                    "(default: $DIT3D_JAX_CACHE, else ~/.cache/dit3d_jax/jax_cache).")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
    """absl's flag parsing; a bad flag, config file or override ends in one `error:` line on
    stderr and exit status 2."""
    try:
        return _parse(argv)
    except UsageError as err:
        sys.exit(report(err, verbose_requested(argv), 2))


def _parse(argv):
    given = None  # the --config value
    for i, arg in enumerate(argv):  # config_flags reports a missing file in a traceback
        value = (argv[i + 1] if arg == "--config" and i + 1 < len(argv) else
                 arg[len("--config="):] if arg.startswith("--config=") else None)
        given = given if value is None else value
        if value is not None and not os.path.isfile(value.split(":", 1)[0]):
            raise UsageError(f"--config {value!r}: expected a configs/NAME.py file, found no "
                             f"file {value.split(':', 1)[0]!r}")
    # pylint: disable=import-outside-toplevel
    from dit3d_jax.train.config import config_error_in, unknown_field_message
    try:
        return FLAGS(argv)
    except flags.Error as err:
        cause = config_error_in(err)  # a named variant the file does not have
        if cause is not None:
            raise UsageError(f"--config {given!r}: {cause}") from err
        raise UsageError(f"{err} (see --helpshort)") from err
    except (KeyError, AttributeError) as err:
        overrides = [a for a in argv[1:] if a.startswith("--config.")]
        raise UsageError(f"a --config override names no field of the config "
                         f"({' '.join(overrides)}): {unknown_field_message(err)}") from err


def main(argv):
    """Trains FLAGS.config in FLAGS.workdir; argv: what absl left after its flags."""
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # pylint: disable=import-outside-toplevel
    from dit3d_jax.train.checkpoint import WriteError
    from dit3d_jax.train.config import ConfigError
    from dit3d_jax.train.loop import train_and_evaluate
    from dit3d_jax.utils import compile_cache
    compile_cache.enable(FLAGS.compile_cache)
    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except ConfigError as err:  # the config, its data, init_from or the workdir's checkpoints
        raise UsageError(str(err)) from err
    except WriteError as err:  # disk full, permission, I/O error
        raise Failure(str(err)) from err


if __name__ == "__main__":
    # run(): a UsageError -> one line, exit 2; a failed save -> one line, exit 1 (--verbose is
    # read from the whole command line, as absl has consumed it by then).
    app.run(lambda argv: run(lambda _: main(argv), sys.argv[1:]), flags_parser=parse_flags)
