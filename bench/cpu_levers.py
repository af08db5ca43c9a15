"""Interleaved A/B of CPU levers (XLA flags, compute dtype) against PyTorch, for a loaded machine.

    .venv/bin/python bench/cpu_levers.py --rounds 3 --json runs/bench/cpu_levers.json \
        --variant base: --variant onednn:--xla_cpu_use_onednn=true \
        --variant bf16+onednn:--xla_cpu_use_onednn=true@bfloat16

A variant is NAME:XLA_FLAGS[@DTYPE]. Each round runs, one after another, every JAX variant and
every PyTorch mode (fp32, bf16 autocast) on the `--small` train-step and sampling cases (the
`make bench` sizes), each in its own process (bench/train_step.py and bench/sample.py workers).
On a CPU shared with other jobs the absolute times wander between rounds, so the report is
the median over rounds of each variant's speedup over PyTorch's best mode *in the same round*.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.join(BENCH, "train_step.py")
SAMPLE = os.path.join(BENCH, "sample.py")
TRAIN_CASES = [dict(model="DiT-S/2", depth=2, batch=4, frames=0, size=16, freeze="none"),
               dict(model="DiT3D-S/2", depth=2, batch=2, frames=4, size=16, freeze="none")]
SAMPLE_CASES = [dict(model="DiT-S/2", depth=None, batch=2, frames=0, size=32, steps=10),
                dict(model="DiT3D-S/2", depth=2, batch=2, frames=4, size=16, steps=10)]
TORCH_MODES = ["fp32", "bf16-autocast"]


def jobs(dtype: str):
    """(kind, script, case) for every case, completed like the benches do for --small."""
    for case in TRAIN_CASES:
        yield "train", TRAIN, dict(case, dtype=dtype, attn_impl="xla", steps=6, warmup=2,
                                   scan=False, remat="none", donate=True, compile_only=False,
                                   text_len=8)
    for case in SAMPLE_CASES:
        yield "sample", SAMPLE, dict(case, dtype=dtype, attn_impl="xla", repeats=2, warmup=1,
                                     text_len=8)


def label(kind: str, case: dict) -> str:
    shape = (f"{case['frames']}×" if case["frames"] else "") + f"{case['size']}²"
    return f"{kind} {case['model']} {shape} b{case['batch']}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", action="append", required=True,
                   help="NAME:XLA_FLAGS[@DTYPE] (repeatable; DTYPE float32 by default)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)
    variants = []
    for spec in args.variant:
        name, _, rest = spec.partition(":")
        flags, _, dtype = rest.partition("@")
        variants.append((name, flags.strip(), dtype or "float32"))

    times: dict = {}  # (job label, runner) -> [median seconds per round]
    for rnd in range(args.rounds):
        for name, flags, dtype in variants:
            for kind, script, case in jobs(dtype):
                env = {"XLA_FLAGS": flags} if flags else {"XLA_FLAGS": ""}
                res = common.run_worker(script, ["--worker", "jax", "--case", json.dumps(case)],
                                        env=env)
                key = (label(kind, case), name)
                times.setdefault(key, [None] * args.rounds)[rnd] = (
                    None if "error" in res else res["timing"]["median_s"])
                print(f"round {rnd} {key}: {times[key][rnd]}"
                      + (f" ({res['error'][:200]})" if "error" in res else ""), flush=True)
        for kind, script, case in jobs("float32"):
            for mode in TORCH_MODES:
                res = common.run_worker(script, ["--worker", "torch", "--case",
                                                 json.dumps({**case, "torch_mode": mode})],
                                        env=common.TORCH_CPU_ENV)
                key = (label(kind, case), "torch " + mode)
                times.setdefault(key, [None] * args.rounds)[rnd] = (
                    None if "error" in res else res["timing"]["median_s"])
                print(f"round {rnd} {key}: {times[key][rnd]}", flush=True)

    rows, report = [], []
    for kind, _, case in jobs("float32"):
        job = label(kind, case)
        best_torch = [min(t for t in (times[(job, "torch " + m)][r] for m in TORCH_MODES) if t)
                      for r in range(args.rounds)]
        for name, flags, dtype in variants:
            ts = times[(job, name)]
            ratios = [bt / t for bt, t in zip(best_torch, ts) if t]
            med = statistics.median(ratios) if ratios else None
            report.append(dict(job=job, variant=name, flags=flags, dtype=dtype, jax_s=ts,
                               best_torch_s=best_torch, speedup_vs_best_torch=ratios,
                               median_speedup=med))
            rows.append([job, name, dtype, " ".join(common.fmt(t and 1e3 * t, ".0f")
                                                    for t in ts),
                         " ".join(f"{1e3 * t:.0f}" for t in best_torch),
                         " ".join(f"{r:.2f}" for r in ratios), common.fmt(med, ".2f") + "×"])
            job = ""
    table = common.print_table(
        ["case", "variant", "dtype", "JAX ms per round", "best PyTorch ms per round",
         "speedup per round", "median speedup"], rows,
        title=f"CPU levers: JAX ÷ PyTorch's best mode (fp32 or bf16 autocast) in the same round, "
              f"{args.rounds} rounds")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": common.machine(), "report": report, "table": table}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
