"""Writing samples: uint8 conversion, captioned grids, GIF / MP4 / PNG files.

Videos are (F, H, W, 3) and batches (N, F, H, W, 3), channels last; model outputs live in [−1, 1].
"""
from __future__ import annotations

import os
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


def _caption_strip(text: str, width: int, height: int = 12) -> np.ndarray:
    """A (height, width, 3) uint8 strip with `text` in white on black (PIL's built-in font)."""
    strip = Image.new("RGB", (width, height))
    ImageDraw.Draw(strip).text((1, 0), text, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.asarray(strip)


def make_grid(videos: np.ndarray, ncols: Optional[int] = None, pad: int = 2, scale: int = 1,
              captions: Optional[Sequence[str]] = None) -> np.ndarray:
    """Tiles (N, F, H, W, 3) videos (or (N, H, W, 3) images) into one (F, H', W', 3) uint8 video
    (or (H', W', 3) image), row-major, with an optional caption strip above each tile."""
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
    cap_h = 12 if captions is not None else 0
    tile_h, tile_w = h + cap_h + pad, w + pad
    grid = np.zeros((f, nrows * tile_h + pad, ncols * tile_w + pad, 3), np.uint8)
    for i in range(n):
        top, left = (i // ncols) * tile_h + pad, (i % ncols) * tile_w + pad
        if captions is not None:
            grid[:, top:top + cap_h, left:left + w] = _caption_strip(captions[i], w, cap_h)
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
        imageio.mimsave(path, list(video), fps=fps, codec="libx264", macro_block_size=1,
                        quality=8, pixelformat="yuv420p")
    else:
        raise ValueError(f"path: expected a .gif or .mp4 file, got {path!r}")
    return path


def write_image(path: str, image: np.ndarray) -> str:
    """Writes (H, W, 3) as PNG; returns path."""
    imageio.imwrite(path, to_uint8(image))
    return path
