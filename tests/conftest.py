"""Test set-up: CPU only, the tests directory importable (for torch_reference)."""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))
# No persistent compilation cache in tests (nothing written to the user's home; every test
# compiles as a first run does). Subprocesses the tests start inherit this.
os.environ["DIT3D_JAX_CACHE"] = "off"
