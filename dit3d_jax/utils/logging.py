"""Training metrics on disk and on the terminal.

    writer = MetricsWriter(workdir, start_step=restored_step)   # process 0 only writes
    writer.write(step, {"loss": 0.12, "lr": 1e-4})   # -> workdir/metrics.jsonl + workdir/tb events
    bar = ProgressBar(total=num_steps, initial=restored_step)
    bar.update(step, loss=0.12)                      # step, loss, steps/s and ETA on one line

metrics.jsonl holds one JSON object a line, {"step": int, name: float, ...}, in step order. A run
that resumes from step s first drops the lines with step > s (written by a run that died after its
last checkpoint), so the file always reads as one run. TensorBoard events go to workdir/tb.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import traceback
from typing import Mapping, Sequence

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"


_ORBAX = f"{os.sep}orbax{os.sep}"


class _LibraryFilter(logging.Filter):
    """Drops records below WARNING whose source file lies in one of the named packages; with
    `echoes` also orbax's ERROR records that carry a traceback (a failed background save logs
    it at every level it passes through; the caller raises the same error once)."""

    def __init__(self, packages: Sequence[str]):
        super().__init__()
        self.parts = tuple(f"{os.sep}{p}{os.sep}" for p in packages)
        self.echoes = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.echoes and record.exc_info and _ORBAX in record.pathname:
            return False
        return record.levelno >= logging.WARNING or not any(
            part in record.pathname for part in self.parts)


class _AsyncioEchoFilter(logging.Filter):
    """Drops asyncio's "exception was never retrieved" for the tasks of an orbax write (one
    record with a traceback per array when a save fails)."""

    def filter(self, record: logging.LogRecord) -> bool:
        tb = record.exc_info[2] if record.exc_info else None
        return not any(_ORBAX in name for name in _traceback_files(tb))


def _traceback_files(tb) -> list[str]:
    """The source file of each frame of traceback `tb` ([] for None)."""
    return [f.filename for f in traceback.extract_tb(tb)] if tb is not None else []


def narrate_to_stderr() -> None:
    """Log records at INFO and up go to stderr in absl's line format (`I1205 00:59:21.366600
    140561357224832 loop.py:412] Creating device mesh…`), for an entry point (train.py, the
    learning check) to show the trainer's narration. A root handler some import installed
    (absl's first log call without app.run adds a plain one) gets that format instead of a
    second handler beside it. Calling it again adds nothing."""
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    if not logging.root.handlers:
        logging.root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in logging.root.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setFormatter(absl_logging.PythonFormatter())
    logging.root.setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)


def quiet_library_logs(packages: Sequence[str] = ("orbax",), *,
                       verbose: bool | None = None) -> None:
    """Hides the INFO chatter of `packages` (orbax logs every save in detail), so the trainer's
    own narration stays readable. Warnings still show.

    Works with and without absl's app.run (which puts absl's handler on the root logger; without
    it, absl's first log call sets up a plain root handler, as in a notebook or a test), because
    nothing here touches a handler: packages that log through absl (orbax does) log on the
    'absl' logger, which gets a filter on the record's source path; packages with loggers of
    their own (`logging.getLogger(package)`) get level WARNING, unless one was set. Calling it
    again adds nothing.

    Unless verbose (default: `--verbose` on the command line or DIT3D_VERBOSE=1), the echoes
    of orbax errors are dropped too (`_LibraryFilter.echoes`, `_AsyncioEchoFilter`,
    `_quiet_thread_echoes`): a failed save then reads as the one error line its caller
    reports, not as a traceback per array."""
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    from dit3d_jax.utils.cli import verbose_requested  # pylint: disable=import-outside-toplevel
    quiet = _LibraryFilter(packages)
    absl_logger = absl_logging.get_absl_logger()
    same = [f for f in absl_logger.filters
            if isinstance(f, _LibraryFilter) and f.parts == quiet.parts]
    if same:
        quiet = same[0]
    else:
        absl_logger.addFilter(quiet)
    for package in packages:
        logger = logging.getLogger(package)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
    if verbose if verbose is not None else verbose_requested(sys.argv[1:]):
        return
    quiet.echoes = True
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _AsyncioEchoFilter) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_AsyncioEchoFilter())
    _quiet_thread_echoes()


def _quiet_thread_echoes() -> None:
    """After a failed orbax write, TensorStore's callbacks find orbax's event loop closed and
    Python prints "RuntimeError: Event loop is closed" once per array (sys.unraisablehook);
    after a failed restore, orbax's abandoned read coroutines print their error the same way,
    at whatever moment they are garbage-collected; on a full disk TensorBoard's writer thread
    dies with a traceback (threading.excepthook). The checkpoint code reports each of those
    failures itself, once, so these echoes become nothing (TensorBoard's: one warning line);
    every other exception keeps its hook."""
    if getattr(sys.unraisablehook, "dit3d_quiet", False):
        return
    unraisable, thread_hook = sys.unraisablehook, threading.excepthook

    def raised_in_orbax(info) -> bool:
        code = getattr(info.object, "cr_code", None)  # a coroutine closed with its error
        files = _traceback_files(info.exc_traceback) + ([code.co_filename] if code else [])
        return any(_ORBAX in name for name in files)

    def on_unraisable(info):
        closed_loop = (isinstance(info.exc_value, RuntimeError)
                       and str(info.exc_value) == "Event loop is closed")
        if not (closed_loop or raised_in_orbax(info)):
            unraisable(info)

    def on_thread_error(args):
        if isinstance(args.exc_value, OSError) and any(
                f"{os.sep}tensorboardX{os.sep}" in name
                for name in _traceback_files(args.exc_traceback)):
            logging.getLogger(__name__).warning("TensorBoard event writer stopped: %s",
                                                args.exc_value)
            return
        thread_hook(args)

    on_unraisable.dit3d_quiet = True
    sys.unraisablehook, threading.excepthook = on_unraisable, on_thread_error


def read_metrics(workdir: str) -> list[dict]:
    """The records of workdir/metrics.jsonl (an empty list when there is none)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _number(value) -> float | int | None:
    """A JSON-able scalar: ints stay ints, NaN/inf become None (JSON has no NaN)."""
    if isinstance(value, (bool, int)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


class MetricsWriter:
    """Scalars per step to workdir/metrics.jsonl and TensorBoard (workdir/tb); text and images
    (write_text, write_image) to TensorBoard only.

    workdir: the run directory. start_step: the step the run starts from; records after it are
    dropped from metrics.jsonl. enabled: False makes every call a no-op (processes other than 0).
    """

    def __init__(self, workdir: str, *, start_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        self._file = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, METRICS_FILE)
        kept = [r for r in read_metrics(workdir) if r.get("step", 0) <= start_step]
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(path + ".tmp", path)
        self._file = open(path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
        self._tb = SummaryWriter(os.path.join(workdir, TB_DIR))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """One record: {"step": step, **scalars}; flushed at once (a killed run keeps it)."""
        if not self.enabled:
            return
        record = {"step": int(step)}
        record.update({k: _number(v) for k, v in scalars.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in scalars.items():
            self._tb.add_scalar(name, float(value), int(step))
        self._tb.flush()

    def write_text(self, tag: str, text: str, step: int = 0) -> None:
        """A text entry in TensorBoard (e.g. the resolved config)."""
        if self.enabled:
            self._tb.add_text(tag, text, step)

    def write_image(self, tag: str, image, step: int) -> None:
        """An image entry in TensorBoard: image (H, W, 3) uint8 (e.g. a preview grid)."""
        if self.enabled:
            self._tb.add_image(tag, image, int(step), dataformats="HWC")
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class ProgressBar:
    """A tqdm bar over training steps: step/total, steps/s, ETA and the last logged loss.

    total: the last step; initial: the step the run starts from. enabled: False shows nothing.
    """

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                             file=sys.stderr, desc="train", smoothing=0.1)
        self._step = initial

    def update(self, step: int, **postfix: float) -> None:
        """Moves the bar to `step`; postfix values (e.g. loss=...) are shown next to it."""
        if self._bar is None:
            return
        if step > self._step:
            self._bar.update(step - self._step)
            self._step = step
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def write(self, line: str) -> None:
        """Prints a line above the bar (or to stderr when there is no bar)."""
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
