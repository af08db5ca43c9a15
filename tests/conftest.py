"""Test set-up: CPU only, the tests directory importable (for torch_reference)."""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))
