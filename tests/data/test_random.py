"""The benchmark source (dit3d_jax/data/random.py): deterministic synthetic host batches."""
import json

import numpy as np

from dit3d_jax.data.random import RandomSource


def test_random_source_batches_do_not_depend_on_process_count_and_resume():
    kw = dict(key="video", shape=(2, 4, 4, 3), global_batch_size=6, seed=5, num_classes=7,
              text_shape=(5, 8))
    one = RandomSource(**kw)
    two = [RandomSource(process_index=i, process_count=2, **kw) for i in range(2)]
    for _ in range(3):
        whole, parts = next(one), [next(it) for it in two]
        assert whole["video"].shape == (6, 2, 4, 4, 3) and whole["text_emb"].shape == (6, 5, 8)
        for key in whole:
            np.testing.assert_array_equal(whole[key], np.concatenate([p[key] for p in parts]))
    assert whole["text_mask"][:, 0].all() and 0 <= whole["label"].min() < 7
    state = one.get_state()
    expected = next(one)
    again = RandomSource(**kw)
    again.set_state(json.loads(json.dumps(state)))
    for key, value in next(again).items():
        np.testing.assert_array_equal(value, expected[key])
    assert not np.array_equal(next(RandomSource(**kw))["video"], expected["video"])
