"""Analytic detector for moving_shapes videos: which colour, shape and direction a clip shows.

Used to score generated samples against their captions. Per video (F, H, W, 3):
  1. background = per-channel median over all pixels (the shape covers well under half the frame);
  2. candidate foreground = pixels farther than 60 (uint8 units) from the background; its median
     colour is the shape colour; the colour name is the nearest palette entry;
  3. coverage alpha = projection of (pixel − background) on (colour − background), in [0, 1]; per
     frame the shape is the largest 8-connected component of alpha > 0.5 (stray noise dropped);
  4. shape: per frame, fill = area / bounding-box area and the coverage of the two top and the two
     bottom bounding-box corners; their medians over frames go to the nearest prototype
     (square: fill 1, corners all filled; circle: fill π/4, none; triangle: fill 1/2, bottom only);
  5. direction: least-squares velocity of the component centroid over the frames; its angle
     (y up) rounded to the nearest multiple of 45° picks one of the 8 directions.
"""

from __future__ import annotations

import re

import numpy as np
from scipy import ndimage

from dit3d_jax.data.shapes import COLOURS, DIRECTION_NAMES, SHAPES

_FG_THRESHOLD = 60.0
# (fill, top corners, bottom corners)
_PROTOTYPES = {"circle": (np.pi / 4, 0.0, 0.0), "square": (1.0, 1.0, 1.0),
               "triangle": (0.5, 0.0, 1.0)}
_CAPTION = re.compile(r"^\s*an? (\S+) (\S+) moving (\S+)\s*$")
UNKNOWN = "unknown"


def _as_uint8_scale(video) -> np.ndarray:
    """float64 (F, H, W, 3) in uint8 units; float input is taken to be in [−1, 1]."""
    v = np.asarray(video)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"video: expected shape (F, H, W, 3), got {v.shape}")
    if v.dtype == np.uint8:
        return v.astype(np.float64)
    if not np.issubdtype(v.dtype, np.floating):
        raise TypeError(f"video: expected uint8 or float in [-1, 1], got dtype {v.dtype}")
    return (np.clip(v.astype(np.float64), -1.0, 1.0) + 1.0) * 127.5


def _largest_component(mask: np.ndarray) -> np.ndarray | None:
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(np.argmax(sizes)))


def detect(video) -> dict[str, str]:
    """video: uint8 or float [−1, 1] (F, H, W, 3) -> {"colour", "shape", "direction"}.

    A field is "unknown" when no shape is found (e.g. a blank sample).
    """
    v = _as_uint8_scale(video)
    pixels = v.reshape(-1, 3)
    bg = np.median(pixels, axis=0)
    far = np.linalg.norm(pixels - bg, axis=1) > _FG_THRESHOLD
    if not far.any():
        return {"colour": UNKNOWN, "shape": UNKNOWN, "direction": UNKNOWN}
    fg = np.median(pixels[far], axis=0)
    names = list(COLOURS)
    palette = np.asarray([COLOURS[n] for n in names], np.float64)
    colour = names[int(np.argmin(np.linalg.norm(palette - fg, axis=1)))]

    axis = fg - bg
    alpha = np.clip(((v - bg) @ axis) / float(axis @ axis), 0.0, 1.0)  # (F, H, W)
    feats, centroids, times = [], [], []
    for t, a in enumerate(alpha):
        comp = _largest_component(a > 0.5)
        if comp is None:
            continue
        rows, cols = np.nonzero(comp)
        r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
        box = comp[r0:r1 + 1, c0:c1 + 1].astype(np.float64)
        fill = box.sum() / box.size
        top = (box[0, 0] + box[0, -1]) / 2.0
        bottom = (box[-1, 0] + box[-1, -1]) / 2.0
        feats.append((fill, top, bottom))
        centroids.append((cols.mean(), rows.mean()))
        times.append(t)
    if not feats:
        return {"colour": colour, "shape": UNKNOWN, "direction": UNKNOWN}
    f = np.median(np.asarray(feats, np.float64), axis=0)
    shape = min(_PROTOTYPES, key=lambda s: float(np.sum((f - np.asarray(_PROTOTYPES[s])) ** 2)))

    direction = UNKNOWN
    if len(times) >= 2:
        t = np.asarray(times, np.float64)
        xy = np.asarray(centroids, np.float64)
        tc = t - t.mean()
        vel = (tc @ (xy - xy.mean(axis=0))) / (tc @ tc)  # (vx, v_row)
        if np.hypot(*vel) > 1e-6:
            angle = np.arctan2(-vel[1], vel[0])
            direction = DIRECTION_NAMES[int(np.round(angle / (np.pi / 4))) % 8]
    return {"colour": colour, "shape": shape, "direction": direction}


def parse_caption(caption: str) -> dict[str, str]:
    """"a {colour} {shape} moving {direction}" -> {"colour", "shape", "direction"}."""
    m = _CAPTION.match(caption) if isinstance(caption, str) else None
    if m is None:
        raise ValueError(f"captions: expected 'a {{colour}} {{shape}} moving {{direction}}', "
                         f"got {caption!r}")
    colour, shape, direction = m.groups()
    if colour not in COLOURS or shape not in SHAPES or direction not in DIRECTION_NAMES:
        raise ValueError(f"captions: unknown colour/shape/direction in {caption!r}; expected "
                         f"colours {list(COLOURS)}, shapes {list(SHAPES)}, "
                         f"directions {list(DIRECTION_NAMES)}")
    return {"colour": colour, "shape": shape, "direction": direction}


def caption_accuracy(videos, captions) -> dict[str, float]:
    """Fraction of videos whose detected attributes match their captions.

    videos: (N, F, H, W, 3) uint8 or float [−1, 1] (or a sequence of such clips);
    captions: N strings. Returns {"all", "colour", "shape", "direction"} in [0, 1]
    ("all": every attribute right).
    """
    captions = [c.decode() if isinstance(c, bytes) else c for c in captions]
    if len(videos) != len(captions) or not captions:
        raise ValueError(f"captions: expected one caption per video (>= 1), got {len(captions)} "
                         f"captions for {len(videos)} videos")
    hits = {"all": 0, "colour": 0, "shape": 0, "direction": 0}
    for video, caption in zip(videos, captions):
        want = parse_caption(caption)
        got = detect(video)
        ok = {k: got[k] == want[k] for k in want}
        for k, v in ok.items():
            hits[k] += int(v)
        hits["all"] += int(all(ok.values()))
    return {k: v / len(captions) for k, v in hits.items()}
