"""How every entry point ends on bad input: one `error: …` line on stderr and exit status 2.

    from dit3d_jax.utils.cli import UsageError, run

    def main(argv) -> int:
        ...
        raise UsageError(f"--vae {path!r}: expected a directory with model.json, got a file")

    if __name__ == "__main__":
        sys.exit(run(main))

A UsageError is the user's to fix (a bad flag, path, file or shape): its message names what was
expected and what arrived. Any other exception is a bug and keeps its traceback. `--verbose`
(or DIT3D_VERBOSE=1) shows the traceback of a UsageError too.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, Optional, Sequence


class UsageError(Exception):
    """Bad input from the user; reported as one line, exit status 2."""


def verbose_requested(argv: Sequence[str]) -> bool:
    return "--verbose" in argv or os.environ.get("DIT3D_VERBOSE", "") not in ("", "0")


def run(main: Callable[[Sequence[str]], Optional[int]], argv: Optional[Sequence[str]] = None
        ) -> int:
    """main(argv) -> exit status; a UsageError becomes `error: MESSAGE` and status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv) or 0
    except UsageError as err:
        if verbose_requested(argv):
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
