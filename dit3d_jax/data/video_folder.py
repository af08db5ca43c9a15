"""tfds builder for a local folder of videos (.mp4, .gif, .npy) with optional captions.

Layout of the folder (files are found non-recursively, in sorted order):
    clip_a.mp4                    read with imageio (ffmpeg via imageio-ffmpeg)
    clip_b.gif                    read with imageio (pillow)
    clip_c.npy                    uint8 (F, H, W, 3) or (F, H, W), or float in [0, 1]
    clip_a.txt                    optional sidecar caption for clip_a.* (the whole file, with
                                  runs of whitespace collapsed to one space)
    captions.jsonl                optional: one {"file": "clip_b.gif", "caption": "..."} per line
A sidecar NAME.txt wins over captions.jsonl; a video with neither gets the caption "".

Each video becomes up to `clips_per_video` clips of `frames` frames taken every `frame_stride`
frames (clip starts evenly spaced over the video); each frame is resized (PIL bilinear, which
antialiases when shrinking) so its shorter side is `size`, then centre-cropped to size × size.
Unreadable videos and videos shorter than (frames − 1)·frame_stride + 1 frames are skipped with
a logged warning naming the file and the reason (also kept in `builder.skipped` and in the
dataset metadata); a folder with no usable video raises ValueError.

Labels: index of the caption in the sorted list of distinct captions of the built data
(`builder.num_classes` of them, stored in the dataset metadata).

Only a `train` split is built. The builder config name encodes (frames, size, stride, clips) and
a hash of the folder's absolute path, so different folders never share a cache directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from dit3d_jax.data.caption_files import jsonl_captions, sidecar_text
from dit3d_jax.data.shapes import clip_info, default_data_dir

VIDEO_EXTENSIONS = (".mp4", ".gif", ".npy")


@dataclasses.dataclass(eq=False)
class VideoFolderConfig(tfds.core.BuilderConfig):
    """folder: directory of videos; clips of `frames` frames at `size`², every `frame_stride`."""
    folder: str = ""
    frames: int = 16
    size: int = 32
    frame_stride: int = 1
    clips_per_video: int = 1


def make_config(folder, *, frames: int = 16, size: int = 32, frame_stride: int = 1,
                clips_per_video: int = 1, name: str | None = None) -> VideoFolderConfig:
    """A VideoFolderConfig whose default name encodes its fields and the folder path."""
    for arg, value in (("frames", frames), ("size", size), ("frame_stride", frame_stride),
                       ("clips_per_video", clips_per_video)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{arg}: expected a positive int, got {value!r}")
    folder = os.path.abspath(os.fspath(folder))
    if name is None:
        digest = hashlib.sha1(folder.encode()).hexdigest()[:8]
        name = f"f{frames}_s{size}_st{frame_stride}_c{clips_per_video}_{digest}"
    return VideoFolderConfig(name=name, description=f"videos from {folder}", folder=folder,
                             frames=int(frames), size=int(size), frame_stride=int(frame_stride),
                             clips_per_video=int(clips_per_video))


# ---------------------------------------------------------------------------------------------
# Reading and resizing
# ---------------------------------------------------------------------------------------------

def read_video(path) -> np.ndarray:
    """All frames of a .mp4/.gif/.npy file as uint8 (F, H, W, 3). Raises on unreadable input."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        v = np.load(path, allow_pickle=False)
        if np.issubdtype(v.dtype, np.floating):
            if v.size and (np.nanmin(v) < 0.0 or np.nanmax(v) > 1.0):
                raise ValueError(f"float .npy video must lie in [0, 1], got range "
                                 f"[{np.nanmin(v):.3g}, {np.nanmax(v):.3g}]")
            v = np.round(np.nan_to_num(v) * 255.0).astype(np.uint8)
        elif v.dtype != np.uint8:
            raise ValueError(f".npy video must be uint8 or float in [0, 1], got {v.dtype}")
    elif ext in (".mp4", ".gif"):
        import imageio.v3 as iio  # pylint: disable=import-outside-toplevel
        v = np.asarray(iio.imread(path, index=None, plugin="pillow") if ext == ".gif" else
                       np.stack(list(iio.imiter(path, plugin="FFMPEG"))))
    else:
        raise ValueError(f"unsupported extension {ext!r}; expected one of {VIDEO_EXTENSIONS}")
    if v.ndim == 3:  # (F, H, W) grey
        v = v[..., None]
    if v.ndim != 4 or v.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected frames (F, H, W[, 1|3|4]), got shape {v.shape}")
    if v.shape[-1] == 1:
        v = np.repeat(v, 3, axis=-1)
    return np.ascontiguousarray(v[..., :3]).astype(np.uint8)


def resize_and_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 (F, H, W, 3) -> (F, size, size, 3): shorter side to `size`, then centre crop."""
    f, h, w, _ = frames.shape
    scale = size / min(h, w)
    nh, nw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = np.empty((f, size, size, 3), np.uint8)
    for i, frame in enumerate(frames):
        img = Image.fromarray(frame)
        if (nh, nw) != (h, w):
            img = img.resize((nw, nh), Image.BILINEAR)
        out[i] = np.asarray(img)[top:top + size, left:left + size]
    return out


def clip_starts(num_frames: int, frames: int, stride: int, clips: int) -> list[int]:
    """Start frames of up to `clips` clips, evenly spaced; [] if the video is too short."""
    span = (frames - 1) * stride + 1
    if num_frames < span:
        return []
    last = num_frames - span
    return sorted({int(round(x)) for x in np.linspace(0, last, clips)})


def read_captions(folder) -> dict[str, str]:
    """{video file name: caption} from captions.jsonl, overridden by NAME.txt sidecars
    (`dit3d_jax.data.caption_files`)."""
    folder = os.fspath(folder)
    out = {name: str(caption).strip()
           for name, caption in jsonl_captions(folder, "video_folder").items()}
    for name in sorted(os.listdir(folder)):
        if os.path.splitext(name)[1].lower() not in VIDEO_EXTENSIONS:
            continue
        sidecar = sidecar_text(folder, name)
        if sidecar is not None:
            out[name] = re.sub(r"\s+", " ", sidecar).strip()
    return out


# ---------------------------------------------------------------------------------------------
# tfds builder
# ---------------------------------------------------------------------------------------------

class VideoFolder(tfds.core.GeneratorBasedBuilder):
    """tfds builder `video_folder`: clips from a local folder (array_record, no TensorFlow).

    Features: "video" uint8 (frames, size, size, 3), "caption" Text, "label" int32, "file" Text.
    >>> b = VideoFolder(folder="/videos", frames=16, size=32, data_dir=tmp)
    >>> b.download_and_prepare(); src = b.as_data_source(split="train")
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = []

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):  # see MovingShapes.code_path
        return epath.Path(__file__)

    def __init__(self, *, folder=None, config: VideoFolderConfig | None = None, frames: int = 16,
                 size: int = 32, frame_stride: int = 1, clips_per_video: int = 1,
                 data_dir=None, file_format="array_record", **kwargs):
        if config is None:
            if folder is None:
                raise ValueError("folder: expected a directory of videos (or config=), got None")
            config = make_config(folder, frames=frames, size=size, frame_stride=frame_stride,
                                 clips_per_video=clips_per_video)
        elif not isinstance(config, VideoFolderConfig):
            raise TypeError(f"config: expected a VideoFolderConfig, got {type(config).__name__}")
        self._skipped: list[tuple[str, str]] = []
        super().__init__(config=config, data_dir=data_dir or default_data_dir(),
                         file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return clip_info(self, "Clips from a local video folder.", "bytes",
                         metadata=tfds.core.MetadataDict(), file=tfds.features.Text())

    def _scan(self) -> list[tuple[str, str, list[int]]]:
        """(file name, caption, clip starts) of every usable video; records the skipped ones."""
        cfg = self.builder_config
        folder = cfg.folder
        if not folder or not os.path.isdir(folder):
            raise ValueError(f"folder: expected an existing directory of videos, got {folder!r}")
        caps = read_captions(folder)
        usable = []
        for name in sorted(os.listdir(folder)):
            if os.path.splitext(name)[1].lower() not in VIDEO_EXTENSIONS:
                continue
            try:
                n = len(read_video(os.path.join(folder, name)))
            except Exception as e:  # pylint: disable=broad-except  # any unreadable file is skipped
                first = (str(e).strip().splitlines() or [""])[0][:200]
                self._skip(name, f"unreadable ({type(e).__name__}: {first})")
                continue
            starts = clip_starts(n, cfg.frames, cfg.frame_stride, cfg.clips_per_video)
            if not starts:
                need = (cfg.frames - 1) * cfg.frame_stride + 1
                self._skip(name, f"too short: {n} frames, need {need} (frames={cfg.frames}, "
                                 f"frame_stride={cfg.frame_stride})")
                continue
            usable.append((name, caps.get(name, ""), starts))
        if not usable:
            raise ValueError(
                f"folder: no usable video (.mp4/.gif/.npy with >= "
                f"{(cfg.frames - 1) * cfg.frame_stride + 1} frames) in {folder!r}; "
                f"skipped: {self._skipped or 'no .mp4/.gif/.npy file'}")
        return usable

    def _skip(self, name: str, reason: str):
        self._skipped.append((name, reason))
        logging.warning("video_folder: skipping %s: %s", name, reason)

    def _split_generators(self, dl_manager):
        del dl_manager
        usable = self._scan()
        vocab = sorted({caption for _, caption, _ in usable})
        self.info.metadata["captions"] = vocab
        self.info.metadata["skipped"] = [{"file": n, "reason": r} for n, r in self._skipped]
        return {"train": self._generate_examples(usable, vocab)}

    def _generate_examples(self, usable, vocab):
        cfg = self.builder_config
        index = {c: i for i, c in enumerate(vocab)}
        for name, caption, starts in usable:
            video = read_video(os.path.join(cfg.folder, name))
            for s in starts:
                clip = video[s:s + (cfg.frames - 1) * cfg.frame_stride + 1:cfg.frame_stride]
                yield f"{name}#{s}", {"video": resize_and_crop(clip, cfg.size),
                                      "caption": caption, "label": np.int32(index[caption]),
                                      "file": name}

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(file name, reason) of every video left out (from this build, or the stored metadata)."""
        if self._skipped:
            return list(self._skipped)
        stored = self.info.metadata.get("skipped", []) if self.info.metadata is not None else []
        return [(row["file"], row["reason"]) for row in stored]

    @property
    def num_classes(self) -> int:
        """Number of distinct captions (labels 0..num_classes−1); needs the built data."""
        return len(self._vocab())

    def _vocab(self) -> list[str]:
        vocab = self.info.metadata.get("captions") if self.info.metadata is not None else None
        if vocab is None:
            raise ValueError("video_folder: the dataset is not built yet; call "
                             "download_and_prepare() first")
        return list(vocab)

    def caption_labels(self, split: str = "train") -> dict[str, int]:
        """{caption: label} of the built data (one split: train)."""
        if split != "train":
            raise ValueError(f"split: expected 'train' (the only split), got {split!r}")
        return {c: i for i, c in enumerate(self._vocab())}
