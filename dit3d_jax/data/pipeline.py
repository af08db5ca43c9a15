"""Host input pipeline (grain): a random-access source -> per-process batches of numpy arrays.

    source ─> shuffle(seed) ─> repeat(num_epochs) ─> decode (uint8 -> float32 [−1, 1])
           ─> [augment: horizontal flip, caption and label flipped with it]
           ─> process slice (process p of P takes global elements p, p+P, p+2P, …)
           ─> batch(global_batch_size / P) ─> [text embeddings from a per-caption cache]
           ─> threads (ReadOptions) ─> [worker processes (mp_prefetch)]

Global batch b is the elements [b·G, (b+1)·G) of the shuffled, repeated stream; process p holds
the rows j·P + p of it, so the process batches of one step are disjoint and cover it, and
everything random (order, flips) depends on the global stream index only, never on P.

Each host batch is a dict (per docs/interfaces.md):
    "video"      float32 (B, F, H, W, 3) in [−1, 1]  (float sources pass through unscaled: latents)
                 or, from a latent dataset (`LatentSource`), the scaled posterior instead:
    "latent_mean", "latent_logvar"  float32 (B, F, h, w, c) (or (B, h, w, c)); the train step
                 draws x0 = latent_mean + exp(latent_logvar / 2)·ε from its own rng
    "label"      int32 (B,)
    "caption"    str array (B,)                      (host only; drop it before device_put)
    "text_emb"   float32 (B, L, D), "text_mask" bool (B, L)   when a text encoder is given
The iterator is grain's: `next(it)`, `it.get_state()` (a small dict) and `it.set_state(state)`
resume at the same example.

Sources: a tfds builder (its `as_data_source(split)`), or any object with __len__ and
__getitem__ returning {"video", "caption", "label"} (e.g. `LatentFolderSource`) or
{"latent_mean", "latent_logvar", "caption", "label"} (`LatentSource`; both in
`dit3d_jax.data.latents`).
"""

from __future__ import annotations

import re

import grain
import numpy as np

_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def hflip_caption(caption: str) -> str:
    """Swap the words left and right (case kept): what a caption says of the mirrored video."""
    def swap(m):
        word = m.group(1)
        new = "right" if word.lower() == "left" else "left"
        return new.capitalize() if word[0].isupper() else new
    return _LEFT_RIGHT.sub(swap, caption)


def _text(value) -> str:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------------------------
# Per-element and per-batch transforms (top-level classes, so worker processes can pickle them)
# ---------------------------------------------------------------------------------------------

class _Decode:
    """{"video", "caption", "label", ...} -> {"video" float32 (F,H,W,C), "caption" str, "label"};
    a latent posterior {"latent_mean", "latent_logvar", ...} (`LatentSource`) passes through."""

    def __call__(self, ex: dict) -> dict:
        if "latent_mean" in ex:
            return {"latent_mean": ex["latent_mean"], "latent_logvar": ex["latent_logvar"],
                    "caption": _text(ex["caption"]), "label": np.int32(ex["label"])}
        video = np.asarray(ex["video"])
        if video.ndim != 4:
            raise ValueError(f"video: expected (F, H, W, C) per example, got shape {video.shape}")
        if video.dtype == np.uint8:
            video = video.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        else:
            video = video.astype(np.float32)
        return {"video": video, "caption": _text(ex["caption"]), "label": np.int32(ex["label"])}


class _HFlip:
    """Flips W of element `index` with probability 1/2 (from (seed, index)); caption and label
    follow: left<->right in the caption, label = caption_labels[flipped caption]."""

    def __init__(self, seed: int, caption_labels: dict[str, int]):
        self.seed = seed
        self.caption_labels = caption_labels

    def __call__(self, index: int, ex: dict) -> dict:
        if np.random.default_rng((self.seed, 0xF11F, int(index))).random() >= 0.5:
            return ex
        caption = hflip_caption(ex["caption"])
        return {"video": np.ascontiguousarray(ex["video"][:, :, ::-1]), "caption": caption,
                "label": np.int32(self.caption_labels[caption])}


def _batch(elements) -> dict:
    out = {k: np.stack([e[k] for e in elements]) for k in elements[0]
           if k not in ("label", "caption")}
    return {**out, "label": np.asarray([e["label"] for e in elements], np.int32),
            "caption": np.asarray([e["caption"] for e in elements], dtype=str)}


class _AddText:
    """Adds "text_emb" (B, L, D) and "text_mask" (B, L) by looking captions up in a cache."""

    def __init__(self, captions: list[str], emb: np.ndarray, mask: np.ndarray):
        self.row = {c: i for i, c in enumerate(captions)}
        self.emb, self.mask = emb, mask

    def __call__(self, batch: dict) -> dict:
        rows = np.asarray([self.row[c] for c in batch["caption"]], np.int64)
        return {**batch, "text_emb": self.emb[rows], "text_mask": self.mask[rows]}


# ---------------------------------------------------------------------------------------------
# Caption tables and text cache
# ---------------------------------------------------------------------------------------------

def _caption_labels(obj, source, split: str) -> dict[str, int]:
    """{caption: label} of the split: from the builder/source if it knows, else by a scan."""
    if hasattr(obj, "caption_labels"):
        return dict(obj.caption_labels(split))
    if hasattr(source, "caption_labels"):
        return dict(source.caption_labels(split))
    table: dict[str, int] = {}
    for i in range(len(source)):
        ex = source[i]
        table.setdefault(_text(ex["caption"]), int(ex["label"]))
    return table


def encode_captions(text_encoder, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encodes the distinct captions once: (emb float32 (N, L, D), mask bool (N, L))."""
    for attr in ("encode", "dim", "max_length"):
        if not hasattr(text_encoder, attr):
            raise TypeError(f"text_encoder: expected an object with .encode, .dim and "
                            f".max_length, got {type(text_encoder).__name__} without .{attr}")
    emb, mask = text_encoder.encode(list(captions))
    emb, mask = np.asarray(emb, np.float32), np.asarray(mask, bool)
    want = (len(captions), text_encoder.max_length, text_encoder.dim)
    if emb.shape != want or mask.shape != want[:2]:
        raise ValueError(f"text_encoder: expected encode() -> emb {want}, mask {want[:2]}, "
                         f"got {emb.shape}, {mask.shape}")
    return emb, mask


# ---------------------------------------------------------------------------------------------
# The iterator
# ---------------------------------------------------------------------------------------------

def make_iterator(builder_or_source, *, split: str = "train", global_batch_size: int,
                  seed: int, shuffle: bool = True, num_epochs: int | None = None,
                  process_index: int | None = None, process_count: int | None = None,
                  worker_count: int = 0, augment: bool = False, text_encoder=None,
                  drop_remainder: bool = True, read_threads: int = 2,
                  prefetch_batches: int = 2) -> grain.DatasetIterator:
    """Checkpointable iterator of this process's host batches (see the module docstring).

    builder_or_source: a prepared tfds builder (read with as_data_source(split)) or a
      random-access source of {"video", "caption", "label"} dicts (split then only names it).
    global_batch_size: rows per step over all processes; each process gets G / process_count.
    seed: in [0, 2**32); fixes the order and the flips.
    num_epochs: None repeats forever; else that many passes (then StopIteration).
    process_index / process_count: default jax.process_index() / jax.process_count().
    worker_count: > 0 runs decode/augment/batch in that many worker processes (mp_prefetch).
    augment: random horizontal flip with caption and label flipped too; needs every flipped
      caption of the split to be a caption of the split (ValueError otherwise).
    text_encoder: object with .encode(list[str]) -> (emb, mask), .dim, .max_length; every distinct
      caption of the split is encoded once here, batches look rows up.
    drop_remainder: drop a last partial global batch (with several processes a partial one is
      split unevenly, so keep True for training).
    """
    if hasattr(builder_or_source, "as_data_source"):
        builder = builder_or_source
        if not builder.is_prepared():
            raise ValueError(f"builder_or_source: expected a prepared builder, got "
                             f"{builder.name}/{builder.builder_config.name} not built in "
                             f"{builder.data_dir}; call download_and_prepare() first")
        if split not in builder.info.splits:
            raise ValueError(f"split: expected one of {list(builder.info.splits)}, got {split!r}")
        source = builder.as_data_source(split=split)
    elif hasattr(builder_or_source, "__len__") and hasattr(builder_or_source, "__getitem__"):
        builder, source = None, builder_or_source
    else:
        raise TypeError(f"builder_or_source: expected a tfds builder or a random-access source, "
                        f"got {type(builder_or_source).__name__}")
    if process_index is None or process_count is None:
        import jax  # pylint: disable=import-outside-toplevel
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not isinstance(process_count, (int, np.integer)) or process_count < 1:
        raise ValueError(f"process_count: expected a positive int, got {process_count!r}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index: expected an int in [0, {process_count}), "
                         f"got {process_index!r}")
    if (not isinstance(global_batch_size, (int, np.integer)) or global_batch_size < 1
            or global_batch_size % process_count):
        raise ValueError(f"global_batch_size: expected a positive multiple of process_count="
                         f"{process_count}, got {global_batch_size!r}")
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed: expected an int in [0, 2**32), got {seed!r}")
    if num_epochs is not None and (not isinstance(num_epochs, (int, np.integer))
                                   or num_epochs < 1):
        raise ValueError(f"num_epochs: expected None or a positive int, got {num_epochs!r}")
    if len(source) == 0:
        raise ValueError(f"builder_or_source: split {split!r} is empty")
    local_batch = global_batch_size // process_count
    first = source[0] if augment else None  # read once, before any caption scan
    if isinstance(first, dict) and "latent_mean" in first:
        raise ValueError("augment: expected False for a latent dataset (a flip of the "
                         "latents is not the latents of the flipped video), got True")

    table = (_caption_labels(builder, source, split)
             if (augment or text_encoder is not None) else {})
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=int(seed))
    ds = ds.repeat(num_epochs).map(_Decode())
    if augment:
        missing = sorted({hflip_caption(c) for c in table} - set(table))
        if missing:
            raise ValueError(f"augment: expected every flipped caption of split {split!r} to be "
                             f"one of its captions, got {len(missing)} outside it, e.g. "
                             f"{missing[:3]}; use augment=False")
        ds = ds.map_with_index(_HFlip(int(seed), table))
    if num_epochs is not None:
        total = len(source) * num_epochs
        keep = (total // global_batch_size) * global_batch_size if drop_remainder else total
        if keep == 0:
            raise ValueError(f"global_batch_size: {global_batch_size} is larger than the "
                             f"{total} examples of {num_epochs} epoch(s) of split {split!r} "
                             f"(drop_remainder=True leaves no batch)")
        ds = ds[:keep]
    ds = ds[process_index::process_count]
    ds = ds.batch(local_batch, drop_remainder=drop_remainder, batch_fn=_batch)
    if text_encoder is not None:
        captions = sorted(table)
        emb, mask = encode_captions(text_encoder, captions)
        ds = ds.map(_AddText(captions, emb, mask))
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                 prefetch_buffer_size=prefetch_batches))
    if worker_count:
        from absl import flags  # pylint: disable=import-outside-toplevel
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (outside absl.app)
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(it_ds)
