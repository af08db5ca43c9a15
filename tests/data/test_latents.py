"""Latent datasets: written completely or not at all, read back scaled, and the per-step draw
matches the stored posterior."""

import json
import math
import os

import jax
import numpy as np
import pytest

from dit3d_jax.data.latents import (LatentFolderSource, LatentSource, is_complete, variant_dir,
                                     write_latents)
from dit3d_jax.data.pipeline import make_iterator
from dit3d_jax.train.step import draw_latents

SHAPE = (2, 3, 3, 4)  # (F, h, w, c)
S = 0.18215


def _posterior(i):
    """Example i: distinct mean and logvar per element (logvar in [-3, 1])."""
    rng = np.random.default_rng(i)
    return (rng.normal(0.0, 4.0, SHAPE).astype(np.float32),
            rng.uniform(-3.0, 1.0, SHAPE).astype(np.float32))


def _examples(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise KeyboardInterrupt("interrupted")
        mean, logvar = _posterior(i)
        yield f"clip{i}", {"mean": mean, "logvar": logvar, "caption": f"caption {i % 2}",
                           "label": i % 2}


META = {"scaling_factor": S, "caption_labels": {"train": {"caption 0": 0, "caption 1": 1}}}


def test_written_dataset_reads_back_scaled(tmp_path):
    out = tmp_path / "latents"
    write_latents(out, {"train": _examples(5)}, shape=SHAPE, metadata=META)
    src = LatentSource(out)
    assert len(src) == 5 and src.shape == SHAPE and src.scaling_factor == S
    assert src.caption_labels() == {"caption 0": 0, "caption 1": 1}
    got = {}
    for j in range(len(src)):
        ex = src[j]
        got[ex["caption"], float(ex["latent_mean"].flat[0])] = ex
    for i in range(5):
        mean, logvar = _posterior(i)
        mean16 = mean.astype(np.float16).astype(np.float64)
        logvar16 = logvar.astype(np.float16).astype(np.float64)
        ex = got[f"caption {i % 2}", float(np.float32(mean16.flat[0] * np.float32(S)))]
        assert ex["label"] == i % 2
        np.testing.assert_allclose(ex["latent_mean"], S * mean16, rtol=1e-6)
        # exp(latent_logvar / 2) is S times the stored std
        np.testing.assert_allclose(np.exp(ex["latent_logvar"] / 2), S * np.exp(logvar16 / 2),
                                   rtol=1e-5)
        # float16 storage keeps the posterior to its 11-bit mantissa
        np.testing.assert_allclose(mean16, mean, rtol=2 ** -11)
    with pytest.raises(FileExistsError, match="already holds a complete latent dataset"):
        write_latents(out, {"train": _examples(1)}, shape=SHAPE, metadata=META)


def test_interrupted_write_leaves_nothing_complete_and_a_rerun_finishes(tmp_path):
    out = tmp_path / "latents"
    with pytest.raises(KeyboardInterrupt):
        write_latents(out, {"train": _examples(5, fail_at=3)}, shape=SHAPE, metadata=META)
    assert not is_complete(out) and not os.path.exists(variant_dir(out))
    with pytest.raises(FileNotFoundError, match="encode_latents.py"):
        LatentSource(out)
    # a killed process (no cleanup) leaves tfds's temporary folder behind: never read, removed
    stale = os.path.join(os.path.dirname(variant_dir(out)), "incomplete.ABC123_1.0.0")
    os.makedirs(stale)
    open(os.path.join(stale, "latents-train.array_record-00000-of-00001"), "wb").close()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        LatentSource(out)
    write_latents(out, {"train": _examples(5)}, shape=SHAPE, metadata=META)
    assert is_complete(out) and not os.path.exists(stale)
    assert len(LatentSource(out)) == 5


def test_wrong_shape_example_is_one_error(tmp_path):
    def bad():
        yield "x", {"mean": np.zeros((1, 3, 3, 4)), "logvar": np.zeros(SHAPE), "caption": "",
                    "label": 0}
    with pytest.raises(ValueError, match=r"mean: expected shape \(2, 3, 3, 4\)"):
        write_latents(tmp_path / "bad", {"train": bad()}, shape=SHAPE, metadata=META)
    assert not is_complete(tmp_path / "bad")


def test_the_draw_matches_the_stored_posterior(tmp_path):
    """Mean and spread of x0 = latent_mean + exp(latent_logvar/2)·ε over N draws, per element,
    against S·mean and S·std of the stored float16 posterior (float64 NumPy): |mean error| <
    5 standard errors (σ/√N) and |std/σ − 1| < 5/√(2N) for all 72 elements."""
    out = tmp_path / "latents"
    write_latents(out, {"train": _examples(1)}, shape=SHAPE, metadata=META)
    batch = next(make_iterator(LatentSource(out), global_batch_size=1, seed=0,
                               process_index=0, process_count=1))
    assert set(batch) == {"latent_mean", "latent_logvar", "label", "caption"}
    n = 4000  # the example repeated as n rows of one batch: n independent draws
    draws = np.asarray(draw_latents(
        {k: np.repeat(batch[k], n, axis=0) for k in ("latent_mean", "latent_logvar")},
        jax.random.key(0))).astype(np.float64)
    mean, logvar = _posterior(0)
    mu = S * mean.astype(np.float16).astype(np.float64)
    sigma = S * np.exp(logvar.astype(np.float16).astype(np.float64) / 2)
    assert np.all(np.abs(draws.mean(0) - mu) < 5 * sigma / math.sqrt(n))
    assert np.all(np.abs(draws.std(0) / sigma - 1) < 5 / math.sqrt(2 * n))
    # and the draws differ from key to key (not the mean repeated)
    assert np.all(draws.std(0) > 0.5 * sigma)


def test_latent_folder_source_passes_latents_through(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 2, 4, 4, 4)).astype(np.float32)
    b = rng.normal(size=(2, 4, 4, 4)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    (tmp_path / "a.txt").write_text("one\ntwo\none\n")
    np.save(tmp_path / "b.npy", b)
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "b.npy", "caption": "three"}))
    src = LatentFolderSource(tmp_path)
    assert len(src) == 4 and src.caption_labels() == {"one": 0, "three": 1, "two": 2}
    batch = next(make_iterator(src, global_batch_size=4, seed=0, shuffle=False, num_epochs=1,
                               process_index=0, process_count=1))
    np.testing.assert_array_equal(batch["video"], np.concatenate([a, b[None]]))
    assert list(batch["caption"]) == ["one", "two", "one", "three"]
    assert list(batch["label"]) == [0, 2, 0, 1]
