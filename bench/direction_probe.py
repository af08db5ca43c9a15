"""Does a trained model read motion from its prompt? The loss gap of a direction-reversed caption.

    python bench/direction_probe.py --workdir runs/demo [--num 64] [--t 0.1,0.3,0.5,0.7,0.9] \
        [--step N] [--raw]

For `--num` training clips of the run's moving_shapes data, evaluates the run's training loss (its
objective's formula, EMA params unless --raw) at fixed t under three captions per clip: the
true one, the same with the direction reversed ("left" -> "right", "up-left" -> "down-right") and
the same with the colour swapped (the next palette colour, for scale). Noise and t are shared by
the three (one key per t), so the gaps are paired: gap = loss(other caption) − loss(true caption),
per clip, then averaged. A model that draws motion from its prompt has a clearly positive direction
gap; a prompt-blind "a blob drifts" model has ~0 there while its colour gap is large. --ceiling K
adds the gaps a perfect flow model would have as t -> 0 (from K fresh clips per combination), the
scale to read the measured ones against. A class-label model (num_classes > 0, no text) is probed
the same way with labels.

t is the objective's: for flow, t = 1 is clean data and 0 pure noise; for gaussian, the fraction
of the chain (0 clean, 1 noise). Prints a table and writes WORKDIR/direction_probe.json
(or --json).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dit3d_jax.utils.cli import UsageError, run

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

DEFAULT_TS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
VARIANTS = ("true", "direction_reversed", "colour_swapped")


def caption_variants(label: int) -> dict[str, int]:
    """label -> {variant: label}: the true combination, direction reversed, colour swapped."""
    from dit3d_jax.data import shapes
    c, s, d = shapes.combo_of(label)
    ci, di = shapes.COLOUR_NAMES.index(c), shapes.DIRECTION_NAMES.index(d)
    return {"true": label,
            "direction_reversed": shapes.label_of(c, s, shapes.DIRECTION_NAMES[(di + 4) % 8]),
            "colour_swapped": shapes.label_of(shapes.COLOUR_NAMES[(ci + 1) % 6], s, d)}


def noise_limit_gaps(config, labels: Sequence[int], clips_per_label: int = 64,
                     seed: int = 0) -> dict[str, float]:
    """The largest gap any model can have as t -> 0 (pure noise), per altered variant.

    There x_t carries nothing about the clip, the best flow prediction under caption c is
    E[x0 | c] − noise, and the loss under caption c' exceeds the true caption's by
    mean((E[x0|c] − E[x0|c'])²). Estimated unbiasedly from two independent halves (a, b) of
    `clips_per_label` fresh clips of each combination (config: a moving_shapes builder config
    or its name): mean((m_a(c) − m_a(c'))·(m_b(c) − m_b(c'))), averaged over `labels`.
    """
    from dit3d_jax.data import shapes
    cfg = shapes._resolve_config(config)  # pylint: disable=protected-access

    def mean_clip(label: int, half: int) -> np.ndarray:
        rng = np.random.default_rng((seed, half, label))
        c, s, d = shapes.combo_of(label)
        return np.mean([shapes.render_video(c, s, d, rng, cfg.frames, cfg.size, cfg.min_travel)
                        for _ in range(clips_per_label // 2)], axis=0) / 127.5

    gaps = {v: [] for v in VARIANTS[1:]}
    for label in labels:
        variants = caption_variants(label)
        m = [{v: mean_clip(l, half) for v, l in variants.items()} for half in (0, 1)]
        for v in gaps:
            gaps[v].append(float(np.mean((m[0]["true"] - m[0][v]) * (m[1]["true"] - m[1][v]))))
    return {v: float(np.mean(g)) for v, g in gaps.items()}


def per_clip_losses(model, params, objective, clips, conds: Sequence[Mapping[str, Any]],
                    ts: Sequence[float], seed: int = 0) -> np.ndarray:
    """The objective's training loss of each clip at each t under each conditioning:
    (len(conds), len(ts), N) float64.

    clips (N, F, H, W, C) float in the data's range; conds: conditionings of the N clips (y
    and/or text, text_mask), all of the same shapes (one compilation). For t index i the noise is
    jax.random.normal(fold_in(key(seed), i), clips.shape, float32) for every cond, so the losses
    are paired across conds. Flow: x_t = t·x0 + (1 − t)·noise, loss = mean squared
    error of the velocity; gaussian: timestep round(t·(T − 1)) and the objective's `loss_terms`.
    """
    from dit3d_jax.diffusion.flow import RectifiedFlow
    x0 = jnp.asarray(clips, jnp.float32)
    n = x0.shape[0]
    flow = isinstance(objective, RectifiedFlow)

    @jax.jit
    def losses(params, cond, x0, noise, t):
        if flow:
            x_t = objective.interpolate(x0, noise, t)
            out = model.apply({"params": params}, x_t, objective.model_timesteps(t), **cond)
            err = objective.target(x0, noise) - objective.velocity(out, x_t)
            return jnp.mean(err ** 2, axis=tuple(range(1, x0.ndim)))
        x_t = objective.q_sample(x0, t, noise)
        out = model.apply({"params": params}, x_t, objective.model_timesteps(t), **cond)
        return objective.loss_terms(out, x0, x_t, t, noise)[0]

    bad = [t for t in ts if not 0.0 <= t <= 1.0]
    if bad:
        raise ValueError(f"t: expected values in [0, 1], got {bad}")
    out = np.zeros((len(conds), len(ts), n))
    for i, t in enumerate(ts):
        noise = jax.random.normal(jax.random.fold_in(jax.random.key(seed), i), x0.shape,
                                  jnp.float32)
        tt = (jnp.full((n,), t, jnp.float32) if flow else
              jnp.full((n,), round(t * (objective.num_timesteps - 1)), jnp.int32))
        for j, cond in enumerate(conds):
            out[j, i] = np.asarray(losses(params, dict(cond), x0, noise, tt), np.float64)
    return out


def conditioning(model, labels: Sequence[int], encoder=None) -> dict[str, Any]:
    """The cond the model takes for these labels: y (class labels) and/or text of their
    captions encoded by `encoder`."""
    from dit3d_jax.data import shapes
    cond = {}
    if model.num_classes > 0:
        cond["y"] = jnp.asarray(labels, jnp.int32)
    if model.input_spec.text_dim > 0:
        emb, mask = encoder.encode([shapes.caption_of(*shapes.combo_of(l)) for l in labels])
        cond["text"], cond["text_mask"] = jnp.asarray(emb), jnp.asarray(mask)
    if not cond:
        raise ValueError("model: expected a class- or text-conditioned model, got one with "
                         "num_classes=0 and text_dim=0")
    return cond


def probe(model, params, objective, clips, labels: Sequence[int], ts: Sequence[float],
          encoder=None, seed: int = 0) -> dict[str, Any]:
    """Paired loss gaps. Returns {"t", "loss_true" (mean per t), and per other variant:
    "gap_<v>" (mean per t), "gap_<v>_se" (standard error over clips), "wins_<v>" (fraction of
    clips whose true-caption loss is the lower)}."""
    conds = [conditioning(model, [caption_variants(l)[v] for l in labels], encoder)
             for v in VARIANTS]
    per = dict(zip(VARIANTS, per_clip_losses(model, params, objective, clips, conds, ts, seed)))
    n = per["true"].shape[1]
    out = {"t": [float(t) for t in ts], "loss_true": per["true"].mean(1).tolist()}
    for v in VARIANTS[1:]:
        gap = per[v] - per["true"]
        out[f"gap_{v}"] = gap.mean(1).tolist()
        out[f"gap_{v}_se"] = (gap.std(1, ddof=1) / np.sqrt(n) if n > 1 else 0 * gap[:, 0]).tolist()
        out[f"wins_{v}"] = (gap > 0).mean(1).tolist()
    return out


def format_table(result: Mapping[str, Any]) -> str:
    lines = [f"{'t':>5} {'loss true':>10} {'gap dir-reversed':>22} {'true lower':>10} "
             f"{'gap colour-swap':>16}"]
    for i, t in enumerate(result["t"]):
        lines.append(f"{t:5.2f} {result['loss_true'][i]:10.4f} "
                     f"{result['gap_direction_reversed'][i]:+11.5f} ± "
                     f"{result['gap_direction_reversed_se'][i]:.5f}"
                     f" {result['wins_direction_reversed'][i]:10.0%} "
                     f"{result['gap_colour_swapped'][i]:+16.4f}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="train.py run directory")
    p.add_argument("--num", type=int, default=64, help="training clips probed")
    p.add_argument("--t", default=",".join(map(str, DEFAULT_TS)), help="comma-separated t")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="raw params instead of the EMA")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--ceiling", type=int, default=0,
                   help="clips per combination for the t -> 0 ceiling of the gaps (0: skip)")
    p.add_argument("--json", default=None, help="default: WORKDIR/direction_probe.json")
    a = p.parse_args(argv)
    try:
        ts = [float(t) for t in a.t.split(",")]
    except ValueError:
        raise UsageError(f"--t: expected comma-separated numbers in [0, 1], got {a.t!r}") from None
    if a.num < 1 or not all(0.0 <= t <= 1.0 for t in ts):
        raise UsageError(f"--num/--t: expected --num >= 1 and t in [0, 1], got {a.num}, {a.t!r}")
    from dit3d_jax.data import shapes
    from dit3d_jax.diffusion.objective import make_objective
    from dit3d_jax.generate import text_encoder_for
    from dit3d_jax.train.checkpoint import load_workdir
    try:
        model, params, config = load_workdir(a.workdir, ema=not a.raw, step=a.step)
    except FileNotFoundError as err:
        raise UsageError(f"--workdir: {err}") from None
    if config.data.name != "moving_shapes":
        raise UsageError(f"--workdir: expected a run trained on moving_shapes, got data.name "
                         f"{config.data.name!r}")
    exs = [shapes.example("train", i, config.data.config) for i in range(a.num)]
    clips = np.stack([e["video"] for e in exs]).astype(np.float32) / 127.5 - 1.0
    encoder = text_encoder_for(config) if model.input_spec.text_dim > 0 else None
    result = probe(model, params, make_objective(config.objective, model.learn_sigma), clips,
                   [e["label"] for e in exs], ts, encoder, a.seed)
    result.update(workdir=os.path.abspath(a.workdir), step=a.step, num_clips=a.num,
                  ema=not a.raw)
    print(format_table(result))
    if a.ceiling > 0:
        result["noise_limit"] = noise_limit_gaps(config.data.config,
                                                 sorted({e["label"] for e in exs}), a.ceiling)
        print(f"t -> 0 ceiling (any model): direction-reversed "
              f"{result['noise_limit']['direction_reversed']:+.5f}, colour-swapped "
              f"{result['noise_limit']['colour_swapped']:+.4f}")
    harness.write_json(a.json or os.path.join(a.workdir, "direction_probe.json"), result)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
