"""Analytic FLOP model of DiT / DiT3D, and the matmul FLOPs a traced program asks for.

FLOP convention (as in PERFORMANCE_ANCHORS): 2 FLOPs per multiply-add, counting every matmul (the
Linear layers, the patch-embedding convolution) plus attention scores (Q·Kᵀ) and mixing (P·V);
elementwise work (norms, softmax, GELU, modulation) is not counted. A train step is credited with
3 × forward ("model FLOPs", the figure MFU is quoted on); `train_flops` also gives the matmul FLOPs
a step really executes, which is less when the backbone is frozen (no weight gradients there).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

DEFAULT_TEXT_LEN = 32  # data.text_max_length in dit3d_jax.train.config.default_config()


@dataclasses.dataclass(frozen=True)
class Term:
    """One matmul family of a forward pass.

    flops: forward FLOPs. kind: "weight" (activation × parameter) or "attention" (activation ×
    activation: scores or mixing). new: the layer is not part of the image DiT (temporal, text).
    input_grad: a backward pass must propagate a gradient to this matmul's activation input even
    when nothing upstream of it is trainable in the image-DiT sense (False only for layers fed by
    data: the patch embedding and the timestep MLP's first layer).
    """
    name: str
    flops: int
    kind: str = "weight"
    new: bool = False
    input_grad: bool = True


def forward_terms(model, batch: int, text_len: int = DEFAULT_TEXT_LEN) -> list[Term]:
    """The forward pass of a DiT / DiT3D on `batch` samples (clips), term by term.

    Derived from the module fields: input_size, patch_size, in_channels, hidden_size, depth,
    mlp_ratio, learn_sigma; for DiT3D also num_frames, temporal_every and text_dim (with `text_len`
    caption tokens). Label embedding is a gather (0 FLOPs).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    if isinstance(text_len, bool) or not isinstance(text_len, int) or text_len < 1:
        raise ValueError(f"text_len: expected a positive int, got {text_len!r}")
    B, D, p = batch, model.hidden_size, model.patch_size
    M = int(D * model.mlp_ratio)
    N = (model.input_size // p) ** 2                      # tokens per frame
    C_out = model.in_channels * (2 if model.learn_sigma else 1)
    spec = model.input_spec
    video = spec.video
    F = spec.shape[0] if video else 1
    text = spec.text_dim > 0
    L = text_len
    rows = B * F                                          # images the spatial layers see
    mm = lambda m, k, n: 2 * m * k * n                    # (m×k)·(k×n)

    terms = [Term("patch_embed", mm(rows * N, p * p * model.in_channels, D), input_grad=False),
             Term("t_embedder.mlp_0", mm(B, 256, D), input_grad=False),
             Term("t_embedder.mlp_2", mm(B, D, D))]
    if text:
        T = spec.text_dim
        # The captions are data, but training swaps in the learned null caption (a parameter)
        # for dropped rows, so these layers pass gradients back to their inputs too.
        terms += [Term("text_proj_fc1", mm(B * L, T, D), new=True),
                  Term("text_proj_fc2", mm(B * L, D, D), new=True),
                  Term("text_pool", mm(B, T, D), new=True)]
    for i in range(model.depth):
        blk = f"blocks_{i}"
        terms += [Term(f"{blk}.adaLN_modulation_1", mm(B, D, 6 * D)),
                  Term(f"{blk}.attn.qkv", mm(rows * N, D, 3 * D)),
                  Term(f"{blk}.attn.scores", mm(rows * N, D, N), "attention"),
                  Term(f"{blk}.attn.mixing", mm(rows * N, N, D), "attention"),
                  Term(f"{blk}.attn.proj", mm(rows * N, D, D))]
        if video and i % model.temporal_every == 0:
            terms += [Term(f"{blk}.temporal_adaLN", mm(B, D, 3 * D), new=True),
                      Term(f"{blk}.temporal_attn.qkv", mm(B * N * F, D, 3 * D), new=True),
                      Term(f"{blk}.temporal_attn.scores", mm(B * N * F, D, F), "attention", True),
                      Term(f"{blk}.temporal_attn.mixing", mm(B * N * F, F, D), "attention", True),
                      Term(f"{blk}.temporal_attn.proj", mm(B * N * F, D, D), new=True)]
        if text:
            terms += [Term(f"{blk}.cross_attn.q", mm(rows * N, D, D), new=True),
                      Term(f"{blk}.cross_attn.kv", mm(B * L, D, 2 * D), new=True),
                      Term(f"{blk}.cross_attn.scores", mm(rows * N, D, L), "attention", True),
                      Term(f"{blk}.cross_attn.mixing", mm(rows * N, L, D), "attention", True),
                      Term(f"{blk}.cross_attn.proj", mm(rows * N, D, D), new=True)]
        terms += [Term(f"{blk}.mlp.fc1", mm(rows * N, D, M)),
                  Term(f"{blk}.mlp.fc2", mm(rows * N, M, D))]
    # DiT3D's head runs on the B·F frames with the conditioning repeated per frame.
    terms += [Term("final_layer.adaLN_modulation_1", mm(rows if video else B, D, 2 * D)),
              Term("final_layer.linear", mm(rows * N, D, p * p * C_out))]
    return terms


def dit_flops(model, batch: int, text_len: int = DEFAULT_TEXT_LEN) -> int:
    """Forward FLOPs of `model` on `batch` samples (clips): matmuls + attention scores/mixing."""
    return sum(term.flops for term in forward_terms(model, batch, text_len))


def train_flops(model, batch: int, text_len: int = DEFAULT_TEXT_LEN,
                freeze: str = "none") -> dict:
    """{"forward", "model" (= 3 × forward, the MFU convention), "executed"} for one train step.

    executed = forward + activation gradients (each weight matmul's input gradient costs its
    forward FLOPs, skipped where `input_grad` is False; attention needs both operand gradients,
    2 × forward) + weight gradients (forward FLOPs, trainable layers only). freeze: "none" or
    "backbone" (only the `new` layers train). With the backbone frozen the text layers still pass
    gradients into the conditioning, so the timestep MLP's second layer then needs no input grad.
    """
    if freeze not in ("none", "backbone"):
        raise ValueError(f"freeze: expected 'none' or 'backbone', got {freeze!r}")
    terms = forward_terms(model, batch, text_len)
    fwd = sum(t.flops for t in terms)
    executed = fwd
    for t in terms:
        trainable = freeze == "none" or t.new
        if t.kind == "attention":
            executed += 2 * t.flops
            continue
        needs_input_grad = t.input_grad and not (freeze == "backbone"
                                                 and t.name == "t_embedder.mlp_2")
        executed += t.flops * (int(needs_input_grad) + int(trainable))
    return {"forward": fwd, "model": 3 * fwd, "executed": executed}


def jaxpr_matmul_flops(fn: Callable, *args, **kwargs) -> int:
    """Matmul FLOPs (dot_general, convolutions) in the jaxpr of fn(*args): what the traced program
    asks XLA to compute, before XLA's own simplifications. Walks nested jaxprs (jit, remat, scan ×
    its length, custom_jvp/vjp)."""
    import jax
    import numpy as np
    from jax.extend.core import jaxprs_in_params

    def count(jaxpr, mult=1) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "dot_general":
                lhs, rhs = (v.aval.shape for v in eqn.invars)
                (_, rc), (_, rb) = eqn.params["dimension_numbers"]
                free_rhs = [s for i, s in enumerate(rhs) if i not in rc and i not in rb]
                total += mult * 2 * int(np.prod(lhs)) * int(np.prod(free_rhs, dtype=np.int64))
            elif name == "conv_general_dilated":
                out = eqn.outvars[0].aval.shape
                kernel = eqn.invars[1].aval.shape
                dn = eqn.params["dimension_numbers"]
                k_out = kernel[dn.rhs_spec[0]]
                total += mult * 2 * int(np.prod(out)) * int(np.prod(kernel)) // k_out \
                    // eqn.params["batch_group_count"]
            inner = mult * (eqn.params["length"] if name == "scan" else 1)
            for sub in jaxprs_in_params(eqn.params):
                total += count(sub, inner)
        return total

    return count(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)
