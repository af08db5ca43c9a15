"""An independent PyTorch DiT written from DiT's published facts (paper, state_dict layout), for
parity tests.

Not a copy of facebookresearch/DiT: the same architecture and state_dict names, written anew with
its own sin-cos helpers and an explicit attention. `TorchDiT.forward(x (N, C, H, W), t (N,),
y (N,)) -> (N, C_out, H, W)`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def ref_sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[sin | cos] of positions·omega, omega_i = 1 / 10000^(i / (dim/2))."""
    i = np.arange(dim // 2, dtype=np.float64)
    omega = 10000.0 ** (-i / (dim // 2))
    angles = np.outer(np.asarray(positions, np.float64).ravel(), omega)
    return np.hstack([np.sin(angles), np.cos(angles)])


def ref_pos_embed(dim: int, grid: int) -> np.ndarray:
    """Token k = (row r, col c) row-major: first half of channels encodes c, second half r."""
    r, c = np.divmod(np.arange(grid * grid), grid)
    return np.hstack([ref_sincos_1d(dim // 2, c), ref_sincos_1d(dim // 2, r)])


def ref_timestep(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class PatchEmbed(nn.Module):
    def __init__(self, c, d, p):
        super().__init__()
        self.proj = nn.Conv2d(c, d, p, stride=p)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))

    def forward(self, t):
        return self.mlp(ref_timestep(t))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes, d):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, d)

    def forward(self, y):
        return self.embedding_table(y)


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _mod(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Block(nn.Module):
    def __init__(self, d, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, heads)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(d, int(d * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x, c):
        sa, ca, ga, sm, cm, gm = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + ga.unsqueeze(1) * self.attn(_mod(self.norm1(x), sa, ca))
        return x + gm.unsqueeze(1) * self.mlp(_mod(self.norm2(x), sm, cm))


class FinalLayer(nn.Module):
    def __init__(self, d, out):
        super().__init__()
        self.norm_final = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(d, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_mod(self.norm_final(x), shift, scale))


class TorchDiT(nn.Module):
    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=12,
                 num_heads=6, mlp_ratio=4.0, num_classes=1000, learn_sigma=True):
        super().__init__()
        self.p, self.c = patch_size, in_channels
        self.c_out = in_channels * (2 if learn_sigma else 1)
        self.grid = input_size // patch_size
        self.x_embedder = PatchEmbed(in_channels, hidden_size, patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        pos = torch.from_numpy(ref_pos_embed(hidden_size, self.grid)).float()[None]
        self.pos_embed = nn.Parameter(pos, requires_grad=False)
        self.blocks = nn.ModuleList(Block(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size * patch_size * self.c_out)

    def forward(self, x, t, y):
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            h = block(h, c)
        h = self.final_layer(h, c)
        n, g, p = h.shape[0], self.grid, self.p
        h = h.reshape(n, g, g, p, p, self.c_out)
        return torch.einsum("nhwpqc->nchpwq", h).reshape(n, self.c_out, g * p, g * p)


def randomize_(model: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Every trainable weight random and non-zero (DiT's zero inits would hide layout bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return model
