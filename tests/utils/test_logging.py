"""quiet_library_logs: orbax's INFO chatter is filtered in-process (no absl app.run), our own INFO
lines and every library warning still show."""
import io
import logging

import jax.numpy as jnp
import pytest
from absl import logging as absl_logging

from dit3d_jax.train.checkpoint import Checkpointer
from dit3d_jax.utils.logging import quiet_library_logs


@pytest.fixture
def captured():
    """Log output as a notebook sees it: a plain handler on the root logger (what absl's first log
    call sets up without app.run), absl at INFO, and no filter left by an earlier test."""
    absl_logger = absl_logging.get_absl_logger()
    orbax_logger = logging.getLogger("orbax")
    saved = (list(absl_logger.filters), orbax_logger.level, absl_logging.get_verbosity())
    absl_logger.filters.clear()
    orbax_logger.setLevel(logging.NOTSET)
    absl_logging.set_verbosity(absl_logging.INFO)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(pathname)s| %(message)s"))
    logging.root.addHandler(handler)
    yield stream
    logging.root.removeHandler(handler)
    absl_logger.filters[:] = saved[0]
    orbax_logger.setLevel(saved[1])
    absl_logging.set_verbosity(saved[2])


def save_checkpoint(directory):
    ckpt = Checkpointer(str(directory), keep=1)
    ckpt.save(1, {"w": jnp.ones(3)}, {"position": 1})
    ckpt.wait_until_finished()
    ckpt.close()


def orbax_lines(text):
    return [line for line in text.splitlines() if "/orbax/" in line.split("| ")[0]]


def test_orbax_info_is_filtered_without_app_run_and_our_info_stays(captured, tmp_path):
    save_checkpoint(tmp_path / "loud")
    assert orbax_lines(captured.getvalue()), "orbax no longer logs at INFO: nothing to filter"

    quiet_library_logs()
    captured.seek(0)
    captured.truncate()
    save_checkpoint(tmp_path / "quiet")
    absl_logging.info("Creating device mesh (our narration).")
    text = captured.getvalue()
    assert orbax_lines(text) == []
    assert f"INFO {__file__}| Creating device mesh (our narration)." in text.splitlines()


def test_orbax_warnings_still_show_and_a_second_call_adds_nothing(captured):
    quiet_library_logs()
    quiet_library_logs()
    absl_logger = absl_logging.get_absl_logger()
    assert len(absl_logger.filters) == 1
    for level in (logging.INFO, logging.WARNING):
        absl_logger.handle(absl_logger.makeRecord(
            "absl", level, "/site-packages/orbax/checkpoint/manager.py", 1,
            f"orbax at {logging.getLevelName(level)}", (), None))
    assert orbax_lines(captured.getvalue()) == [
        "WARNING /site-packages/orbax/checkpoint/manager.py| orbax at WARNING"]


def test_orbax_unraisable_echoes_are_dropped_and_others_kept(monkeypatch, tmp_path):
    """An error raised inside orbax that Python could only print through sys.unraisablehook (an
    abandoned read coroutine after a failed restore) is dropped; any other keeps its hook."""
    import os
    import sys
    import types

    from dit3d_jax.utils import logging as dlog

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    dlog._quiet_thread_echoes()  # pylint: disable=protected-access

    def error_from(filename):
        code = compile("def read():\n    raise ValueError('OUT_OF_RANGE')\n", filename, "exec")
        namespace = {}
        exec(code, namespace)  # pylint: disable=exec-used
        try:
            namespace["read"]()
        except ValueError as err:
            return err

    orbax_file = os.path.join(str(tmp_path), "orbax", "checkpoint", "serialization.py")
    for filename, kept in ((orbax_file, False), (os.path.join(str(tmp_path), "ours.py"), True)):
        err = error_from(filename)
        sys.unraisablehook(types.SimpleNamespace(exc_type=ValueError, exc_value=err,
                                                 exc_traceback=err.__traceback__,
                                                 err_msg=None, object=None))
        assert (len(seen) == 1) == kept, filename
        seen.clear()
