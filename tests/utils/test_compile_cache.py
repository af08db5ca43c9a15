"""dit3d_jax.utils.compile_cache: where the cache lives, and a second process loads, not compiles."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dit3d_jax.utils import compile_cache

ROOT = Path(__file__).resolve().parents[2]

# A tiny DiT3D's forward, jitted in a fresh process: prints the cache's hits and misses.
PROBE = """
import json, sys
import jax
from dit3d_jax.models import dummy_inputs, get_model, init_params
from dit3d_jax.utils import compile_cache
counts = {"hits": 0, "misses": 0}
def count(event, **_):
    for name in counts:
        if event == "/jax/compilation_cache/cache_" + name:
            counts[name] += 1
jax.monitoring.register_event_listener(count)
directory = compile_cache.enable(sys.argv[1] if len(sys.argv) > 1 else None)
model = get_model("DiT3D-S/8", depth=1, hidden_size=32, num_heads=2, input_size=8,
                  num_frames=2, text_dim=8)
params = init_params(model, jax.random.key(0))
inputs = dummy_inputs(model, 2)
x = inputs.pop("x")
def dit_forward(p, x):
    return model.apply({"params": p}, x, **inputs)
jax.block_until_ready(jax.jit(dit_forward)(params, x))
print(json.dumps(dict(counts, dir=directory)))
"""


def probe(*args, env=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    env.pop(compile_cache.ENV_VAR, None)
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_directory_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compile_cache.cache_dir() == str(tmp_path / ".cache" / "dit3d_jax" / "jax_cache")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert compile_cache.cache_dir() == str(tmp_path / "jax")
    monkeypatch.setenv(compile_cache.ENV_VAR, "~/mine")
    assert compile_cache.cache_dir() == str(tmp_path / "mine")
    assert compile_cache.cache_dir(str(tmp_path / "flag")) == str(tmp_path / "flag")
    assert compile_cache.cache_dir("OFF") is None
    monkeypatch.setenv(compile_cache.ENV_VAR, "off")
    assert compile_cache.cache_dir() is None
    assert compile_cache.cache_dir("elsewhere") == os.path.abspath("elsewhere")


def test_second_process_loads_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    first = probe(str(cache))
    assert first["dir"] == str(cache) and first["hits"] == 0 and first["misses"] >= 1
    # The model's forward (~0.5-2 s to compile on CPU) clears MIN_COMPILE_S and is written;
    # with every other entry removed, the second process's one hit is that forward.
    entries = os.listdir(cache)
    assert sum(name.startswith("jit_dit_forward") for name in entries) == 1
    for name in entries:
        if not name.startswith("jit_dit_forward"):
            os.remove(cache / name)
    second = probe(str(cache))
    assert second["hits"] == 1 and second["misses"] == first["misses"] - 1


def test_off_writes_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    result = probe("off", env={"HOME": str(home)})
    assert result == {"hits": 0, "misses": 0, "dir": None}
    assert list(home.iterdir()) == []


def test_unusable_directory_warns_and_goes_on(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert compile_cache.enable(str(blocker / "cache")) is None
    err = capsys.readouterr().err
    assert err.startswith("warning: compilation cache") and err.count("\n") == 1
