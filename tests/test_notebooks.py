"""notebooks/*.ipynb: every code cell runs, in order, on CPU with a tiny config, and leaves what
it promises (a trained workdir, a GIF of the held-out captions, a parseable accuracy line).

No jupyter: the test reads the notebook JSON, drops IPython-only lines (`!shell`, `%magic`),
runs the tagged "parameters" cell and then, as papermill does, a cell of its own that overrides
those parameters, then runs every other code cell in one namespace in a child process.
"""
import ast
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Runs the cells given as JSON [[label, source], ...] in one namespace, timing each on stderr; a
# failing cell exits 1 with its label and traceback.
RUNNER = r"""
import json, sys, time, traceback
cells = json.load(open(sys.argv[1], encoding="utf-8"))
namespace = {"__name__": "__main__"}
for label, source in cells:
    start = time.perf_counter()
    try:
        exec(compile(source, label, "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"FAILED in {label}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"--- {label}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
"""


def ci_parameters(tmp_path: Path) -> dict:
    """The values CI gives the parameters cell: the notebook's config, shrunk to seconds."""
    return {
        "WORKDIR": str(tmp_path / "run"),
        "NUM_STEPS": 2,
        "NUM_PER_CAPTION": 1,
        "SAMPLE_STEPS": 2,
        "OVERRIDES": {
            "model.kwargs.hidden_size": 32, "model.kwargs.depth": 1, "model.kwargs.num_heads": 2,
            "data.global_batch_size": 4, "data.data_dir": str(tmp_path / "tfds"),
            "train.log_every": 1, "train.checkpoint_every": 2,
        },
    }


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def source(cell: dict) -> str:
    text = cell["source"]
    return "".join(text) if isinstance(text, list) else text


def python_only(text: str) -> str:
    """`text` without IPython-only lines: `!shell` and `%magic` (with their `\\` continuations)."""
    kept, continued = [], False
    for line in text.splitlines():
        skip = continued or line.lstrip().startswith(("!", "%"))
        continued = skip and line.rstrip().endswith("\\")
        kept.append("" if skip else line)  # blank, not removed: tracebacks keep line numbers
    return "\n".join(kept) + "\n"


def assigned_names(text: str) -> set:
    return {target.id for node in ast.parse(text).body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def cells_to_run(notebook: dict, name: str, parameters: dict) -> list:
    """[(label, python source)] in notebook order, the CI parameters after the parameters cell."""
    out = []
    for i, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        label = f"{name} cell {i}" + (f" ({cell['id']})" if cell.get("id") else "")
        out.append((label, python_only(source(cell))))
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            defined = assigned_names(source(cell))
            missing = sorted(set(parameters) - defined)
            assert not missing, f"{name}: the parameters cell no longer defines {missing}"
            injected = "".join(f"{k} = {v!r}\n" for k, v in parameters.items())
            out.append((f"{name} injected parameters", injected))
    return out


def child_env(tmp_path: Path) -> dict:
    """CPU, fast compiles, a compilation cache shared across test runs, data under tmp_path."""
    cache = os.path.join(tempfile.gettempdir(), "dit3d_jax_test_jax_cache")
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
                XLA_FLAGS="--xla_backend_optimization_level=0",
                JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
                DIT3D_DATA_DIR=str(tmp_path / "tfds"), TF_CPP_MIN_LOG_LEVEL="3")


def run_cells(cells: list, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "cells.json"
    script.write_text(json.dumps(cells), encoding="utf-8")
    return subprocess.run([sys.executable, "-c", RUNNER, str(script)], cwd=ROOT,
                          env=child_env(tmp_path), capture_output=True, text=True, timeout=300)


def test_there_is_a_notebook():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"


def test_the_harness_strips_magics_injects_parameters_and_fails_on_a_broken_cell(tmp_path):
    def cell(text, tags=()):
        return {"cell_type": "code", "metadata": {"tags": list(tags)}, "source": text}
    notebook = {"cells": [
        cell("!pip install -q \\\n    something\n%cd /nowhere\nseen = []\n"),
        {"cell_type": "markdown", "metadata": {}, "source": "# not run"},
        cell("STEPS = 100\nNAME = 'x'\n", tags=["parameters"]),
        cell(["seen.append(STEPS)\n", "print('steps', STEPS, NAME)"]),
        cell("raise RuntimeError('broken cell')"),
        cell("print('never reached')"),
    ]}
    cells = cells_to_run(notebook, "nb", {"STEPS": 2})
    assert [label for label, _ in cells] == [
        "nb cell 0", "nb cell 2", "nb injected parameters", "nb cell 3", "nb cell 4", "nb cell 5"]
    assert cells[0][1].splitlines() == ["", "", "", "seen = []"]
    result = run_cells(cells, tmp_path)
    assert result.returncode == 1
    assert "steps 2 x" in result.stdout and "never reached" not in result.stdout
    assert "RuntimeError: broken cell" in result.stderr and "FAILED in nb cell 4" in result.stderr
    with pytest.raises(AssertionError, match=r"no longer defines \['WORKDIR'\]"):
        cells_to_run(notebook, "nb", {"WORKDIR": "/tmp"})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_clean_with_one_parameters_cell(path):
    notebook = load(path)
    assert notebook["nbformat"] == 4
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "expected exactly one cell tagged 'parameters'"
    for cell in code:  # every cell is valid Python once the IPython-only lines are gone
        ast.parse(python_only(source(cell)))
    installs = [l for c in code for l in source(c).splitlines() if re.match(r"\s*!.*pip ", l)]
    assert not [l for l in installs if re.search(r"\bjax\b", l)], \
        f"the notebook reinstalls jax (Colab ships jax[tpu]): {installs}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_on_cpu_with_a_tiny_config(path, tmp_path):
    parameters = ci_parameters(tmp_path)
    result = run_cells(cells_to_run(load(path), path.name, parameters), tmp_path)
    assert result.returncode == 0, (result.stdout[-3000:] + "\n" + result.stderr[-6000:])

    # The trainer narrates at INFO; orbax's INFO detail (every save, "[process=0] ...") is not.
    assert "INFO:absl:Creating device mesh" in result.stderr
    assert not re.search(r"INFO:absl:.*(\[process=\d|CheckpointManager|orbax)", result.stderr)

    # The run: resolved config, model spec, a metrics record per step, the final checkpoint.
    workdir = Path(parameters["WORKDIR"])
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["num_steps"] == parameters["NUM_STEPS"]
    assert config["model"]["kwargs"]["hidden_size"] == \
        parameters["OVERRIDES"]["model.kwargs.hidden_size"]
    assert (workdir / "model.json").is_file()
    records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["skipped"] == 0 for r in records)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]

    # The GIF: a tile per sample of each held-out caption (14 in the tiny moving_shapes) in a
    # square-ish grid, every frame; tiles of 16 px scaled to 128 with 2 px gaps, each under a
    # caption strip of whole 12 px lines.
    from dit3d_jax.data.shapes import captions
    gifs = sorted(workdir.glob("*.gif"))
    assert len(gifs) == 1 and f"wrote {gifs[0]}" in result.stdout
    with Image.open(gifs[0]) as gif:
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]
    assert len(frames) == config["model"]["kwargs"]["num_frames"] == 8
    heldout = captions("heldout", config["data"]["config"])
    assert len(heldout) == 14
    tiles, side = len(heldout) * parameters["NUM_PER_CAPTION"], 16 * 8 + 2
    cols = math.ceil(math.sqrt(tiles))
    rows = math.ceil(tiles / cols)
    height, width, _ = frames[0].shape
    assert width == cols * side + 2
    caption_height = (height - 2) / rows - side
    assert caption_height > 0 and caption_height % 12 == 0, (height, width)
    assert not all(np.array_equal(frames[0], f) for f in frames[1:])  # a video, not a still

    # The score: one line, four fractions in [0, 100] %.
    line = re.search(r"held-out caption accuracy: all ([\d.]+)%, colour ([\d.]+)%, "
                     r"shape ([\d.]+)%, direction ([\d.]+)%", result.stdout)
    assert line, result.stdout[-3000:]
    assert all(0.0 <= float(v) <= 100.0 for v in line.groups())
