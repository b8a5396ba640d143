"""Vision-transformer building blocks: position embeddings, attention, blocks.

Pre-norm blocks as in ViT / MAE (He et al., 2022): ``x + attn(norm(x))`` then
``x + mlp(norm(x))``; LayerNorm eps 1e-6 and MLP ratio 4 as in the official MWM code.
Weights are initialised like MAE: xavier-uniform linears with zero bias, LayerNorm
weight one and bias zero (:func:`init_weights`).
"""

import torch
import torch.nn.functional as F
from torch import nn



def init_weights(module: nn.Module) -> None:
    """MAE initialisation for one module; use as ``model.apply(init_weights)``."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos embedding of 1-D positions (P,) -> (P, dim), frequencies 1 / 10000^(i / (dim/2))."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    angles = positions.double()[:, None] * omega[None, :]  # (P, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (P, dim)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, MAE-style, shape (grid_h * grid_w, dim).

    Row-major token order (token ``r * grid_w + c`` is row r, column c). The first half
    of the channels encodes the row, the second half the column. Not learned: callers
    register it as a buffer.
    """
    if dim % 4 != 0:
        raise ValueError(f"position embedding width {dim} must be divisible by 4; pick a token width like 128 or 256")
    rows = torch.arange(grid_h).repeat_interleave(grid_w)  # (grid_h * grid_w,)
    cols = torch.arange(grid_w).repeat(grid_h)  # (grid_h * grid_w,)
    embed = torch.cat([_sincos_1d(dim // 2, rows), _sincos_1d(dim // 2, cols)], dim=1)  # (L, dim)
    return embed.float()


class Attention(nn.Module):
    """Multi-head attention; self-attention by default, cross-attention given a context.

    Queries come from ``x`` (B, L, D); keys and values from ``context`` (B, M, D), or
    from ``x`` itself when no context is given.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads; change the width or the heads")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, heads, L, D / heads)."""
        b, length, d = x.shape
        return x.reshape(b, length, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from ``x`` (B, L, D) to ``context`` (B, M, D) or to ``x``; returns (B, L, D)."""
        source = x if context is None else context
        q = self.split_heads(self.to_q(x))  # (B, h, L, d)
        k, v = self.to_kv(source).chunk(2, dim=-1)  # (B, M, D) each
        out = F.scaled_dot_product_attention(q, self.split_heads(k), self.split_heads(v))  # (B, h, L, d)
        out = out.transpose(1, 2).flatten(2)  # (B, L, D)
        return self.proj(out)


class MLP(nn.Module):
    """Two linears with GELU between, widening by ``mlp_ratio``."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D)."""
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention then MLP, each residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_ratio)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, D)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):
    """SiamMAE decoder block: cross-attention, self-attention, MLP, each pre-norm residual.

    Queries are the tokens ``x`` (B, L, D) (the masked future frame); keys and values
    of the cross-attention are ``context`` (B, M, D) (the unmasked past frame). The
    context is normalised by its own LayerNorm.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.norm_cross = nn.LayerNorm(dim, eps=eps)
        self.norm_context = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = Attention(dim, heads)
        self.norm_self = nn.LayerNorm(dim, eps=eps)
        self.self_attn = Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_ratio)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), context (B, M, D) -> (B, L, D)."""
        x = x + self.cross_attn(self.norm_cross(x), self.norm_context(context))
        x = x + self.self_attn(self.norm_self(x))
        return x + self.mlp(self.norm_mlp(x))


class Transformer(nn.Module):
    """A stack of ``depth`` pre-norm :class:`Block` s followed by a final LayerNorm."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, D)."""
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
