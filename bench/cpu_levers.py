"""Paired A/B of CPU levers (XLA flags, compute dtype) against PyTorch, for a loaded machine.

    .venv/bin/python bench/cpu_levers.py --rounds 3 --json runs/bench/cpu_levers.json \
        --variant base: --variant onednn:--xla_cpu_use_onednn=true \
        --variant bf16+onednn:--xla_cpu_use_onednn=true@bfloat16

A variant is NAME:XLA_FLAGS[@DTYPE]. Each variant runs in one process (XLA flags are fixed per
process) that, round after round, times each `make bench` (--small) case with the benches' own
workers in JAX and right after it in PyTorch fp32 and bf16 autocast: JAX and its baseline run
seconds apart, so on a CPU shared with other jobs they see about the same load. Reported: per
case and variant, the median over rounds of (PyTorch's best mode ÷ JAX) in the same round.
Sampling runs 3 steps instead of 10 (each step is one forward on 2B rows, so the ratio is the
same and the rounds are shorter). The persistent compilation cache serves the recompiles.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
import harness  # noqa: E402

TRAIN_CASES = [dict(model="DiT-S/2", depth=2, batch=4, frames=0, size=16, freeze="none"),
               dict(model="DiT3D-S/2", depth=2, batch=2, frames=4, size=16, freeze="none"),
               dict(model="DiT3D-S/2", depth=2, batch=2, frames=4, size=16, freeze="backbone")]
SAMPLE_CASES = [dict(model="DiT-S/2", depth=None, batch=2, frames=0, size=32, steps=3),
                dict(model="DiT3D-S/2", depth=2, batch=2, frames=4, size=16, steps=3)]
TORCH_MODES = ["fp32", "bf16-autocast"]


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH,
                                                                              name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def jobs(dtype: str):
    """(label, bench module name, case) for every --small case, completed as the benches do."""
    for c in TRAIN_CASES:
        yield (f"train {c['model']} b{c['batch']} freeze {c['freeze']}", "train_step",
               dict(c, dtype=dtype, attn_impl="xla", steps=6, warmup=2, scan=False,
                    remat="none", donate=True, compile_only=False, text_len=8))
    for c in SAMPLE_CASES:
        yield (f"sample {c['model']} {c['size']}² b{c['batch']}", "sample",
               dict(c, dtype=dtype, attn_impl="xla", repeats=2, warmup=1, text_len=8))


def run_variant(dtype: str, rounds: int) -> dict:
    """In this process: {label: {"jax": [s per round], "fp32": [...], "bf16-autocast": [...]}}."""
    from dit3d_jax.utils import compile_cache
    compile_cache.enable()
    modules = {name: _bench(name) for name in ("train_step", "sample")}
    out: dict = {}
    for rnd in range(rounds):
        for label, name, case in jobs(dtype):
            times = out.setdefault(label, {"jax": [], **{m: [] for m in TORCH_MODES}})
            times["jax"].append(modules[name].jax_worker(case)["timing"]["median_s"])
            for mode in TORCH_MODES:
                times[mode].append(modules[name].torch_worker(
                    {**case, "dtype": "float32", "torch_mode": mode})["timing"]["median_s"])
            print(f"round {rnd} {label}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms"
                                                      for k, v in times.items()),
                  file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", action="append", required=True,
                   help="NAME:XLA_FLAGS[@DTYPE] (repeatable; DTYPE float32 by default)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json")
    p.add_argument("--run-variant", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run_variant:
        harness.emit_result(run_variant(args.run_variant, args.rounds))
        return 0

    report, rows = [], []
    for spec in args.variant:
        name, _, rest = spec.partition(":")
        flags, _, dtype = rest.partition("@")
        dtype = dtype or "float32"
        print(f"== variant {name}: XLA_FLAGS={flags!r}, {dtype}", flush=True)
        env = dict(os.environ, XLA_FLAGS=flags, **harness.TORCH_CPU_ENV,
                   PYTHONPATH=harness.worker_pythonpath())
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--variant", spec,
                               "--rounds", str(args.rounds), "--run-variant", dtype],
                              env=env, stdout=subprocess.PIPE, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith(harness.RESULT_MARK)]
        if not lines:
            rows.append([name, "error", f"exit {proc.returncode}", "", "", "", ""])
            continue
        for label, times in json.loads(lines[-1][len(harness.RESULT_MARK):]).items():
            if label in ("compile_cache",):
                continue
            best = [min(ts) for ts in zip(*(times[m] for m in TORCH_MODES))]
            ratios = [b / j for b, j in zip(best, times["jax"])]
            med = statistics.median(ratios)
            report.append(dict(variant=name, flags=flags, dtype=dtype, case=label,
                               times_s=times, speedup_vs_best_torch=ratios, median=med))
            rows.append([name, dtype, label,
                         " ".join(f"{1e3 * t:.0f}" for t in times["jax"]),
                         " ".join(f"{1e3 * t:.0f}" for t in best),
                         " ".join(f"{r:.2f}" for r in ratios), f"{med:.2f}×"])
    table = harness.print_table(
        ["variant", "dtype", "case", "JAX ms per round", "best PyTorch ms per round",
         "PyTorch best ÷ JAX per round", "median"], rows,
        title=f"CPU levers, paired in-process against PyTorch's best of fp32 / bf16 autocast, "
              f"{args.rounds} rounds")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": harness.machine(), "report": report, "table": table}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
