"""The benchmark source (data.name = "random"): synthetic host batches from NumPy alone, no
data wheels.

    source = RandomSource(key="video", shape=(16, 32, 32, 4), global_batch_size=8, seed=0)
    batch = next(source)      # {"video" (8, 16, 32, 32, 4), "label" (8,)}
"""
from __future__ import annotations

from typing import Optional

import numpy as np


class RandomSource:
    """Deterministic synthetic host batches in the "Host batches" layout (docs/interfaces.md).

    A pool of `pool_size` examples; example i comes from np.random.default_rng((seed, i)):
    x standard normal of `shape` (under `key`), "label" uniform in [0, num_classes) (zeros when
    num_classes = 0), and when text_shape = (L, D) is given "text_emb" normal (L, D) with
    "text_mask" True on its first 1..L tokens. Global batch b takes the pool rows drawn by
    default_rng((seed, 1, b)); process p of P holds rows [p·B/P, (p+1)·B/P) of it, so the global
    batch does not depend on P. State: {"batch": b}, the next global batch.
    """

    def __init__(self, *, key: str, shape: tuple[int, ...], global_batch_size: int, seed: int,
                 num_classes: int = 0, text_shape: Optional[tuple[int, int]] = None,
                 process_index: int = 0, process_count: int = 1, pool_size: int = 64):
        if global_batch_size < 1 or global_batch_size % process_count:
            raise ValueError(f"data.global_batch_size: expected a positive multiple of the "
                             f"process count {process_count}, got {global_batch_size}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index: expected an int in [0, {process_count}), got "
                             f"{process_index}")
        self.key, self.seed, self.pool_size = key, int(seed), int(pool_size)
        self.global_batch_size = int(global_batch_size)
        local = global_batch_size // process_count
        self._rows = slice(process_index * local, (process_index + 1) * local)
        pool = [self._example(i, shape, num_classes, text_shape) for i in range(pool_size)]
        self._pool = {k: np.stack([ex[k] for ex in pool]) for k in pool[0]}
        self._batch = 0

    def _example(self, i, shape, num_classes, text_shape) -> dict:
        rng = np.random.default_rng((self.seed, i))
        ex = {self.key: rng.standard_normal(shape, dtype=np.float32),
              "label": np.int32(rng.integers(num_classes) if num_classes > 0 else 0)}
        if text_shape is not None:
            length, dim = text_shape
            ex["text_emb"] = rng.standard_normal((length, dim), dtype=np.float32)
            ex["text_mask"] = np.arange(length) < rng.integers(1, length + 1)
        return ex

    def __iter__(self) -> "RandomSource":
        return self

    def __next__(self) -> dict:
        rows = np.random.default_rng((self.seed, 1, self._batch)).integers(
            self.pool_size, size=self.global_batch_size)[self._rows]
        self._batch += 1
        return {k: v[rows] for k, v in self._pool.items()}

    def get_state(self) -> dict:
        return {"batch": self._batch}

    def set_state(self, state: dict) -> None:
        self._batch = int(state["batch"])
