"""Token masking for the masked autoencoder: which of the L tokens each frame keeps.

Every masking returns index tensors (:class:`Masking`) so callers gather once:
``gather_tokens(x, m.ids_keep)`` for the encoder and
``restore_tokens(x_kept, mask_token, m.ids_restore)`` for the decoder.

Conventions shared by every masking kind:

- ``mask`` is float (N, L) with **0 = keep, 1 = remove**.
- ``ids_keep`` (N, K) lists the kept tokens in ascending position order.
- ``ids_restore`` (N, L) is the inverse of the permutation "kept tokens (ascending),
  then removed tokens (ascending)", so ``cat([kept, removed])[ids_restore]`` is the
  original order.
- K = :func:`num_kept` (L, ratio) = floor(L * (1 - ratio)), computed once here.
"""

import math
from typing import NamedTuple

import torch


MASKING_KINDS = ("random", "tube", "block", "grid")

# floor(L * (1 - ratio)) is computed with this slack so that float error in 1 - ratio
# (1 - 0.9 = 0.0999...) cannot drop a token: int(10 * (1 - 0.9)) would be 0, not 1.
_ROUNDING_SLACK = 1e-6


class Masking(NamedTuple):
    """Which tokens each of N frames keeps. ``mask``: 0 is keep, 1 is remove."""

    ids_keep: torch.Tensor  # (N, K) long, ascending
    ids_restore: torch.Tensor  # (N, L) long
    mask: torch.Tensor  # (N, L) float, 0 keep / 1 remove

    @property
    def num_kept(self) -> int:
        """K, the number of tokens kept per frame."""
        return self.ids_keep.shape[1]

    @property
    def num_tokens(self) -> int:
        """L, the number of tokens per frame before masking."""
        return self.mask.shape[1]


def check_ratio(ratio: float) -> None:
    """Raise ValueError unless 0 <= ratio < 1."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio {ratio} is outside [0, 1); use e.g. 0.75 (MWM) or 0 for no masking")


def num_kept(num_tokens: int, ratio: float) -> int:
    """K = floor(L * (1 - ratio)): how many of ``num_tokens`` tokens a frame keeps."""
    check_ratio(ratio)
    kept = int(math.floor(num_tokens * (1.0 - ratio) + _ROUNDING_SLACK))
    if kept < 1:
        raise ValueError(f"mask ratio {ratio} keeps no token of {num_tokens}; lower the ratio")
    return kept


def masking_from_mask(mask: torch.Tensor, kept: int | None = None) -> Masking:
    """Build a :class:`Masking` from a mask (N, L) (0 keep, 1 remove) with equal K per row.

    Callers that know K pass it as ``kept``: then nothing is read back to the host, so
    the masking can run inside a CUDA graph. Without it, K is read from the mask and
    every row is checked to keep the same number of tokens.
    """
    mask = mask.float()
    if kept is None:
        kept_per_row = (mask == 0).sum(dim=1)
        if not torch.all(kept_per_row == kept_per_row[0]):
            raise ValueError(f"every frame must keep the same number of tokens, got {kept_per_row.tolist()}")
        kept = int(kept_per_row[0])
    ids_shuffle = torch.argsort(mask, dim=1, stable=True)  # (N, L): kept ascending, then removed ascending
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (N, L)
    ids_keep = ids_shuffle[:, :kept]  # (N, K)
    return Masking(ids_keep, ids_restore, mask)


def _mask_from_scores(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """Mask (N, L) that keeps, in each row, the ``kept`` tokens of highest score."""
    order = torch.argsort(scores, dim=1, descending=True)  # (N, L)
    mask = torch.ones_like(scores)
    mask.scatter_(1, order[:, :kept], 0.0)  # 0 is keep, 1 is remove
    return mask


def keep_all(n: int, num_tokens: int, device: torch.device | str) -> Masking:
    """The identity masking: every token kept, in order (mask ratio 0)."""
    return masking_from_mask(torch.zeros(n, num_tokens, device=device), kept=num_tokens)


def random_masking(
    n: int,
    num_tokens: int,
    ratio: float,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> Masking:
    """MAE random masking, independent per frame: sort uniform noise, keep the K lowest."""
    kept = num_kept(num_tokens, ratio)
    noise = torch.rand(n, num_tokens, device=device, generator=generator)  # (N, L)
    return masking_from_mask(_mask_from_scores(-noise, kept), kept)


def tube_masking(
    batch: int,
    time: int,
    num_tokens: int,
    ratio: float,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> Masking:
    """Video ("tube") masking: one random mask per sequence, shared by its ``time`` frames.

    Returned flattened over (batch, time) in row-major order: frame ``b * time + t``.
    """
    per_sequence = random_masking(batch, num_tokens, ratio, device, generator)
    return Masking(*(t.repeat_interleave(time, dim=0) for t in per_sequence))  # (B * T, ...)


def _square_grid(num_tokens: int) -> int:
    """Side of the square token grid holding ``num_tokens`` tokens."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"block and grid masking need a square token grid, got {num_tokens} tokens; use random masking")
    return side


def block_masking(
    n: int,
    num_tokens: int,
    ratio: float,
    device: torch.device | str,
    generator: torch.Generator | None = None,
    min_block: int = 4,
) -> Masking:
    """BEiT-style blockwise masking on the square token grid, exactly K tokens kept.

    Each frame draws a sequence of rectangles (area uniform in [min_block, L - K],
    aspect ratio log-uniform in [0.3, 1/0.3], uniform position). Tokens are removed
    rectangle by rectangle in draw order; the last rectangle needed is cut at random
    tokens so exactly L - K are removed, and if the rectangles cover too few tokens the
    rest are removed at random.
    """
    kept = num_kept(num_tokens, ratio)
    side = _square_grid(num_tokens)
    removed = num_tokens - kept
    if removed == 0:
        return keep_all(n, num_tokens, device)
    low = min(min_block, removed)
    blocks = 2 * math.ceil(removed / low)  # enough rectangles to usually cover L - K tokens

    def uniform() -> torch.Tensor:
        return torch.rand(n, blocks, device=device, generator=generator)  # (N, M)

    area = low + uniform() * (removed - low)  # (N, M)
    log_aspect = math.log(0.3) + uniform() * (math.log(1 / 0.3) - math.log(0.3))  # (N, M)
    height = torch.sqrt(area * torch.exp(log_aspect)).round().clamp(1, side)  # (N, M)
    width = torch.sqrt(area / torch.exp(log_aspect)).round().clamp(1, side)  # (N, M)
    top = (uniform() * (side - height + 1)).floor()  # (N, M)
    left = (uniform() * (side - width + 1)).floor()  # (N, M)
    coords = torch.arange(side, device=device, dtype=torch.float32)
    rows = (coords >= top[..., None]) & (coords < (top + height)[..., None])  # (N, M, side)
    cols = (coords >= left[..., None]) & (coords < (left + width)[..., None])  # (N, M, side)
    covers = (rows[..., :, None] & cols[..., None, :]).flatten(2)  # (N, M, L)
    block_ids = torch.arange(blocks, device=device, dtype=torch.float32)[None, :, None]
    first_block = torch.where(covers, block_ids, float(blocks)).amin(dim=1)  # (N, L); M if uncovered
    # Removal priority: earlier rectangle first, random tie-break inside a rectangle.
    priority = first_block + torch.rand(n, num_tokens, device=device, generator=generator)  # (N, L)
    return masking_from_mask(_mask_from_scores(priority, kept), kept)


def grid_ratios(num_tokens: int) -> list[float]:
    """The mask ratios :func:`grid_masking` supports for ``num_tokens`` tokens."""
    side = _square_grid(num_tokens)
    divisors = [d for d in range(1, side + 1) if side % d == 0]
    return sorted({1.0 - 1.0 / (a * b) for a in divisors for b in divisors})


def _grid_cell(side: int, ratio: float) -> tuple[int, int]:
    """Cell (height, width) keeping one token per cell at ``ratio``; the squarest that fits."""
    for cell_h in range(side, 0, -1):
        for cell_w in range(cell_h, side + 1):
            fits = side % cell_h == 0 and side % cell_w == 0
            if fits and abs((1.0 - 1.0 / (cell_h * cell_w)) - ratio) < 1e-3:
                return cell_h, cell_w
    supported = ", ".join(f"{r:.4g}" for r in grid_ratios(side * side))
    raise ValueError(f"grid masking cannot use ratio {ratio} on a {side}x{side} grid; use one of {supported}")


def grid_masking(
    n: int,
    num_tokens: int,
    ratio: float,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> Masking:
    """Regular-grid masking: tile the token grid in cells and keep one token per cell.

    The cell has 1 / (1 - ratio) tokens (ratio 0.75 keeps one of each 2x2 cell); the
    kept token's offset inside the cell is drawn per frame, the same for every cell.
    Supported ratios: :func:`grid_ratios`.
    """
    check_ratio(ratio)
    side = _square_grid(num_tokens)
    cell_h, cell_w = _grid_cell(side, ratio)
    offset_r = torch.randint(cell_h, (n, 1), device=device, generator=generator)  # (N, 1)
    offset_c = torch.randint(cell_w, (n, 1), device=device, generator=generator)  # (N, 1)
    token = torch.arange(num_tokens, device=device)[None, :]  # (1, L)
    keep = ((token // side) % cell_h == offset_r) & ((token % side) % cell_w == offset_c)  # (N, L)
    return masking_from_mask(1.0 - keep.float(), num_tokens // (cell_h * cell_w))


def make_masking(
    kind: str,
    batch: int,
    time: int,
    num_tokens: int,
    ratio: float,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> Masking:
    """Masking of ``kind`` for ``batch * time`` frames (flattened row-major over (B, T)).

    ``tube`` shares one mask over each sequence's ``time`` frames; the other kinds draw
    one per frame. Ratio 0 keeps every token in order, whatever the kind.
    """
    if kind not in MASKING_KINDS:
        raise ValueError(f"unknown masking kind {kind!r}; use one of {', '.join(MASKING_KINDS)}")
    check_ratio(ratio)
    if ratio == 0.0:
        return keep_all(batch * time, num_tokens, device)
    if kind == "tube":
        return tube_masking(batch, time, num_tokens, ratio, device, generator)
    per_frame = {"random": random_masking, "block": block_masking, "grid": grid_masking}[kind]
    return per_frame(batch * time, num_tokens, ratio, device, generator)


def gather_tokens(x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """Select the kept tokens: x (N, L, D), ids_keep (N, K) -> (N, K, D)."""
    index = ids_keep[..., None].expand(-1, -1, x.shape[-1])  # (N, K, D)
    return torch.gather(x, 1, index)


def restore_tokens(x_kept: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """Fill removed slots with ``mask_token`` (D,) and restore order: (N, K, D) -> (N, L, D)."""
    n, kept, d = x_kept.shape
    fill = mask_token.to(x_kept.dtype).expand(n, ids_restore.shape[1] - kept, d)  # (N, L - K, D)
    shuffled = torch.cat([x_kept, fill], dim=1)  # (N, L, D): kept, then removed
    return torch.gather(shuffled, 1, ids_restore[..., None].expand(-1, -1, d))  # (N, L, D)
