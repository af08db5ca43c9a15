"""An independent small PyTorch ViT written from torchvision's documented layout, for
parity tests of `dit3d_jax.convert.torch_vit` (torchvision itself is not installed here).

Same state_dict names as torchvision's VisionTransformer: conv_proj, class_token,
encoder.pos_embedding, encoder.layers.encoder_layer_i.{ln_1, self_attention.{in_proj_weight,
in_proj_bias, out_proj}, ln_2, mlp.0, mlp.3}, encoder.ln, heads.head. Attention is written out
(softmax(q·kᵀ/√dh)·v per head). `features(x (N, 3, H, W) normalised) -> (N, 1 + g², D)`.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class RefSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, length, dim = x.shape
        dh = dim // self.heads
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (a.reshape(n, length, self.heads, dh).transpose(1, 2) for a in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(n, length, dim))


class RefEncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = RefSelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(0.0))

    def forward(self, x):
        x = x + self.self_attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class RefEncoder(nn.Module):
    def __init__(self, tokens: int, dim: int, depth: int, heads: int, mlp_dim: int):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.zeros(1, tokens, dim))
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", RefEncoderLayer(dim, heads, mlp_dim)) for i in range(depth)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        return self.ln(self.layers(x + self.pos_embedding))


class RefViT(nn.Module):
    def __init__(self, image_size: int, patch: int, dim: int, depth: int, heads: int,
                 mlp_dim: int, classes: int = 10):
        super().__init__()
        self.patch = patch
        self.conv_proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = RefEncoder(1 + (image_size // patch) ** 2, dim, depth, heads, mlp_dim)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(dim, classes)))

    def features(self, x):
        """x (N, 3, H, W), already normalised -> every encoder output token (N, 1 + g², D)."""
        h = self.conv_proj(x).flatten(2).transpose(1, 2)  # row-major patches
        cls = self.class_token.expand(h.shape[0], -1, -1)
        return self.encoder(torch.cat([cls, h], dim=1))


def normalise(frames_pm1: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> ImageNet-normalised."""
    mean = torch.tensor(MEAN, dtype=frames_pm1.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=frames_pm1.dtype).view(1, 3, 1, 1)
    return ((frames_pm1 + 1) / 2 - mean) / std


def randomize_vit_(model: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Every parameter random and non-zero; LayerNorm scales around 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * std
            is_ln_scale = (".ln" in name or name.startswith("ln")) and name.endswith("weight")
            param.copy_(1 + noise if is_ln_scale else noise)
    return model
