"""Trains a DiT (image) or DiT3D (video) diffusion transformer.

    python train.py --config configs/dit3d_s2.py --workdir runs/dit3d_s2
    python train.py --config configs/tiny.py --workdir /tmp/tiny --config.train.num_steps=20
    python train.py --config configs/shapes_demo.py:size=gpu --workdir runs/demo_gpu

`configs/NAME.py:arg` picks a named variant of the file (its get_config(arg) lists them);
`--config.a.b=value` (or `--config.a.b value`) overrides a field of the (locked) config, so a
misspelt name is an error. Re-running with the same --workdir resumes from its newest checkpoint
that restores. Bad input (flag, config file, override, data path, init_from, checkpoints) is one
`error:` line and exit status 2; a failed checkpoint write one `error:` line and exit status 1
(--verbose: tracebacks). The loop lives in `dit3d_jax.train.loop.train_and_evaluate`;
`dit3d_jax.train.config.load_config_file(path, overrides)` builds the same config in-process (a
notebook, a test).
"""
import sys

from dit3d_jax.utils import compile_cache
from dit3d_jax.utils.cli import ArgumentParser, Failure, UsageError, run
from dit3d_jax.utils.logging import narrate_to_stderr


def parse_args(argv):
    """(flags, config): the flags and the locked config with its overrides applied; UsageError
    for a bad flag, config file, variant or override."""
    # pylint: disable=import-outside-toplevel
    from dit3d_jax.train.config import parse_config_args
    p = ArgumentParser(description=__doc__.split("\n")[0],
                       epilog="--config.NAME=VALUE overrides any field of the config")
    p.add_argument("--config", required=True, metavar="configs/NAME.py[:arg]",
                   help="training config, with a named variant after ':'")
    p.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics.jsonl, "
                   "tb/, config.json, model.json); re-running with it resumes")
    p.add_argument("--verbose", action="store_true", help="show the traceback of a user error")
    compile_cache.add_flag(p)
    return parse_config_args(p, argv)


def main(argv) -> int:
    args, config = parse_args(argv)
    narrate_to_stderr()
    # pylint: disable=import-outside-toplevel
    from dit3d_jax.train.checkpoint import WriteError
    from dit3d_jax.train.config import ConfigError
    from dit3d_jax.train.loop import train_and_evaluate
    compile_cache.enable(args.compile_cache)
    try:
        train_and_evaluate(config, args.workdir)
    except ConfigError as err:  # the config, its data, init_from or the workdir's checkpoints
        raise UsageError(str(err)) from err
    except WriteError as err:  # disk full, permission, I/O error
        raise Failure(str(err)) from err
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
