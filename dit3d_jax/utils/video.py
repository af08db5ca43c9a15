"""Writing samples: uint8 conversion, captioned grids, GIF / MP4 / PNG files.

Videos are (F, H, W, 3) and batches (N, F, H, W, 3), channels last; model outputs live in [−1, 1].
"""
from __future__ import annotations

import os
import textwrap
import warnings
from typing import Optional, Sequence

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw, ImageFont


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[−1, 1] floats (any shape) -> uint8 [0, 255], clipped; uint8 input passes through."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    return np.clip(np.round((x.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (..., H, W, C) by an integer factor."""
    if factor <= 1:
        return frames
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


LINE_HEIGHT = 12


def _wrap(text: str, width: int) -> list[str]:
    """`text` broken into lines that fit `width` pixels in PIL's built-in font."""
    font = ImageFont.load_default()
    chars = max(1, int((width - 2) // max(font.getlength("m"), 1)))
    return textwrap.wrap(text, chars) or [""]


def _caption_strip(lines: Sequence[str], width: int) -> np.ndarray:
    """A (12·len(lines), width, 3) uint8 strip with the lines in white on black."""
    strip = Image.new("RGB", (width, LINE_HEIGHT * len(lines)))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((1, i * LINE_HEIGHT), line, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.asarray(strip)


def make_grid(videos: np.ndarray, ncols: Optional[int] = None, pad: int = 2, scale: int = 1,
              captions: Optional[Sequence[str]] = None) -> np.ndarray:
    """Tiles (N, F, H, W, 3) videos (or (N, H, W, 3) images) into one (F, H', W', 3) uint8 video
    (or (H', W', 3) image), row-major, with an optional caption above each tile (wrapped to the
    tile's width; every tile gets the height of the longest caption)."""
    videos = to_uint8(videos)
    is_image = videos.ndim == 4
    if is_image:
        videos = videos[:, None]
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos: expected (N, F, H, W, 3) or (N, H, W, 3), got {videos.shape}")
    videos = upscale(videos, scale)
    n, f, h, w, _ = videos.shape
    if captions is not None and len(captions) != n:
        raise ValueError(f"captions: expected {n}, got {len(captions)}")
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    wrapped = [_wrap(c, w) for c in captions] if captions is not None else []
    cap_h = LINE_HEIGHT * max((len(lines) for lines in wrapped), default=0)
    tile_h, tile_w = h + cap_h + pad, w + pad
    grid = np.zeros((f, nrows * tile_h + pad, ncols * tile_w + pad, 3), np.uint8)
    for i in range(n):
        top, left = (i // ncols) * tile_h + pad, (i % ncols) * tile_w + pad
        if captions is not None:
            strip = _caption_strip(wrapped[i], w)
            grid[:, top:top + strip.shape[0], left:left + w] = strip
        grid[:, top + cap_h:top + cap_h + h, left:left + w] = videos[i]
    return grid[0] if is_image else grid


def write_video(path: str, video: np.ndarray, fps: int = 8) -> str:
    """Writes (F, H, W, 3) as .gif (looping) or .mp4 (H.264 via imageio-ffmpeg); returns path."""
    video = to_uint8(video)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".gif":
        imageio.mimsave(path, list(video), duration=1000 / fps, loop=0)
    elif ext == ".mp4":
        # H.264 wants even sizes: pad by one pixel where needed.
        f, h, w, _ = video.shape
        video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        with warnings.catch_warnings():  # ffmpeg runs as a subprocess: harmless fork warning
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
            imageio.mimsave(path, list(video), fps=fps, codec="libx264", macro_block_size=1,
                            quality=8, pixelformat="yuv420p")
    else:
        raise ValueError(f"path: expected a .gif or .mp4 file, got {path!r}")
    return path


def write_image(path: str, image: np.ndarray) -> str:
    """Writes (H, W, 3) as PNG; returns path."""
    imageio.imwrite(path, to_uint8(image))
    return path
