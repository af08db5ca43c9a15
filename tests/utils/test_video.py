"""Sample files: what is written reads back as the same frames, tiled where the grid says."""
import imageio.v2 as imageio
import numpy as np
import pytest

from dit3d_jax.utils.video import make_grid, to_uint8, write_image, write_video


def test_to_uint8_maps_the_model_range():
    np.testing.assert_array_equal(to_uint8(np.array([-1.5, -1.0, 0.0, 1.0, 2.0])),
                                  [0, 0, 128, 255, 255])


def test_grid_places_each_video_in_its_tile():
    videos = np.zeros((3, 2, 4, 5, 3), np.uint8)
    for i in range(3):
        videos[i] = 50 * (i + 1)
    grid = make_grid(videos, ncols=2, pad=1)
    assert grid.shape == (2, 2 * 5 + 1, 2 * 6 + 1, 3)
    assert (grid[:, 1:5, 1:6] == 50).all() and (grid[:, 1:5, 7:12] == 100).all()
    assert (grid[:, 6:10, 1:6] == 150).all() and (grid[:, 6:10, 7:12] == 0).all()
    captioned = make_grid(videos, ncols=3, captions=["a", "b", "c"], scale=2)
    assert captioned.shape[1:] == (2 + 12 + 8 + 2, 3 * (10 + 2) + 2, 3)
    assert captioned[:, 2:14].max() > 0  # caption strip has text pixels
    long = make_grid(videos, ncols=3, captions=["a red circle moving up-left", "b", "c"])
    assert long.shape[1] > captioned.shape[1] - 8 + 12  # the long caption wraps onto more lines
    with pytest.raises(ValueError, match="captions: expected 3"):
        make_grid(videos, captions=["a"])


def test_gif_mp4_and_png_read_back(tmp_path):
    rng = np.random.default_rng(0)
    video = np.zeros((4, 16, 16, 3), np.uint8)
    for i in range(4):  # a flat-coloured square that moves (identical frames would merge)
        video[i, 4:12, 2 + i:10 + i] = rng.integers(0, 255, 3)
    gif = imageio.mimread(write_video(str(tmp_path / "a.gif"), video))
    assert len(gif) == 4 and np.abs(np.asarray(gif[0])[..., :3].astype(int) - video[0]).max() <= 8
    mp4 = imageio.mimread(write_video(str(tmp_path / "a.mp4"), video[:, :15]))
    assert len(mp4) == 4 and np.asarray(mp4[0]).shape == (16, 16, 3)
    assert np.abs(np.asarray(mp4[2])[6:10, 6:10].astype(int) - video[2, 6:10, 6:10]).max() <= 24
    png = imageio.imread(write_image(str(tmp_path / "a.png"), video[0]))
    np.testing.assert_array_equal(png, video[0])
    with pytest.raises(ValueError, match="expected a .gif or .mp4"):
        write_video(str(tmp_path / "a.avi"), video)
