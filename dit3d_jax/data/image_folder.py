"""A folder of images as a random-access source (what encode_latents.py encodes for the image
DiT, configs/dit_s2.py).

Layout, as torchvision's ImageFolder (DiT's training data): DIR/CLASS/*.png|jpg|jpeg|webp, one
sub-folder per class; labels index the sorted class names and the caption is the class name.
Images directly in DIR (no sub-folders) get label 0 and the caption "".

Each image is centre-cropped as DiT/ADM do: halved with a box filter while its shorter side is
at least twice `size`, resized bicubically so the shorter side is `size`, then the centre
size × size crop.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def center_crop(image: Image.Image, size: int) -> np.ndarray:
    """PIL image -> uint8 (size, size, 3), ADM's centre crop (see the module docstring)."""
    image = image.convert("RGB")
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[top:top + size, left:left + size])


class ImageFolderSource:
    """Item i -> {"image": uint8 (size, size, 3), "caption": class name, "label": int32}."""

    def __init__(self, folder, size: int):
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"folder: expected a directory of images (or of class "
                                    f"folders of images), got {folder!r}")
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"size: expected a positive int, got {size!r}")
        self.size = int(size)
        self.classes = sorted(n for n in os.listdir(folder)
                              if os.path.isdir(os.path.join(folder, n))) or [""]
        self._files: list[tuple[str, int]] = []
        for label, sub in enumerate(self.classes):
            d = os.path.join(folder, sub)
            self._files += [(os.path.join(d, n), label) for n in sorted(os.listdir(d))
                            if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
        if not self._files:
            raise ValueError(f"folder: no images ({'/'.join(IMAGE_EXTENSIONS)}) in {folder!r} "
                             f"or its class sub-folders")

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self._files[index]
        with Image.open(path) as image:
            pixels = center_crop(image, self.size)
        return {"image": pixels, "caption": self.classes[label], "label": np.int32(label)}

    def caption_labels(self, split: str | None = None) -> dict[str, int]:
        del split
        return {c: i for i, c in enumerate(self.classes)}
