"""Latent datasets: the VAE posterior of every clip (or image) of a split, as a tfds dataset.

Written once by `encode_latents.py` (the VAE encoder, jitted, data-parallel), read by the grain
pipeline (`config.data.name = "latents"`, `config.data.path = DIR`) without TensorFlow:

    write_latents(DIR, {"train": examples}, shape=(F, h, w, c), metadata={...})
    src = LatentSource(DIR, split="train")       # random access, scaled posterior per example
    src[i] -> {"latent_mean": float32 S·mean, "latent_logvar": float32 logvar + 2·ln S,
               "caption": str, "label": int32}   # S = the VAE's scaling factor (0.18215)

On disk (DIR is a tfds data_dir): DIR/latents/default/1.0.0/ with array_record shards, the
features ("mean", "logvar": float16 (F, h, w, c) for videos or (h, w, c) for images, the VAE's
unscaled posterior, logvar clipped to [−30, 20]; "caption" Text; "label" int32) and metadata
(scaling_factor, per split {caption: label}, the VAE and source they came from).

The training step draws z = S·(mean + exp(logvar/2)·ε) = latent_mean + exp(latent_logvar/2)·ε
per example from its own rng (`dit3d_jax.train.step`), so every step sees a fresh latent.

Completeness: tfds writes into DIR/latents/default/incomplete.XXXXXX_1.0.0/ and renames it to
1.0.0/ only when every split is written (verified by tests/data/test_latents.py). An interrupted
run leaves at most that incomplete.* folder, which is never read and which the next
`write_latents` into the same DIR removes before it starts again from the first example.

Latents another tool already sampled and scaled, as .npy files in a folder, are read by
`LatentFolderSource` (`config.data.name = "latent_folder"`; one fixed latent per clip).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from dit3d_jax.data.caption_files import jsonl_captions, sidecar_text
from dit3d_jax.data.pipeline import _text

NAME, CONFIG, VERSION_DIR = "latents", "default", "1.0.0"
STORAGE_DTYPE = np.float16


def variant_dir(path) -> str:
    """DIR/latents/default/1.0.0 for a write_latents output DIR (or that folder itself)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(os.path.join(path, "dataset_info.json")):
        return path
    return os.path.join(path, NAME, CONFIG, VERSION_DIR)


def is_complete(path) -> bool:
    """Whether `path` holds a finished latent dataset (tfds's dataset_info.json + features)."""
    d = variant_dir(path)
    return all(os.path.isfile(os.path.join(d, f)) for f in ("dataset_info.json", "features.json"))


@dataclasses.dataclass(eq=False)
class LatentsConfig(tfds.core.BuilderConfig):
    """shape: per-example posterior shape, (F, h, w, c) or (h, w, c)."""
    shape: tuple = ()


class Latents(tfds.core.GeneratorBasedBuilder):
    """tfds builder `latents`, for writing only (reading goes through `LatentSource`).

    splits: {split name: iterable of (key, {"mean", "logvar", "caption", "label"})}, consumed
    once by download_and_prepare(); metadata: JSON-able dict stored with the dataset.
    """

    VERSION = tfds.core.Version(VERSION_DIR)
    RELEASE_NOTES = {VERSION_DIR: "First release."}
    BUILDER_CONFIGS = []

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):  # see MovingShapes.code_path
        return epath.Path(__file__)

    def __init__(self, *, data_dir, shape, splits: Mapping[str, Iterable] | None = None,
                 metadata: Mapping[str, Any] | None = None, **kwargs):
        self._splits = dict(splits or {})
        self._metadata = dict(metadata or {})
        super().__init__(config=LatentsConfig(name=CONFIG, shape=tuple(int(s) for s in shape)),
                         data_dir=data_dir, file_format="array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        shape = self.builder_config.shape
        return tfds.core.DatasetInfo(
            builder=self,
            description="VAE posterior (mean, log-variance) of every example of a split.",
            features=tfds.features.FeaturesDict({
                "mean": tfds.features.Tensor(shape=shape, dtype=STORAGE_DTYPE, encoding="bytes"),
                "logvar": tfds.features.Tensor(shape=shape, dtype=STORAGE_DTYPE,
                                               encoding="bytes"),
                "caption": tfds.features.Text(),
                "label": tfds.features.Tensor(shape=(), dtype=np.int32)}),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        self.info.metadata.update(self._metadata)
        return {name: self._generate_examples(examples) for name, examples in self._splits.items()}

    def _generate_examples(self, examples):
        shape = self.builder_config.shape
        for key, ex in examples:
            for name in ("mean", "logvar"):
                if np.shape(ex[name]) != shape:
                    raise ValueError(f"{name}: expected shape {shape} for every example, got "
                                     f"{np.shape(ex[name])} at {key!r}")
            yield key, {"mean": np.asarray(ex["mean"], STORAGE_DTYPE),
                        "logvar": np.asarray(ex["logvar"], STORAGE_DTYPE),
                        "caption": ex["caption"], "label": np.int32(ex["label"])}


def write_latents(path, splits: Mapping[str, Iterable], *, shape,
                  metadata: Mapping[str, Any]) -> str:
    """Writes the latent dataset DIR=`path` from {split: iterable of (key, example)} and
    returns its variant folder. metadata must hold "scaling_factor" (float) and
    "caption_labels" ({split: {caption: label}}, filled in by the caller while it iterates is
    fine: it is stored after the last example). Raises FileExistsError when DIR already holds
    a complete dataset; removes the leftovers of an interrupted run first."""
    if is_complete(path):
        raise FileExistsError(f"output: {os.fspath(path)!r} already holds a complete latent "
                              f"dataset; choose a new directory (or delete it)")
    config_dir = os.path.dirname(variant_dir(path))
    if os.path.isdir(config_dir):
        for name in os.listdir(config_dir):
            if name.startswith("incomplete.") or name == VERSION_DIR:
                shutil.rmtree(os.path.join(config_dir, name))
    builder = Latents(data_dir=os.fspath(path), shape=shape, splits=splits, metadata=metadata)
    builder.download_and_prepare()
    return variant_dir(path)


class LatentSource:
    """Random-access source over one split of a latent dataset, scaled for the model.

    Item i -> {"latent_mean": float32 S·mean, "latent_logvar": float32 logvar + 2·ln(S),
    "caption": str, "label": int32}: the posterior of S·z, so S·z = latent_mean +
    exp(latent_logvar/2)·ε. `shape` is the per-example shape, `scaling_factor` S.
    A missing or unfinished dataset is a FileNotFoundError naming encode_latents.py.
    """

    def __init__(self, path, split: str = "train"):
        path = os.fspath(path)
        if not is_complete(path):
            started = os.path.isdir(os.path.join(os.path.abspath(path), NAME, CONFIG))
            hint = (" (an encode into it did not finish: run encode_latents.py again)"
                    if started else "")
            raise FileNotFoundError(
                f"data.path: expected a latent dataset written by encode_latents.py --output "
                f"DIR, got {path!r} with no finished dataset in it{hint}")
        builder = tfds.builder_from_directory(variant_dir(path))
        if split not in builder.info.splits:
            raise ValueError(f"split: expected one of {list(builder.info.splits)} of the latent "
                             f"dataset {path!r}, got {split!r}")
        self.path, self.split = path, split
        self.shape = tuple(builder.info.features["mean"].shape)
        meta = dict(builder.info.metadata or {})
        self.metadata = meta
        self.scaling_factor = float(meta["scaling_factor"])
        self._labels = {str(c): int(l) for c, l in meta["caption_labels"][split].items()}
        self._shift = np.float32(2.0 * math.log(self.scaling_factor))
        self._source = builder.as_data_source(split=split)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self._source[index]
        return {"latent_mean": np.asarray(ex["mean"], np.float32) * np.float32(self.scaling_factor),
                "latent_logvar": np.asarray(ex["logvar"], np.float32) + self._shift,
                "caption": _text(ex["caption"]), "label": np.int32(ex["label"])}

    def caption_labels(self, split: str | None = None) -> dict[str, int]:
        del split
        return dict(self._labels)


def read_metadata(path) -> dict:
    """The metadata a finished latent dataset at `path` stores (scaling_factor, vae, source,
    caption_labels), read without tfds; FileNotFoundError when there is none."""
    file = os.path.join(variant_dir(path), "metadata.json")
    if not is_complete(path) or not os.path.isfile(file):
        raise FileNotFoundError(f"data.path: no finished latent dataset in {os.fspath(path)!r}")
    with open(file, encoding="utf-8") as fh:
        return json.load(fh)


class LatentFolderSource:
    """Random-access source over pre-extracted latents in a folder.

    folder/NAME.npy holds float latents (B, F, h, w, c) (or one clip (F, h, w, c)), already
    scaled as the model expects (e.g. × 0.18215); optional captions, one per row, as NAME.txt
    (B lines) or captions.jsonl lines {"file": "NAME.npy", "caption": str | [B str]}
    (`dit3d_jax.data.caption_files`).
    Item i -> {"video": float32 (F, h, w, c), "caption": str, "label": int}; labels index the
    sorted distinct captions. make_iterator passes float "video" through unscaled.
    """

    def __init__(self, folder):
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise ValueError(f"folder: expected a directory of .npy latents, got {folder!r}")
        self.folder = folder
        jsonl = jsonl_captions(folder, "latent_folder")
        self._rows: list[tuple[str, int | None]] = []
        captions: list[str] = []
        for name in sorted(n for n in os.listdir(folder) if n.endswith(".npy")):
            arr = np.load(os.path.join(folder, name), mmap_mode="r")
            if arr.ndim not in (4, 5) or not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(f"{name}: expected float latents (B, F, h, w, c) or "
                                 f"(F, h, w, c), got {arr.dtype} {arr.shape}")
            n = arr.shape[0] if arr.ndim == 5 else 1
            sidecar = sidecar_text(folder, name)
            if sidecar is not None:
                caps = [line.strip() for line in sidecar.splitlines()]
            else:
                cap = jsonl.get(name, "")
                caps = [cap] * n if isinstance(cap, str) else [str(c) for c in cap]
            if len(caps) != n:
                raise ValueError(f"{name}: expected {n} captions (one per latent row), "
                                 f"got {len(caps)}")
            self._rows += [(name, r if arr.ndim == 5 else None) for r in range(n)]
            captions += caps
        if not self._rows:
            raise ValueError(f"folder: no .npy latents in {folder!r}")
        self._captions = captions
        self._labels = {c: i for i, c in enumerate(sorted(set(captions)))}
        self._arrays: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, row = self._rows[index]
        if name not in self._arrays:
            self._arrays[name] = np.load(os.path.join(self.folder, name), mmap_mode="r")
        arr = self._arrays[name]
        latent = np.asarray(arr if row is None else arr[row], np.float32)
        caption = self._captions[index]
        return {"video": latent, "caption": caption, "label": self._labels[caption]}

    def __getstate__(self):  # memory maps stay per process
        return {**self.__dict__, "_arrays": {}}

    def caption_labels(self, split: str | None = None) -> dict[str, int]:
        del split
        return dict(self._labels)
