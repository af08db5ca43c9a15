"""video_folder: builds from a local folder, skips (and reports) bad files, resizes and crops."""

import json
import logging

import imageio.v3 as iio
import numpy as np
import pytest

from dit3d_jax.data.pipeline import make_iterator
from dit3d_jax.data.video_folder import VideoFolder, clip_starts, resize_and_crop


def _frames_numbered(n, h, w):
    """uint8 (n, h, w, 3): frame t is filled with 10·t (so frames can be identified)."""
    return np.broadcast_to((10 * np.arange(n, dtype=np.uint8))[:, None, None, None],
                           (n, h, w, 3)).copy()


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "videos"
    d.mkdir()
    iio.imwrite(d / "a.gif", _frames_numbered(10, 20, 30), duration=50, loop=0)
    np.save(d / "b.npy", _frames_numbered(12, 24, 24))
    np.save(d / "short.npy", np.zeros((3, 24, 24, 3), np.uint8))
    (d / "corrupt.gif").write_bytes(b"GIF89a this is not a gif")
    (d / "notes.md").write_text("ignored: not a video")
    (d / "captions.jsonl").write_text(
        json.dumps({"file": "a.gif", "caption": "numbers counting up"}) + "\n"
        + json.dumps({"file": "b.npy", "caption": "overridden by b.txt"}) + "\n")
    (d / "b.txt").write_text("a grey ramp\n")
    return d


def test_builds_usable_videos_and_reports_the_rest(folder, tmp_path, caplog):
    builder = VideoFolder(folder=folder, frames=4, size=16, frame_stride=2, clips_per_video=2,
                          data_dir=tmp_path / "tfds")
    with caplog.at_level(logging.WARNING):
        builder.download_and_prepare()
    skipped = dict(builder.skipped)
    assert set(skipped) == {"corrupt.gif", "short.npy"}
    assert skipped["corrupt.gif"].startswith("unreadable")
    assert skipped["short.npy"] == "too short: 3 frames, need 7 (frames=4, frame_stride=2)"
    assert "corrupt.gif" in caplog.text and "short.npy" in caplog.text

    src = builder.as_data_source(split="train")
    rows = sorted((src[i]["file"].decode(), src[i]["caption"].decode(), int(src[i]["label"]),
                   tuple(src[i]["video"][:, 0, 0, 0])) for i in range(len(src)))
    assert builder.num_classes == 2
    assert builder.caption_labels() == {"a grey ramp": 0, "numbers counting up": 1}
    # clips of 4 frames every 2nd frame; starts spread evenly over the video
    assert rows == [("a.gif", "numbers counting up", 1, (0, 20, 40, 60)),
                    ("a.gif", "numbers counting up", 1, (30, 50, 70, 90)),
                    ("b.npy", "a grey ramp", 0, (0, 20, 40, 60)),
                    ("b.npy", "a grey ramp", 0, (50, 70, 90, 110))]
    for i in range(len(src)):
        assert src[i]["video"].shape == (4, 16, 16, 3) and src[i]["video"].dtype == np.uint8

    # rebuilt from the cache, the report survives; the pipeline reads it
    again = VideoFolder(folder=folder, frames=4, size=16, frame_stride=2, clips_per_video=2,
                        data_dir=tmp_path / "tfds")
    assert dict(again.skipped) == skipped and again.num_classes == 2
    batch = next(make_iterator(again, global_batch_size=4, seed=0, num_epochs=1,
                               process_index=0, process_count=1))
    assert batch["video"].shape == (4, 4, 16, 16, 3)


def test_mp4_is_read_through_ffmpeg(tmp_path):
    d = tmp_path / "mp4s"
    d.mkdir()
    video = np.zeros((9, 32, 48, 3), np.uint8)
    video[..., 0] = 200  # red: survives lossy coding within a tolerance
    iio.imwrite(d / "red.mp4", video, fps=8, macro_block_size=16)
    builder = VideoFolder(folder=d, frames=8, size=16, data_dir=tmp_path / "tfds")
    builder.download_and_prepare()
    src = builder.as_data_source(split="train")
    assert len(src) == 1 and src[0]["caption"] == b""
    clip = src[0]["video"].astype(int)
    assert np.abs(clip[..., 0] - 200).max() < 12 and clip[..., 1:].max() < 12


def test_resize_keeps_the_centre_and_the_colours():
    # 24 x 48 frame: left quarter red, middle half green, right quarter blue
    frame = np.zeros((24, 48, 3), np.uint8)
    frame[:, :12, 0] = 255
    frame[:, 12:36, 1] = 255
    frame[:, 36:, 2] = 255
    out = resize_and_crop(np.stack([frame, frame]), 16)
    assert out.shape == (2, 16, 16, 3)
    # scale 2/3 -> 16 x 32, centre crop keeps source columns 12..36: green, the two edge
    # columns blended a little with red / blue by the antialiasing filter
    np.testing.assert_array_equal(out[:, :, 1:15], np.broadcast_to([0, 255, 0], (2, 16, 14, 3)))
    assert out[..., 1].min() > 200
    assert out[:, :, 0, 0].max() < 50 and out[:, :, 0, 2].max() == 0
    assert out[:, :, 15, 2].max() < 50 and out[:, :, 15, 0].max() == 0


def test_clip_starts():
    assert clip_starts(10, 4, 2, 1) == [0]
    assert clip_starts(10, 4, 2, 3) == [0, 2, 3]
    assert clip_starts(6, 4, 2, 2) == []


def test_empty_or_unusable_folder_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no usable video"):
        VideoFolder(folder=empty, frames=4, size=16, data_dir=tmp_path / "t1"
                    ).download_and_prepare()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.gif").write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"x\.gif.*unreadable"):
        VideoFolder(folder=bad, frames=4, size=16, data_dir=tmp_path / "t2"
                    ).download_and_prepare()
    with pytest.raises(ValueError, match="folder"):
        VideoFolder(folder=tmp_path / "missing", frames=4, size=16, data_dir=tmp_path / "t3"
                    ).download_and_prepare()
