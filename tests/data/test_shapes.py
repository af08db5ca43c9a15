"""moving_shapes: rendering, vocabulary, held-out split, deterministic tfds build (no TensorFlow)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from dit3d_jax.data import shapes as S


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    builder = S.MovingShapes(config="tiny", data_dir=tmp_path_factory.mktemp("tfds"))
    builder.download_and_prepare()
    return builder


def _split_arrays(builder, split):
    src = builder.as_data_source(split=split)
    return [src[i] for i in range(len(src))]


def test_label_formula_and_inverse():
    assert S.NUM_CLASSES == 6 * 3 * 8 == S.MovingShapes.num_classes
    assert S.label_of("red", "circle", "right") == 0
    assert S.label_of("green", "square", "up") == (1 * 3 + 1) * 8 + 2
    assert [S.label_of(*S.combo_of(l)) for l in range(S.NUM_CLASSES)] == list(range(144))
    with pytest.raises(ValueError, match="colour"):
        S.label_of("purple", "circle", "up")


def test_render_video_moves_the_shape_in_its_direction():
    rng = np.random.default_rng(0)
    for d, (dx, dy) in S.DIRECTIONS.items():
        v = S.render_video("white", "square", d, rng, frames=8, size=16)
        assert v.shape == (8, 16, 16, 3) and v.dtype == np.uint8
        masks = v[..., 0] > 128
        # the whole square is visible in every frame and keeps its area
        assert len({int(m.sum()) for m in masks}) == 1
        rows, cols = np.nonzero(masks[0])
        rows2, cols2 = np.nonzero(masks[-1])
        shift = (cols2.mean() - cols.mean(), rows.mean() - rows2.mean())  # (x, y up)
        assert np.sign(shift[0]) == dx and np.sign(shift[1]) == dy, d
        if dx and dy:
            assert shift[0] * dx == shift[1] * dy  # diagonals move equally on both axes


def test_shape_masks_have_their_corner_signature():
    for side in (5, 6, 9, 14):
        sq, ci, tr = (S.shape_mask(s, side) for s in ("square", "circle", "triangle"))
        assert sq.all()
        assert not ci[[0, 0, -1, -1], [0, -1, 0, -1]].any()
        assert abs(ci.mean() - np.pi / 4) < 0.11
        assert tr[-1].all() and not tr[0, 0] and not tr[0, -1]
        for m in (ci, tr):  # the bounding box is the whole square
            assert m.any(0).all() and m.any(1).all()


def test_heldout_is_flip_closed_and_leaves_every_attribute_in_train():
    held = set(S.heldout_labels(0.1))
    assert len(held) == round(0.1 * 144)
    for l in held:
        c, s, d = S.combo_of(l)
        assert S.label_of(c, s, S.hflip_direction(d)) in held
    train = [S.combo_of(l) for l in S.split_labels("train")]
    for k, names in enumerate((S.COLOUR_NAMES, S.SHAPES, S.DIRECTION_NAMES)):
        assert {x[k] for x in train} == set(names)
    assert {S.combo_of(l)[0] for l in held} == set(S.COLOUR_NAMES)  # each colour has a test case
    assert set(S.captions("train")).isdisjoint(S.captions("heldout"))
    assert S.captions("validation") == S.captions("train")


def test_built_splits_are_disjoint_in_captions_and_match_captions(tiny):
    got = {split: _split_arrays(tiny, split) for split in S.SPLITS}
    assert {k: len(v) for k, v in got.items()} == {"train": 256, "validation": 64, "heldout": 64}
    seen = {split: {ex["caption"].decode() for ex in exs} for split, exs in got.items()}
    assert seen["train"].isdisjoint(seen["heldout"])
    assert seen["validation"] <= seen["train"]
    assert seen["heldout"] == set(S.captions("heldout"))
    assert seen["train"] <= set(S.captions("train"))
    for split, exs in got.items():
        for ex in exs:
            assert ex["video"].shape == (8, 16, 16, 3) and ex["video"].dtype == np.uint8
            assert S.caption_of(*S.combo_of(ex["label"])) == ex["caption"].decode()
    # validation draws new samples, not copies of train
    train_videos = {ex["video"].tobytes() for ex in got["train"]}
    assert not any(ex["video"].tobytes() in train_videos for ex in got["validation"])


def test_build_is_deterministic(tiny, tmp_path):
    other = S.MovingShapes(config="tiny", data_dir=tmp_path)
    other.download_and_prepare()
    for split in S.SPLITS:
        a, b = _split_arrays(tiny, split), _split_arrays(other, split)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert np.array_equal(x["video"], y["video"])
            assert x["caption"] == y["caption"] and x["label"] == y["label"]
    # a different seed gives different pixels
    cfg = S.MovingShapesConfig(name="tiny_seed1", frames=8, size=16, num_train=8,
                               num_validation=1, num_heldout=1, seed=1)
    assert not np.array_equal(S.example("train", 0, cfg)["video"],
                              S.example("train", 0, "tiny")["video"])


def test_full_build_and_pipeline_never_import_tensorflow(tmp_path):
    code = f"""
import sys
from dit3d_jax.data import get_builder, make_iterator
b = get_builder("moving_shapes", config="tiny", data_dir={str(tmp_path)!r})
it = make_iterator(b, split="heldout", global_batch_size=4, seed=0, process_index=0,
                   process_count=1, augment=True)
batch = next(it)
assert batch["video"].shape == (4, 8, 16, 16, 3)
print("TF" if "tensorflow" in sys.modules else "NO_TF")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "NO_TF"


def test_tiny_fast_crosses_the_whole_room_and_keeps_the_splits():
    assert S.split_labels("heldout", "tiny_fast") == S.split_labels("heldout", "tiny")
    for i in range(40):
        ex = S.example("train", i, "tiny_fast")
        fg = np.abs(ex["video"].astype(int) - ex["video"][0, 0, 0].astype(int)).sum(-1) > 60
        first, last = np.argwhere(fg[0]), np.argwhere(fg[-1])
        side = first[:, 0].max() - first[:, 0].min() + 1
        moved = np.abs(last.min(0) - first.min(0))  # (rows, cols) of the bounding box corner
        dx, dy = S.DIRECTIONS[S.combo_of(ex["label"])[2]]
        assert tuple(moved) == (abs(dy) * (16 - side), abs(dx) * (16 - side)), i
    with pytest.raises(ValueError, match="min_travel"):
        S.render_video("red", "circle", "up", np.random.default_rng(0), 8, 16, min_travel=1.5)
