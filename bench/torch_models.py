"""PyTorch models for the benchmark's baseline: the test reference DiT with fused attention, and a
DiT3D stand-in with the same layers and FLOPs as `dit3d_jax.models.dit3d.DiT3D`.

Built from the pieces of tests/torch_reference.py (patch/timestep/label embedders, MLP, final
layer).
Attention uses `F.scaled_dot_product_attention` (what a tuned PyTorch DiT runs; the reference's
explicit softmax would handicap PyTorch). Timing baselines only: no weight conversion, default init.

    torch_model_like(jax_model) -> TorchDiT (image) or TorchDiT3D (video)
    image: model(x (B, C, H, W), t (B,), y (B,)) -> (B, C_out, H, W)
    video: model(x (B, F, C, H, W), t, y, text (B, L, T), text_mask (B, L) bool, drop (B,) bool)
           -> (B, F, C_out, H, W)
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
import torch_reference as ref  # noqa: E402


class SdpaAttention(ref.Attention):
    """The reference attention's layers (fused [q|k|v], proj) with PyTorch's fused kernel.
    x: (N, T, D) -> (N, T, D)."""

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class CrossAttention(nn.Module):
    """x (B, N, D) attends to context (B, L, D) under mask (B, L) bool -> (B, N, D)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x, context, mask):
        b, n, d = x.shape
        h, dh = self.heads, d // self.heads
        q = self.q(x).reshape(b, n, h, dh).transpose(1, 2)
        k, v = self.kv(context).reshape(b, -1, 2, h, dh).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def _ln(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


class Block3D(nn.Module):
    """DiT block + adaLN-modulated temporal attention (optional) + text cross-attention (optional).

    x: (B, F, N, D), c: (B, D), text: (B, L, D), mask: (B, L), temporal_pos: (F, D)."""

    def __init__(self, d, heads, mlp_ratio, temporal, cross):
        super().__init__()
        self.attn = SdpaAttention(d, heads)
        self.mlp = ref.Mlp(d, int(d * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.temporal_attn = SdpaAttention(d, heads) if temporal else None
        self.temporal_adaLN = nn.Sequential(nn.SiLU(), nn.Linear(d, 3 * d)) if temporal else None
        self.cross_attn = CrossAttention(d, heads) if cross else None

    def forward(self, x, c, text, mask, temporal_pos):
        b, f, n, d = x.shape
        sa, ca, ga, sm, cm, gm = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x.reshape(b, f * n, d)
        h = ref._mod(_ln(x), sa, ca).reshape(b * f, n, d)
        x = x + ga.unsqueeze(1) * self.attn(h).reshape(b, f * n, d)
        if self.temporal_attn is not None:
            shift, scale, gate = self.temporal_adaLN(c).chunk(3, dim=1)
            h = ref._mod(_ln(x), shift, scale).reshape(b, f, n, d) + temporal_pos[None, :, None]
            h = self.temporal_attn(h.transpose(1, 2).reshape(b * n, f, d))
            x = x + gate.unsqueeze(1) * h.reshape(b, n, f, d).transpose(1, 2).reshape(b, f * n, d)
        if self.cross_attn is not None:
            x = x + self.cross_attn(_ln(x), text, mask)
        x = x + gm.unsqueeze(1) * self.mlp(ref._mod(_ln(x), sm, cm))
        return x.reshape(b, f, n, d)


class TorchDiT3D(nn.Module):
    """The DiT3D architecture of dit3d_jax (temporal attention every `temporal_every` blocks,
    cross-attention to projected text, pooled text in the conditioning, learned null caption)."""

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=12,
                 num_heads=6, mlp_ratio=4.0, num_classes=1000, learn_sigma=True, num_frames=16,
                 text_dim=384, temporal_every=1):
        super().__init__()
        d = hidden_size
        self.p, self.c_out = patch_size, in_channels * (2 if learn_sigma else 1)
        self.grid, self.num_classes = input_size // patch_size, num_classes
        self.x_embedder = ref.PatchEmbed(in_channels, d, patch_size)
        self.t_embedder = ref.TimestepEmbedder(d)
        self.y_embedder = ref.LabelEmbedder(num_classes, d)
        self.register_buffer("pos_embed", torch.from_numpy(
            ref.ref_pos_embed(d, self.grid)).float()[None])
        self.register_buffer("temporal_pos", torch.from_numpy(
            ref.ref_sincos_1d(d, np.arange(num_frames))).float())
        self.text_dim = text_dim
        if text_dim:
            self.null_text = nn.Parameter(torch.randn(text_dim) * text_dim ** -0.5)
            self.text_proj = nn.Sequential(nn.Linear(text_dim, d), nn.GELU(approximate="tanh"),
                                           nn.Linear(d, d))
            self.text_pool = nn.Linear(text_dim, d)
        self.blocks = nn.ModuleList(
            Block3D(d, num_heads, mlp_ratio, i % temporal_every == 0, text_dim > 0)
            for i in range(depth))
        self.final_layer = ref.FinalLayer(d, patch_size * patch_size * self.c_out)

    def forward(self, x, t, y, text=None, text_mask=None, drop=None):
        b, f, c, hh, ww = x.shape
        h = self.x_embedder(x.reshape(b * f, c, hh, ww)) + self.pos_embed
        h = h.reshape(b, f, -1, h.shape[-1])
        if drop is not None:
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        cond = self.t_embedder(t) + self.y_embedder(y)
        tokens = mask = None
        if self.text_dim:
            if drop is not None:
                null = torch.zeros_like(text[0])
                null[0] = self.null_text
                null_mask = torch.arange(text.shape[1], device=x.device) == 0
                text = torch.where(drop[:, None, None], null[None], text)
                text_mask = torch.where(drop[:, None], null_mask[None], text_mask)
            w = text_mask.to(text.dtype)[..., None]
            cond = cond + self.text_pool((text * w).sum(1) / w.sum(1).clamp(min=1.0))
            tokens, mask = self.text_proj(text), text_mask
        for block in self.blocks:
            h = block(h, cond, tokens, mask, self.temporal_pos)
        out = self.final_layer(h.reshape(b * f, -1, h.shape[-1]), cond.repeat_interleave(f, 0))
        g, p = self.grid, self.p
        out = out.reshape(b * f, g, g, p, p, self.c_out)
        out = torch.einsum("nhwpqc->nchpwq", out).reshape(b, f, self.c_out, g * p, g * p)
        return out

    def backbone_parameters(self):
        """Parameters the image DiT also has (what `freeze='backbone'` freezes)."""
        new = ("temporal_attn", "temporal_adaLN", "cross_attn", "null_text", "text_proj",
               "text_pool")
        return [p for name, p in self.named_parameters() if not any(k in name for k in new)]


def sdpa_dit(**kwargs) -> ref.TorchDiT:
    """tests/torch_reference.TorchDiT with its attention swapped for SdpaAttention."""
    model = ref.TorchDiT(**kwargs)
    heads = kwargs.get("num_heads", 6)
    d = kwargs.get("hidden_size", 384)
    for block in model.blocks:
        block.attn = SdpaAttention(d, heads)
    return model


def torch_model_like(jax_model) -> nn.Module:
    """The PyTorch counterpart of a dit3d_jax DiT / DiT3D module (same fields, same FLOPs)."""
    common = dict(input_size=jax_model.input_size, patch_size=jax_model.patch_size,
                  in_channels=jax_model.in_channels, hidden_size=jax_model.hidden_size,
                  depth=jax_model.depth, num_heads=jax_model.num_heads,
                  mlp_ratio=jax_model.mlp_ratio, num_classes=jax_model.num_classes,
                  learn_sigma=jax_model.learn_sigma)
    if jax_model.input_spec.video:
        return TorchDiT3D(num_frames=jax_model.num_frames, text_dim=jax_model.text_dim,
                          temporal_every=jax_model.temporal_every, **common)
    return sdpa_dit(**common)
