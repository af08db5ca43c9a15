"""grain pipeline: sharding, resume, scaling, caption-consistent flips, text cache, latents."""

import json

import numpy as np
import pytest

from dit3d_jax.data import detector as D
from dit3d_jax.data import shapes as S
from dit3d_jax.data.pipeline import hflip_caption, make_iterator


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    builder = S.MovingShapes(config="tiny", data_dir=tmp_path_factory.mktemp("tfds"))
    builder.download_and_prepare()
    return builder


def _it(builder, **kw):
    args = dict(split="train", global_batch_size=8, seed=7, process_index=0, process_count=1)
    args.update(kw)
    return make_iterator(builder, **args)


class FakeEncoder:
    """Deterministic per-caption embedding (independent of batch order); counts encode calls."""
    dim, max_length = 5, 6

    def __init__(self):
        self.calls = 0

    def encode(self, captions):
        self.calls += 1
        emb = np.zeros((len(captions), self.max_length, self.dim), np.float32)
        mask = np.zeros((len(captions), self.max_length), bool)
        for i, c in enumerate(captions):
            words = c.split()[: self.max_length]
            for j, w in enumerate(words):
                emb[i, j] = [len(w), ord(w[0]), ord(w[-1]), sum(map(ord, w)) % 97, len(c)]
            mask[i, : len(words)] = True
        return emb, mask


def test_videos_are_source_bytes_scaled_to_unit_range(tiny):
    batch = next(_it(tiny, shuffle=False))
    src = tiny.as_data_source(split="train")
    want = np.stack([src[i]["video"] for i in range(8)]).astype(np.float64) / 127.5 - 1.0
    assert batch["video"].dtype == np.float32 and batch["video"].shape == (8, 8, 16, 16, 3)
    np.testing.assert_allclose(batch["video"], want, atol=1e-6)
    assert batch["label"].dtype == np.int32
    assert list(batch["label"]) == [src[i]["label"] for i in range(8)]
    assert list(batch["caption"]) == [src[i]["caption"].decode() for i in range(8)]


@pytest.mark.parametrize("process_count", [2, 3, 4])
def test_process_slices_are_disjoint_and_cover_the_global_batch(tiny, process_count):
    g = 12
    ref = _it(tiny, global_batch_size=g)
    per = [_it(tiny, global_batch_size=g, process_index=p, process_count=process_count)
           for p in range(process_count)]
    for _ in range(3):
        glob = next(ref)
        parts = [next(it) for it in per]
        assert all(len(b["label"]) == g // process_count for b in parts)
        # row j of process p is row j*P + p of the global batch: disjoint, and together all of it
        for p, b in enumerate(parts):
            np.testing.assert_array_equal(b["video"], glob["video"][p::process_count])
            np.testing.assert_array_equal(b["caption"], glob["caption"][p::process_count])
        keys = {v.tobytes() for v in glob["video"]}
        assert len(keys) == g


def test_one_epoch_visits_every_example_once_across_processes(tiny):
    src = tiny.as_data_source(split="train")
    want = sorted(src[i]["video"].tobytes() for i in range(len(src)))
    seen = []
    for p in range(2):
        batches = list(_it(tiny, num_epochs=1, process_index=p, process_count=2))
        assert len(batches) == len(src) // 8
        seen += [((v + 1.0) * 127.5).round().astype(np.uint8).tobytes()
                 for b in batches for v in b["video"]]
    assert sorted(seen) == want
    # with repeat, the second epoch is shuffled differently
    it = _it(tiny)
    order = [tuple(next(it)["label"]) for _ in range(2 * len(src) // 8)]
    assert order[: len(order) // 2] != order[len(order) // 2:]


def test_resume_from_state_gives_the_same_next_batch(tiny):
    enc = FakeEncoder()
    it = _it(tiny, augment=True, text_encoder=enc)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = next(it)
    again = _it(tiny, augment=True, text_encoder=enc)
    again.set_state(state)
    got = next(again)
    assert set(got) == {"video", "label", "caption", "text_emb", "text_mask"}
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert not np.array_equal(next(_it(tiny))["video"], want["video"])


def test_flip_augmentation_keeps_caption_and_label_true_to_the_video(tiny):
    plain, flipped = _it(tiny, global_batch_size=16), _it(tiny, global_batch_size=16,
                                                          augment=True)
    train_captions = set(S.captions("train"))
    n_flips = 0
    for _ in range(6):
        a, b = next(plain), next(flipped)
        for i in range(16):
            cap = str(b["caption"][i])
            assert cap in train_captions  # a flip never leaks a held-out combination
            assert b["label"][i] == S.label_of(*D.parse_caption(cap).values())
            assert D.detect(b["video"][i]) == D.parse_caption(cap)
            if not np.array_equal(a["video"][i], b["video"][i]):
                n_flips += 1
                np.testing.assert_array_equal(b["video"][i], a["video"][i][:, :, ::-1])
                assert cap == hflip_caption(str(a["caption"][i]))
    assert 24 <= n_flips <= 72  # about half of 96


def test_text_embeddings_come_from_a_cache_encoded_once(tiny):
    enc = FakeEncoder()
    it = _it(tiny, split="heldout", global_batch_size=16, text_encoder=enc)
    for _ in range(6):  # more than one epoch of the 64 held-out examples
        batch = next(it)
        emb, mask = enc.encode(list(batch["caption"]))
        enc.calls -= 1
        np.testing.assert_array_equal(batch["text_emb"], emb)
        np.testing.assert_array_equal(batch["text_mask"], mask)
        assert batch["text_emb"].dtype == np.float32 and batch["text_mask"].dtype == bool
    assert enc.calls == 1


def test_worker_processes_give_the_same_batches(tiny):
    ref = _it(tiny, augment=True)
    want = [next(ref) for _ in range(3)]
    it = _it(tiny, augment=True, worker_count=2)
    try:
        for w in want:
            got = next(it)
            np.testing.assert_array_equal(got["video"], w["video"])
            np.testing.assert_array_equal(got["caption"], w["caption"])
    finally:
        it.close()


def test_bad_arguments_are_named(tiny, tmp_path):
    with pytest.raises(ValueError, match="global_batch_size"):
        _it(tiny, global_batch_size=6, process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        _it(tiny, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="split"):
        _it(tiny, split="test")
    with pytest.raises(ValueError, match="global_batch_size"):
        _it(tiny, split="heldout", global_batch_size=128, num_epochs=1)
    with pytest.raises(ValueError, match="prepared"):
        _it(S.MovingShapes(config="tiny", data_dir=tmp_path))
    one_sided = [{"video": np.zeros((2, 4, 4, 3), np.uint8), "caption": "a cat going left",
                  "label": 0}]
    with pytest.raises(ValueError, match="augment"):
        make_iterator(one_sided, global_batch_size=1, seed=0, process_index=0,
                      process_count=1, augment=True)
    assert hflip_caption("Left of the right-hand door, left") == \
        "Right of the left-hand door, right"
