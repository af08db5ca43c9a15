"""How every entry point ends on bad input: one `error: …` line on stderr and exit status 2.

    from dit3d_jax.utils.cli import UsageError, run

    def main(argv) -> int:
        ...
        raise UsageError(f"--vae {path!r}: expected a directory with model.json, got a file")

    if __name__ == "__main__":
        sys.exit(run(main))

A UsageError is the user's to fix (a bad flag, path, file or shape): its message names what was
expected and what arrived. A Failure (a write that failed: disk full, permission, I/O error) is
one line too, with exit status 1. Any other exception is a bug and keeps its traceback. `--verbose`
(or DIT3D_VERBOSE=1) shows the traceback of a UsageError too.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from typing import Callable, Optional, Sequence


class UsageError(Exception):
    """Bad input from the user; reported as one line, exit status 2."""


class Failure(Exception):
    """The run stopped for a cause outside the program (a failed write: disk full, permission,
    I/O error); reported as one line, exit status 1."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (an unknown flag, a bad value) raise UsageError instead of printing
    the usage and exiting."""

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


def verbose_requested(argv: Sequence[str]) -> bool:
    return "--verbose" in argv or os.environ.get("DIT3D_VERBOSE", "") not in ("", "0")


def run(main: Callable[[Sequence[str]], Optional[int]], argv: Optional[Sequence[str]] = None
        ) -> int:
    """main(argv) -> exit status; a UsageError becomes `error: MESSAGE` and status 2, a Failure
    `error: MESSAGE` and status 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv) or 0
    except UsageError as err:
        return report(err, verbose_requested(argv), 2)
    except Failure as err:
        return report(err, verbose_requested(argv), 1)


def report(err: BaseException, verbose: bool, status: int) -> int:
    """Prints `error: MESSAGE` on stderr (after the traceback when verbose); returns status."""
    if verbose:
        traceback.print_exception(err)
    print(f"error: {err}", file=sys.stderr)
    return status


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one readable line, `Type: message` of its root cause (the end of its
    `raise … from` chain; libraries such as orbax wrap the real error), led by the operating
    system's words when there is an errno (an OSError, or TensorStore's 'os_error_code')."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = " ".join(str(err).split()) or repr(err)
    if len(text) > limit:
        text = text[:limit] + "…"
    text = f"{type(err).__name__}: {text}"
    if isinstance(err, OSError) and err.strerror:
        return text
    code = re.search(r"os_error_code='?(\d+)", str(err))
    return f"{os.strerror(int(code.group(1)))} ({text})" if code else text
