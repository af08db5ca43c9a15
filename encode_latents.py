"""Encodes every clip (or image) of a dataset split with the VAE into a latent dataset.

    python encode_latents.py --data video_folder --data-path videos/ --vae runs/sd_vae \
        --output runs/latents --frames 16 --size 256
    python encode_latents.py --data moving_shapes --config default --split train \
        --vae runs/sd_vae --output runs/shapes_latents --size 32
    python encode_latents.py --data image_folder --data-path imagenet/train --vae runs/sd_vae \
        --output runs/imagenet_latents --size 256

--vae is a `convert_torch_weights.py --vae` output. The encoder runs jitted, data-parallel over
this host's devices (each step encodes --batch-size examples, split evenly over them), with a
progress bar. The output (`dit3d_jax.data.latents`) is a tfds dataset of the posterior mean and
log-variance (float16) with captions and labels, read by train.py with
--config.data.name=latents --config.data.path=OUTPUT. An interrupted run leaves no dataset that
looks complete; running the same command again starts it over.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

from dit3d_jax.utils.cli import UsageError, run

DATA = ("video_folder", "moving_shapes", "image_folder")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, choices=DATA)
    p.add_argument("--data-path", default="", help="folder of videos / images")
    p.add_argument("--config", default="default", help="moving_shapes builder config")
    p.add_argument("--data-dir", default="", help="tfds cache for the source dataset "
                   "(default $DIT3D_DATA_DIR or ~/.cache/dit3d_jax/tfds)")
    p.add_argument("--split", action="append", default=[],
                   help="split(s) to encode (repeatable; default train)")
    p.add_argument("--vae", required=True, help="convert_torch_weights.py --vae output")
    p.add_argument("--output", required=True, help="directory of the latent dataset")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (video_folder)")
    p.add_argument("--size", type=int, default=256, help="pixels per side before encoding")
    p.add_argument("--frame-stride", type=int, default=1)
    p.add_argument("--clips-per-video", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=0,
                   help="clips (or images) per encode step, a multiple of the local devices "
                   "(default: one per device)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="VAE compute dtype")
    p.add_argument("--verbose", action="store_true", help="tracebacks for errors")
    return p.parse_args(argv)


def open_source(args):
    """(key "video" | "image", {split: random-access source}); UsageError on bad input."""
    splits = args.split or ["train"]
    if args.data == "moving_shapes":
        from dit3d_jax.data import get_builder
        try:
            builder = get_builder("moving_shapes", config=args.config,
                                  data_dir=args.data_dir or None)
        except ValueError as err:
            raise UsageError(f"--config: {err}") from None
        bad = [s for s in splits if s not in builder.info.splits]
        if bad:
            raise UsageError(f"--split {bad[0]!r}: expected one of {list(builder.info.splits)}")
        frames, size = builder.builder_config.frames, builder.builder_config.size
        if args.size != size:
            raise UsageError(f"--size {args.size}: moving_shapes config {args.config!r} has "
                             f"{size}x{size} frames; pass --size {size}")
        return "video", {s: _TfdsSplit(builder, s) for s in splits}
    if not args.data_path or not os.path.isdir(args.data_path):
        raise UsageError(f"--data-path {args.data_path!r}: expected a directory of "
                         f"{'images' if args.data == 'image_folder' else 'videos'}")
    if splits != ["train"]:
        raise UsageError(f"--split {splits}: a folder has only the split 'train'")
    try:
        if args.data == "image_folder":
            from dit3d_jax.data.image_folder import ImageFolderSource
            return "image", {"train": ImageFolderSource(args.data_path, args.size)}
        from dit3d_jax.data import get_builder
        builder = get_builder("video_folder", folder=args.data_path, frames=args.frames,
                              size=args.size, frame_stride=args.frame_stride,
                              clips_per_video=args.clips_per_video,
                              data_dir=args.data_dir or None)
    except ValueError as err:
        raise UsageError(f"--data-path {args.data_path!r}: {err}") from None
    return "video", {"train": _TfdsSplit(builder, "train")}


class _TfdsSplit:
    """One split of a tfds builder as a source with caption_labels()."""

    def __init__(self, builder, split):
        self._source = builder.as_data_source(split=split)
        self._labels = builder.caption_labels(split)

    def __len__(self):
        return len(self._source)

    def __getitem__(self, i):
        return self._source[i]

    def caption_labels(self, split=None):
        del split
        return dict(self._labels)


def _encode(vae, params, pixels):
    """uint8 pixels (B, [F,] H, W, 3) -> posterior (mean, logvar) float32 (B, [F,] h, w, c)."""
    import jax.numpy as jnp

    from dit3d_jax.models.vae import AutoencoderKL
    x = pixels.astype(jnp.float32) / 127.5 - 1.0
    lead = x.shape[:-3]
    flat = x.reshape((-1,) + x.shape[-3:])   # frames folded into the batch
    mean, logvar = vae.apply({"params": params}, flat, method=AutoencoderKL.encode)
    return mean.reshape(lead + mean.shape[1:]), logvar.reshape(lead + logvar.shape[1:])


@functools.lru_cache(maxsize=None)
def _jitted_encode():
    import jax
    return jax.jit(_encode, static_argnums=0)   # outputs keep the rows' sharding


def make_encoder(vae, params):
    """-> (encode(uint8 pixels (B, [F,] H, W, 3)) -> (mean, logvar) numpy float32, number of
    devices). The rows of B are split over this host's devices, each encoding its own (jitted;
    params replicated; one compilation per VAE and batch shape in a process)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(jax.local_devices()), ("data",))
    rows = NamedSharding(mesh, PartitionSpec("data"))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))

    def encode(pixels):
        mean, logvar = _jitted_encode()(vae, params, jax.device_put(pixels, rows))
        return np.asarray(mean), np.asarray(logvar)

    return encode, len(mesh.devices)


def encoded_examples(source, key: str, split: str, encode, batch: int, bar):
    """(key, example) of every item of `source`, encoded `batch` at a time (the last batch
    zero-padded to `batch` rows, so one compiled encoder serves every step)."""
    import numpy as np

    from dit3d_jax.data.pipeline import _text

    for start in range(0, len(source), batch):
        items = [source[i] for i in range(start, min(start + batch, len(source)))]
        pixels = np.stack([np.asarray(it[key]) for it in items])
        pad = batch - len(items)
        if pad:
            pixels = np.concatenate([pixels, np.zeros((pad,) + pixels.shape[1:], pixels.dtype)])
        mean, logvar = encode(pixels)
        for j, it in enumerate(items):
            yield f"{split}/{start + j}", {"mean": mean[j], "logvar": logvar[j],
                                           "caption": _text(it["caption"]),
                                           "label": int(it["label"])}
        bar.update(len(items))


def main(argv) -> int:
    args = parse_args(argv)
    from dit3d_jax.data.latents import is_complete
    if is_complete(args.output):
        raise UsageError(f"--output {args.output!r} already holds a complete latent dataset; "
                         f"choose a new directory (or delete it)")
    from dit3d_jax.models.vae import load_vae
    try:
        vae, params = load_vae(args.vae, dtype=args.dtype)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"--vae {args.vae!r}: {err}") from None
    f = vae.downsample_factor
    if args.size < f or args.size % f:
        raise UsageError(f"--size {args.size}: expected a multiple of the VAE's downsampling "
                         f"factor {f}")
    key, sources = open_source(args)

    import jax
    import numpy as np
    import tensorflow_datasets as tfds
    from tqdm.auto import tqdm

    from dit3d_jax.data.latents import write_latents

    encode, devices = make_encoder(vae, params)
    batch = args.batch_size or devices
    if batch < 1 or batch % devices:
        raise UsageError(f"--batch-size {args.batch_size}: expected a positive multiple of the "
                         f"{devices} local devices")
    first = np.asarray(next(iter(sources.values()))[0][key])
    shape = first.shape[:-3] + (args.size // f, args.size // f, vae.latent_channels)
    metadata = {"scaling_factor": float(vae.scaling_factor), "vae": os.path.abspath(args.vae),
                "source": {"data": args.data, "path": os.path.abspath(args.data_path)
                           if args.data_path else "", "config": args.config,
                           "frames": first.shape[0] if key == "video" else 0,
                           "size": args.size},
                "caption_labels": {s: src.caption_labels() for s, src in sources.items()}}
    total = sum(len(s) for s in sources.values())
    print(f"Encoding {total} {key}s ({', '.join(f'{s}: {len(v)}' for s, v in sources.items())})"
          f" into {shape} latents on {devices} {jax.default_backend()} device(s)…",
          file=sys.stderr)
    tfds.disable_progress_bar()
    try:
        with tqdm(total=total, unit=key, file=sys.stderr, dynamic_ncols=True) as bar:
            splits = {s: encoded_examples(src, key, s, encode, batch, bar)
                      for s, src in sources.items()}
            path = write_latents(args.output, splits, shape=shape, metadata=metadata)
    except KeyboardInterrupt:
        print(f"interrupted: no dataset written to {args.output!r} (tfds's incomplete.* folder "
              f"is removed); the same command starts over", file=sys.stderr)
        return 130
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
