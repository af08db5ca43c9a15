"""JAX's persistent compilation cache for the entry points: a second run loads instead of compiling.

    from dit3d_jax.utils import compile_cache
    compile_cache.add_flag(parser)                    # argparse: --compile-cache DIR|off
    compile_cache.enable(args.compile_cache)          # before the first jit runs

Where the cache lives, first match wins: the flag's value; $DIT3D_JAX_CACHE; jax's own
$JAX_COMPILATION_CACHE_DIR; ~/.cache/dit3d_jax/jax_cache. The value "off" (flag or variable)
turns the cache off. Entries are keyed by the program, the XLA flags, the device and the jax
version, so a changed model, shape, flag or upgrade compiles afresh; deleting the directory is
always safe. Any compile that takes at least MIN_COMPILE_S is written (jax's default of 1 s would
skip most of a small CPU model's compiles), whatever its size.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

ENV_VAR = "DIT3D_JAX_CACHE"
DEFAULT_DIR = os.path.join("~", ".cache", "dit3d_jax", "jax_cache")
OFF = "off"
MIN_COMPILE_S = 0.1


def cache_dir(choice: Optional[str] = None) -> Optional[str]:
    """The cache directory for a flag value (None: not given), or None when the cache is off."""
    for value in (choice, os.environ.get(ENV_VAR), os.environ.get("JAX_COMPILATION_CACHE_DIR"),
                  DEFAULT_DIR):
        if value:
            return None if value.strip().lower() == OFF else os.path.abspath(
                os.path.expanduser(value))
    return None


def enable(choice: Optional[str] = None) -> Optional[str]:
    """Points jax at the cache directory of `choice` (see cache_dir) and returns it, or turns the
    cache off and returns None. Call before the first compilation. A directory that cannot be
    created costs only the cache: one warning on stderr, and the run goes on without it."""
    import jax

    directory = cache_dir(choice)
    if directory is not None:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as err:
            print(f"warning: compilation cache {directory!r} unusable ({err.strerror}); "
                  f"compiling without it", file=sys.stderr)
            directory = None
    if directory is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def add_flag(parser) -> None:
    """Adds `--compile-cache DIR|off` to an argparse parser (default: see cache_dir)."""
    parser.add_argument("--compile-cache", metavar="DIR|off", default=None,
                        help=f"persistent compilation cache directory, or 'off' (default: "
                             f"${ENV_VAR}, else ~/.cache/dit3d_jax/jax_cache)")
