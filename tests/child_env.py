"""The environment of the training runs tests start as child processes."""
import os
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env(**extra) -> dict:
    """os.environ plus CPU, this checkout on PYTHONPATH, XLA's fastest compile and a compilation
    cache shared by every test run; `extra` overrides (e.g. XLA_FLAGS with a device count)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(),
                                                      "dit3d_jax_test_jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # compiles twice as fast
    env.update(extra)
    return env
