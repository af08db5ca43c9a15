"""Data stack: every source of host batches. The `random` benchmark source (random.py), tfds
builders (moving shapes, a local video folder, latent datasets written by encode_latents.py),
folder sources (images, pre-sampled latents; caption_files.py reads their captions), the grain
pipeline, config.data -> iterator (sources.py), a detector.

Sources read a model only through its `input_spec`; of dit3d_jax.models they load the text
encoder alone (models/text.py), when config.data names one. Names load lazily, so `random`
batches and the train loop need no data wheels (grain, tfds). Typical use:

    builder = get_builder("moving_shapes", config="default", data_dir=None)   # builds once
    it = make_iterator(builder, split="train", global_batch_size=64, seed=0,
                       text_encoder=enc)          # enc: .encode(list[str]) -> (emb, mask)
    batch = next(it)       # {"video", "label", "caption", "text_emb", "text_mask"}
"""

from __future__ import annotations

import importlib

_HOMES = {"LatentSource": "latents", "LatentFolderSource": "latents", "write_latents": "latents",
          "hflip_caption": "pipeline", "make_iterator": "pipeline",
          "MovingShapes": "shapes", "MovingShapesConfig": "shapes", "captions": "shapes",
          "default_data_dir": "shapes", "render_video": "shapes",
          "VideoFolder": "video_folder", "VideoFolderConfig": "video_folder",
          "RandomSource": "random", "make_data_iterator": "sources", "check_batch": "sources"}
BUILDERS = {"moving_shapes": "MovingShapes", "video_folder": "VideoFolder"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


def get_builder(name: str, *, data_dir=None, prepare: bool = True, **kwargs):
    """The tfds builder `name` ("moving_shapes" | "video_folder"), built into data_dir if needed.

    kwargs go to the builder: moving_shapes takes config ("tiny" | "default" | a
    MovingShapesConfig); video_folder takes folder, frames, size, frame_stride, clips_per_video
    (or config=VideoFolderConfig). data_dir defaults to $DIT3D_DATA_DIR or ~/.cache/dit3d_jax/tfds.
    """
    if name not in BUILDERS:
        raise ValueError(f"name: expected one of {list(BUILDERS)}, got {name!r}")
    builder = __getattr__(BUILDERS[name])(data_dir=data_dir, **kwargs)
    if prepare:
        builder.download_and_prepare()
    return builder


__all__ = ["BUILDERS", "get_builder", *_HOMES]
