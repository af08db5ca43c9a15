"""Procedural captioned videos of moving shapes, and their tfds builder.

Each video shows one shape (circle, square or upward triangle) in one palette colour moving in one
of 8 compass directions across a plain dark background, with mild variety in size, speed, start
position, colour and background level. The caption reads "a red circle moving up-left".

Vocabulary and labels (fixed; every config shares them):
    COLOURS    red, green, blue, yellow, white, magenta            (index c, 6)
    SHAPES     circle, square, triangle                            (index s, 3)
    DIRECTIONS right, up-right, up, up-left, left, down-left, down, down-right
               (index d, 8; direction d points at angle 45°·d, counter-clockwise from +x, y up)
    label = (c · len(SHAPES) + s) · len(DIRECTIONS) + d            (NUM_CLASSES = 144)

Splits: `train` and `validation` draw from the seen combinations (validation: new samples),
`heldout` from about `heldout_fraction` of (colour, shape, direction) combinations never in
`train`. The held-out set is closed under the horizontal flip (left<->right), so a flip
augmentation of train never produces a held-out caption; every colour, shape and direction still
appears in train. Rendering is crisp (integer pixel positions, whole-pixel translation between
frames), so the analytic detector in `detector.py` is exact on these videos.

Building is deterministic: example i of a split is drawn from np.random.default_rng((seed,
split code, i)), whatever the order of generation.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 215, 40),
    "white": (235, 235, 235),
    "magenta": (215, 50, 215),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# (dx, dy) with y pointing up; index d is at angle 45°·d.
DIRECTIONS: dict[str, tuple[int, int]] = {
    "right": (1, 0),
    "up-right": (1, 1),
    "up": (0, 1),
    "up-left": (-1, 1),
    "left": (-1, 0),
    "down-left": (-1, -1),
    "down": (0, -1),
    "down-right": (1, -1),
}
COLOUR_NAMES = tuple(COLOURS)
DIRECTION_NAMES = tuple(DIRECTIONS)
NUM_CLASSES = len(COLOURS) * len(SHAPES) * len(DIRECTIONS)
SPLITS = ("train", "validation", "heldout")
_SPLIT_CODES = {"train": 0, "validation": 1, "heldout": 2}
_HELDOUT_SEED = 20240917  # fixed: the held-out combinations do not depend on the data seed


def default_data_dir() -> str:
    """$DIT3D_DATA_DIR, else ~/.cache/dit3d_jax/tfds."""
    return os.environ.get("DIT3D_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "dit3d_jax", "tfds")


def clip_features(frames: int, size: int, encoding: str, **extra) -> tfds.features.FeaturesDict:
    """The features the clip builders here share: "video" uint8 (frames, size, size, 3) stored
    with `encoding` ("zlib" | "bytes"), "caption" Text, "label" int32 scalar; then `extra`."""
    return tfds.features.FeaturesDict({
        "video": tfds.features.Tensor(shape=(frames, size, size, 3), dtype=np.uint8,
                                      encoding=encoding),
        "caption": tfds.features.Text(),
        "label": tfds.features.Tensor(shape=(), dtype=np.int32),
        **extra})


def clip_info(builder: tfds.core.GeneratorBasedBuilder, description: str, encoding: str,
              metadata: tfds.core.MetadataDict | None = None, **extra) -> tfds.core.DatasetInfo:
    """DatasetInfo of a clip builder: `clip_features` at its config's frames and size."""
    cfg = builder.builder_config
    return tfds.core.DatasetInfo(builder=builder, description=description, metadata=metadata,
                                 features=clip_features(cfg.frames, cfg.size, encoding, **extra))


# ---------------------------------------------------------------------------------------------
# Vocabulary: labels, captions, flips
# ---------------------------------------------------------------------------------------------

def label_of(colour: str, shape: str, direction: str) -> int:
    """(c·3 + s)·8 + d for the names; raises ValueError on an unknown name."""
    for arg, value, names in (("colour", colour, COLOUR_NAMES), ("shape", shape, SHAPES),
                              ("direction", direction, DIRECTION_NAMES)):
        if value not in names:
            raise ValueError(f"{arg}: expected one of {list(names)}, got {value!r}")
    c, s, d = COLOUR_NAMES.index(colour), SHAPES.index(shape), DIRECTION_NAMES.index(direction)
    return (c * len(SHAPES) + s) * len(DIRECTIONS) + d


def combo_of(label: int) -> tuple[str, str, str]:
    """Inverse of `label_of`: label -> (colour, shape, direction)."""
    if not 0 <= int(label) < NUM_CLASSES:
        raise ValueError(f"label: expected an int in [0, {NUM_CLASSES}), got {label!r}")
    cs, d = divmod(int(label), len(DIRECTIONS))
    c, s = divmod(cs, len(SHAPES))
    return COLOUR_NAMES[c], SHAPES[s], DIRECTION_NAMES[d]


def caption_of(colour: str, shape: str, direction: str) -> str:
    return f"a {colour} {shape} moving {direction}"


def hflip_direction(direction: str) -> str:
    """Mirror image of a direction under a horizontal flip (left<->right)."""
    dx, dy = DIRECTIONS[direction]
    return next(n for n, v in DIRECTIONS.items() if v == (-dx, dy))


@functools.lru_cache(maxsize=None)
def heldout_labels(fraction: float = 0.1) -> tuple[int, ...]:
    """Labels of the held-out combinations: ~fraction of all, closed under the horizontal flip.

    Chosen by a fixed-seed permutation of flip orbits ({left, right}-style pairs, or singletons for
    up/down), taken round-robin over the colours (so every colour has held-out combinations) until
    round(fraction·NUM_CLASSES) labels are held out, skipping an orbit if it would remove the last
    train combination of some colour, shape or direction.
    """
    if not 0.0 <= fraction <= 0.5:
        raise ValueError(f"heldout_fraction: expected a float in [0, 0.5], got {fraction!r}")
    orbits = []
    for label in range(NUM_CLASSES):
        c, s, d = combo_of(label)
        mirror = label_of(c, s, hflip_direction(d))
        if mirror >= label:
            orbits.append(tuple(sorted({label, mirror})))
    order = np.random.default_rng(_HELDOUT_SEED).permutation(len(orbits))
    queues = [[orbits[i] for i in order if combo_of(orbits[i][0])[0] == c] for c in COLOUR_NAMES]
    target = int(round(fraction * NUM_CLASSES))
    held: set[int] = set()
    turn = 0
    while len(held) < target and any(queues):
        queue = queues[turn % len(queues)]
        turn += 1
        if not queue:
            continue
        trial = held | set(queue.pop(0))
        train = [combo_of(l) for l in range(NUM_CLASSES) if l not in trial]
        if all({x[k] for x in train} == set(names) for k, names in
               enumerate((COLOUR_NAMES, SHAPES, DIRECTION_NAMES))):
            held = trial
    return tuple(sorted(held))


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def shape_mask(shape: str, side: int) -> np.ndarray:
    """Crisp (side, side) bool mask whose bounding box is the whole square.

    circle: pixel centres within radius side/2; square: all; triangle: apex up, full-width base.
    """
    centres = np.arange(side) + 0.5
    rows, cols = np.meshgrid(centres, centres, indexing="ij")
    half = side / 2.0
    if shape == "circle":
        return (rows - half) ** 2 + (cols - half) ** 2 <= half ** 2
    if shape == "square":
        return np.ones((side, side), bool)
    if shape == "triangle":
        return np.abs(cols - half) <= (rows + 0.5) / 2.0
    raise ValueError(f"shape: expected one of {list(SHAPES)}, got {shape!r}")


def render_video(colour: str, shape: str, direction: str, rng: np.random.Generator,
                 frames: int, size: int, min_travel: float = 0.0) -> np.ndarray:
    """One clip: uint8 (frames, size, size, 3).

    Shape side ~ U{max(5, 5·size/16) .. max(that, 7·size/16)}; total travel D ~ U[lo + min_travel·
    (room − lo), room] pixels along each moving axis (diagonals move equally in x and y), with
    lo = max(3, size/4) and room = size − side, so min_travel = 1 always crosses the whole room;
    the shape stays wholly inside the frame; colour jitter ±12 per channel; background grey 0..31
    (+0..5 tint).
    """
    label_of(colour, shape, direction)  # validates the names
    if frames < 2:
        raise ValueError(f"frames: expected an int >= 2, got {frames!r}")
    if size < 12:
        raise ValueError(f"size: expected an int >= 12, got {size!r}")
    if not 0.0 <= min_travel <= 1.0:
        raise ValueError(f"min_travel: expected a float in [0, 1], got {min_travel!r}")
    smallest = max(5, (5 * size) // 16)
    side = int(rng.integers(smallest, max(smallest, (7 * size) // 16) + 1))
    room = size - side
    lo = max(3.0, size / 4.0)
    travel = float(rng.uniform(lo + min_travel * (room - lo), room))
    dx, dy = DIRECTIONS[direction]
    step_col, step_row = dx, -dy  # rows grow downward
    offsets = np.round(travel * np.arange(frames) / (frames - 1)).astype(int)
    span = int(offsets[-1])

    def start(step):  # top-left coordinate at frame 0, keeping the whole path inside [0, room]
        if step > 0:
            return int(rng.integers(0, room - span + 1))
        if step < 0:
            return int(rng.integers(span, room + 1))
        return int(rng.integers(0, room + 1))

    row0, col0 = start(step_row), start(step_col)
    fg = np.clip(np.asarray(COLOURS[colour]) + rng.integers(-12, 13, size=3), 0, 255)
    bg = int(rng.integers(0, 32)) + rng.integers(0, 6, size=3)
    video = np.empty((frames, size, size, 3), np.uint8)
    video[...] = bg.astype(np.uint8)
    mask = shape_mask(shape, side)
    for t, o in enumerate(offsets):
        r, c = row0 + step_row * o, col0 + step_col * o
        video[t, r:r + side, c:c + side][mask] = fg.astype(np.uint8)
    return video


# ---------------------------------------------------------------------------------------------
# tfds builder
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class MovingShapesConfig(tfds.core.BuilderConfig):
    """frames × size² clips; num_* examples per split; seed fixes every pixel; min_travel as in
    `render_video` (0: travel anywhere from a quarter of the frame to the room the shape has)."""
    frames: int = 8
    size: int = 16
    min_travel: float = 0.0
    num_train: int = 256
    num_validation: int = 64
    num_heldout: int = 64
    heldout_fraction: float = 0.1
    seed: int = 0


TINY = MovingShapesConfig(name="tiny", description="8 frames of 16x16, for tests",
                          frames=8, size=16, num_train=256, num_validation=64, num_heldout=64)
TINY_FAST = MovingShapesConfig(name="tiny_fast", description="tiny, every clip crossing the whole "
                               "room its shape has (~1.4 px a frame)", frames=8, size=16,
                               num_train=256, num_validation=64, num_heldout=64, min_travel=1.0)
DEFAULT = MovingShapesConfig(name="default", description="16 frames of 32x32 (DiT3D-S/2 grid)",
                             frames=16, size=32, num_train=4096, num_validation=512,
                             num_heldout=512)


def _resolve_config(config) -> MovingShapesConfig:
    if isinstance(config, MovingShapesConfig):
        return config
    named = {c.name: c for c in MovingShapes.BUILDER_CONFIGS}
    if config not in named:
        raise ValueError(f"config: expected a MovingShapesConfig or one of {list(named)}, "
                         f"got {config!r}")
    return named[config]


def split_labels(split: str, config="tiny") -> tuple[int, ...]:
    """Labels (sorted) whose combinations appear in `split`."""
    cfg = _resolve_config(config)
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {list(SPLITS)}, got {split!r}")
    held = set(heldout_labels(cfg.heldout_fraction))
    if split == "heldout":
        return tuple(sorted(held))
    return tuple(l for l in range(NUM_CLASSES) if l not in held)


def captions(split: str, config="tiny") -> list[str]:
    """Distinct captions of `split` under `config` (name or MovingShapesConfig), in label order."""
    return [caption_of(*combo_of(l)) for l in split_labels(split, config)]


def example(split: str, index: int, config="tiny") -> dict:
    """Example `index` of `split`: {"video": uint8 (F,S,S,3), "caption": str, "label": int}."""
    cfg = _resolve_config(config)
    labels = split_labels(split, cfg)
    label = labels[index % len(labels)]
    rng = np.random.default_rng((cfg.seed, _SPLIT_CODES[split], index))
    colour, shape, direction = combo_of(label)
    video = render_video(colour, shape, direction, rng, cfg.frames, cfg.size, cfg.min_travel)
    return {"video": video, "caption": caption_of(colour, shape, direction), "label": label}


class MovingShapes(tfds.core.GeneratorBasedBuilder):
    """tfds builder `moving_shapes` (array_record; no TensorFlow needed).

    Features: "video" uint8 Tensor (F, S, S, 3) (zlib-compressed bytes on disk), "caption" Text,
    "label" int32 scalar.
    >>> b = MovingShapes(config="tiny", data_dir=tmp); b.download_and_prepare()
    >>> src = b.as_data_source(split="heldout")
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [TINY, TINY_FAST, DEFAULT]
    DEFAULT_CONFIG_NAME = "tiny"
    num_classes = NUM_CLASSES

    # tfds' default code_path probes `importlib_resources`, which is not installed on Python >= 3.9
    # (tfds only requires it below 3.9); this file is the code path.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return epath.Path(__file__)

    def __init__(self, *, config="tiny", data_dir=None, file_format="array_record", **kwargs):
        super().__init__(config=config, data_dir=data_dir or default_data_dir(),
                         file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return clip_info(self, __doc__.split("\n\n")[0], "zlib")

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        count = {"train": cfg.num_train, "validation": cfg.num_validation,
                 "heldout": cfg.num_heldout}[split]
        for i in range(count):
            ex = example(split, i, cfg)
            yield i, {"video": ex["video"], "caption": ex["caption"],
                      "label": np.int32(ex["label"])}

    def caption_labels(self, split: str) -> dict[str, int]:
        """{caption: label} for every caption of `split` (no data read)."""
        return {caption_of(*combo_of(l)): l for l in split_labels(split, self.builder_config)}
