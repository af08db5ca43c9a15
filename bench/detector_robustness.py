"""Is the caption detector's score trustworthy on imperfect clips? Scores it on corrupted real clips.

    python bench/detector_robustness.py [--num 256] [--split train] [--config tiny]

Takes `--num` clips of the moving_shapes split (rendered directly, no tfds build), maps them to
float [-1, 1] as samples are, corrupts them and prints the detector's accuracy per attribute:
  noise s    Gaussian noise of std s (in [-1, 1] units, i.e. 127.5·s uint8 levels)
  blur s     spatial Gaussian blur of std s pixels (per frame)
  speckle p  a fraction p of pixels replaced by a uniform random colour
  fade a     the shape's contrast scaled by a toward the clip's median background
  jitter k   each frame rolled by a random whole-pixel offset in [-k, k]² (ragged motion)
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from dit3d_jax.data import detector, shapes

LEVELS = {"noise": (0.1, 0.2, 0.3, 0.4, 0.5), "blur": (0.5, 0.8, 1.0, 1.5),
          "speckle": (0.02, 0.05, 0.1, 0.2), "fade": (0.7, 0.5, 0.35), "jitter": (1, 2)}


def corrupt(x: np.ndarray, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """x float (N, F, H, W, 3) in [-1, 1] -> the corrupted clips, same shape, in [-1, 1]."""
    if kind == "noise":
        y = x + rng.normal(0.0, level, x.shape)
    elif kind == "blur":
        y = ndimage.gaussian_filter(x, (0, 0, level, level, 0))
    elif kind == "speckle":
        y = x.copy()
        hit = rng.random(x.shape[:-1]) < level
        y[hit] = rng.uniform(-1.0, 1.0, (int(hit.sum()), 3))
    elif kind == "fade":
        bg = np.median(x.reshape(len(x), -1, 3), axis=1)[:, None, None, None]
        y = bg + level * (x - bg)
    elif kind == "jitter":
        y = x.copy()
        for i in range(x.shape[0]):
            for f in range(x.shape[1]):
                y[i, f] = np.roll(x[i, f], tuple(rng.integers(-level, level + 1, 2)), axis=(0, 1))
    else:
        raise ValueError(f"kind: expected one of {list(LEVELS)}, got {kind!r}")
    return np.clip(y, -1.0, 1.0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num", type=int, default=256)
    p.add_argument("--split", default="train", choices=shapes.SPLITS)
    p.add_argument("--config", default="tiny")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    exs = [shapes.example(a.split, i, a.config) for i in range(a.num)]
    x = np.stack([e["video"] for e in exs]).astype(np.float32) / 127.5 - 1.0
    caps = [e["caption"] for e in exs]
    rng = np.random.default_rng(a.seed)
    print(f"| corruption | all | colour | shape | direction |\n|---|---|---|---|---|")
    rows = [("clean", x)] + [(f"{k} {l}", corrupt(x, k, l, rng))
                             for k, levels in LEVELS.items() for l in levels]
    for name, v in rows:
        acc = detector.caption_accuracy(v, caps)
        print(f"| {name} | " + " | ".join(f"{acc[k]:.1%}" for k in
                                          ("all", "colour", "shape", "direction")) + " |",
              flush=True)


if __name__ == "__main__":
    main()
