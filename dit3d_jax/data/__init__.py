"""Data stack: tfds builders (moving shapes, local video folder, latent datasets written by
encode_latents.py), the grain pipeline, a detector.

Never imports dit3d_jax.models. Typical use:

    builder = get_builder("moving_shapes", config="default", data_dir=None)   # builds once
    it = make_iterator(builder, split="train", global_batch_size=64, seed=0,
                       text_encoder=enc)          # enc: .encode(list[str]) -> (emb, mask)
    batch = next(it)       # {"video", "label", "caption", "text_emb", "text_mask"}
"""

from __future__ import annotations

from dit3d_jax.data.latents import LatentSource, write_latents
from dit3d_jax.data.pipeline import LatentFolderSource, hflip_caption, make_iterator
from dit3d_jax.data.shapes import (MovingShapes, MovingShapesConfig, captions, default_data_dir,
                                   render_video)
from dit3d_jax.data.video_folder import VideoFolder, VideoFolderConfig

BUILDERS = {"moving_shapes": MovingShapes, "video_folder": VideoFolder}


def get_builder(name: str, *, data_dir=None, prepare: bool = True, **kwargs):
    """The tfds builder `name` ("moving_shapes" | "video_folder"), built into data_dir if needed.

    kwargs go to the builder: moving_shapes takes config ("tiny" | "default" | a
    MovingShapesConfig); video_folder takes folder, frames, size, frame_stride, clips_per_video
    (or config=VideoFolderConfig). data_dir defaults to $DIT3D_DATA_DIR or ~/.cache/dit3d_jax/tfds.
    """
    if name not in BUILDERS:
        raise ValueError(f"name: expected one of {list(BUILDERS)}, got {name!r}")
    builder = BUILDERS[name](data_dir=data_dir, **kwargs)
    if prepare:
        builder.download_and_prepare()
    return builder


__all__ = ["BUILDERS", "LatentFolderSource", "LatentSource", "MovingShapes", "MovingShapesConfig",
           "VideoFolder", "VideoFolderConfig", "captions", "default_data_dir", "get_builder", "hflip_caption",
           "make_iterator", "render_video", "write_latents"]
