"""In-training previews (dit3d_jax/train/preview.py): a fixed grid every sample.preview_every
steps in workdir/previews and TensorBoard, the same for the same params, off by default, and one
ConfigError for out-of-range fields."""
import io
import os

import jax
import numpy as np
import pytest
from PIL import Image
from tb_events import summary_values

from dit3d_jax.diffusion.objective import make_objective
from dit3d_jax.models import init_params
from dit3d_jax.models import text as text_lib
from dit3d_jax.train.config import ConfigError, load_config_file
from dit3d_jax.train.loop import model_from_config, train_and_evaluate
from dit3d_jax.train.preview import Preview, default_prompts, make_preview
from dit3d_jax.utils.video import LINE_HEIGHT

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "tiny.py")


def tiny(**sample):
    return load_config_file(TINY, {f"sample.{k}": v for k, v in sample.items()})


def read_images(tb_dir):
    """{(tag, step): (H, W, C) uint8} of every image summary in the event files of tb_dir."""
    return {(v.tag, step): np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string)))
            for step, v in summary_values(tb_dir) if v.HasField("image")}


def test_previews_at_every_nth_step_in_workdir_and_tensorboard(tmp_path):
    """5 steps, preview_every=2: PNG + GIF at steps 2 and 4 only. tiny is 4 frames of 8×8, 10
    classes, no text encoder: 4 tiles "class 0/2/5/7", upscaled ×8 to 64 px; the PNG has one row
    per tile (a caption line over 4 frames side by side), the GIF a 2×2 grid of 4 frames (the
    captions wrapped to the tiles); the TensorBoard image 'preview' at each step is the PNG."""
    config = tiny(preview_every=2)
    config.train.num_steps = 5
    train_and_evaluate(config, str(tmp_path))
    previews = tmp_path / "previews"
    assert sorted(os.listdir(previews)) == ["step_000002.gif", "step_000002.png",
                                            "step_000004.gif", "step_000004.png"]
    pad, tile = 2, 64
    png = np.asarray(Image.open(previews / "step_000004.png"))
    assert png.shape == (pad + 4 * (LINE_HEIGHT + tile + pad), pad + 4 * tile + pad, 3)
    gif = Image.open(previews / "step_000004.gif")
    assert gif.n_frames == 4
    width, height = gif.size
    caption = (height - pad) // 2 - tile - pad  # the caption wraps to the tile's width
    assert width == pad + 2 * (tile + pad) and height == pad + 2 * (caption + tile + pad)
    assert caption > 0 and caption % LINE_HEIGHT == 0
    images = read_images(tmp_path / "tb")
    assert sorted(images) == [("preview", 2), ("preview", 4)]
    np.testing.assert_array_equal(images[("preview", 4)][..., :3], png)
    assert not np.array_equal(images[("preview", 2)], images[("preview", 4)])  # it learns


def test_preview_is_off_by_default_and_writes_nothing(tmp_path):
    config = tiny()
    assert config.sample.preview_every == 0
    config.train.num_steps = 2
    train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "previews").exists()
    assert read_images(tmp_path / "tb") == {}


def test_same_params_same_preview_other_params_other_preview(tmp_path):
    config = tiny(preview_every=1)
    model = model_from_config(config)
    preview = Preview(config, model, make_objective(config.objective, model.learn_sigma),
                      str(tmp_path))
    params = init_params(model, jax.random.key(0))
    params = jax.tree_util.tree_map(lambda p: p + 0.02 * np.sign(p + 0.5), params)  # non-zero
    first = preview.sample(params)
    assert first.shape == (4, 4, 8, 8, 4)
    np.testing.assert_array_equal(preview.sample(params), first)
    np.testing.assert_array_equal(preview.at(7, params), preview.at(8, params))
    other = jax.tree_util.tree_map(lambda p: p * 1.1, params)
    assert np.abs(preview.sample(other) - first).max() > 1e-3


class WordEncoder:
    """A deterministic stand-in text encoder: token i of a caption is its i-th word's length."""
    dim, max_length = 16, 8

    def encode(self, texts):
        emb = np.zeros((len(texts), self.max_length, self.dim), np.float32)
        mask = np.zeros((len(texts), self.max_length), bool)
        for row, text in enumerate(texts):
            for i, word in enumerate(text.split()[:self.max_length]):
                emb[row, i], mask[row, i] = len(word) / 10, True
        return emb, mask


def test_prompts_are_encoded_once_by_the_runs_encoder_and_cycle_over_the_tiles(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setitem(text_lib._ENCODERS, "words", lambda max_length: WordEncoder())
    config = tiny(preview_every=1, preview_prompts=("a b", "ccc"), preview_num=3)
    config.data.text_encoder = "words"
    model = model_from_config(config)
    preview = Preview(config, model, make_objective(config.objective, model.learn_sigma),
                      str(tmp_path))
    assert preview.captions == ["a b / class 0", "ccc / class 3", "a b / class 6"]
    want, want_mask = WordEncoder().encode(["a b", "ccc", "a b"])
    np.testing.assert_array_equal(preview.cond["text"], want)
    np.testing.assert_array_equal(preview.cond["text_mask"], want_mask)
    np.testing.assert_array_equal(preview.cond["y"], [0, 3, 6])


def test_default_prompts_are_held_out_captions_spread_over_them_else_none():
    from dit3d_jax.data import shapes
    config = load_config_file(os.path.join(REPO, "configs", "shapes_demo.py"))
    assert config.sample.preview_every == 800
    heldout = shapes.captions("heldout", "tiny")
    assert len(heldout) == 14
    assert default_prompts(config.data, 4) == [heldout[i] for i in (0, 3, 7, 10)]
    assert default_prompts(config.data, 20) == heldout
    assert not set(heldout) & set(shapes.captions("train", "tiny"))
    assert default_prompts(tiny().data, 4) == []  # synthetic data: no captions


@pytest.mark.parametrize("field,value,match", [
    ("preview_every", -1, r"^sample\.preview_every: expected an int >= 0, got -1$"),
    ("preview_num", 0, r"^sample\.preview_num: expected an int >= 1, got 0$"),
    ("preview_steps", 0, r"^sample\.preview_steps: expected an int >= 1, got 0$"),
    ("preview_prompts", ("a", ""), r"^sample\.preview_prompts: expected a tuple of non-empty "),
])
def test_out_of_range_fields_are_one_config_error(tmp_path, field, value, match):
    config = tiny(**{field: value})
    model = model_from_config(config)
    with pytest.raises(ConfigError, match=match):
        make_preview(config, model, make_objective(config.objective, model.learn_sigma),
                     str(tmp_path))


def test_prompts_for_a_model_without_text_are_a_config_error(tmp_path):
    config = tiny(preview_every=1, preview_prompts=("a red circle",))  # text_encoder "" in tiny
    model = model_from_config(config)
    with pytest.raises(ConfigError, match=r"^sample\.preview_prompts: the model has no text "):
        make_preview(config, model, make_objective(config.objective, model.learn_sigma),
                     str(tmp_path))


def test_a_bad_field_stops_train_and_evaluate_before_training(tmp_path):
    config = tiny(preview_num=0)
    with pytest.raises(ConfigError, match=r"^sample\.preview_num: expected an int >= 1, got 0$"):
        train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()
