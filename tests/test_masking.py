"""Token masking: exact counts, inverse permutations, independence, tube/block/grid shapes."""

import pytest
import torch

from mwm.masking import (
    MASKING_KINDS,
    block_masking,
    gather_tokens,
    grid_masking,
    grid_ratios,
    keep_all,
    make_masking,
    num_kept,
    random_masking,
    restore_tokens,
    tube_masking,
)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_consistent(m, num_tokens: int, kept: int) -> None:
    """ids_keep, ids_restore and mask describe the same K-of-L selection."""
    n = m.mask.shape[0]
    assert m.ids_keep.shape == (n, kept)
    assert m.ids_restore.shape == (n, num_tokens)
    assert torch.all(m.mask.sum(1) == num_tokens - kept)
    assert torch.all(torch.gather(m.mask, 1, m.ids_keep) == 0)  # 0 is keep
    assert torch.all(m.ids_keep[:, 1:] > m.ids_keep[:, :-1])  # ascending, no repeats
    # ids_restore is a permutation that puts "kept, then removed" back in order.
    ids_removed = torch.argsort(m.mask, dim=1, stable=True)[:, kept:]
    shuffle = torch.cat([m.ids_keep, ids_removed], dim=1)
    torch.testing.assert_close(torch.gather(shuffle, 1, m.ids_restore), torch.arange(num_tokens).expand(n, -1))


@pytest.mark.parametrize(
    "num_tokens, ratio, expected",
    [(64, 0.75, 16), (64, 0.9, 6), (64, 0.95, 3), (64, 0.0, 64), (10, 0.9, 1), (10, 0.7, 3), (49, 0.5, 24)],
)
def test_num_kept_is_floor_of_kept_fraction(num_tokens, ratio, expected):
    assert num_kept(num_tokens, ratio) == expected


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75, 0.9, 0.95])
def test_random_masking_keeps_exactly_k(ratio):
    m = random_masking(6, 64, ratio, "cpu", seeded())
    check_consistent(m, 64, num_kept(64, ratio))


def test_restore_inverts_gather():
    x = torch.randn(5, 64, 3)
    mask_token = torch.full((3,), 99.0)
    m = random_masking(5, 64, 0.75, "cpu", seeded())
    kept = gather_tokens(x, m.ids_keep)
    assert kept.shape == (5, 16, 3)
    restored = restore_tokens(kept, mask_token, m.ids_restore)
    keep = (m.mask == 0)[..., None].expand_as(x)
    torch.testing.assert_close(restored[keep], x[keep])
    assert torch.all(restored[~keep] == 99.0)


def test_random_masking_is_independent_per_frame_and_seeded():
    m = random_masking(8, 64, 0.75, "cpu", seeded(1))
    assert len({tuple(row.tolist()) for row in m.ids_keep}) == 8
    torch.testing.assert_close(m.ids_keep, random_masking(8, 64, 0.75, "cpu", seeded(1)).ids_keep)


def test_random_masking_is_uniform_over_positions():
    m = random_masking(4000, 16, 0.75, "cpu", seeded(2))
    keep_rate = (1 - m.mask).mean(0)
    assert torch.all((keep_rate - 0.25).abs() < 0.04)


@pytest.mark.parametrize("kind", MASKING_KINDS)
def test_ratio_zero_keeps_every_token_in_order(kind):
    m = make_masking(kind, 2, 3, 64, 0.0, "cpu", seeded())
    assert torch.equal(m.ids_keep, torch.arange(64).expand(6, -1))
    assert torch.equal(m.ids_restore, torch.arange(64).expand(6, -1))
    assert torch.all(m.mask == 0)
    assert torch.equal(random_masking(2, 64, 0.0, "cpu").ids_keep, torch.arange(64).expand(2, -1))
    assert torch.equal(keep_all(2, 64, "cpu").ids_keep, torch.arange(64).expand(2, -1))


def test_tube_mask_shared_over_time_and_distinct_across_sequences():
    batch, time = 4, 5
    m = tube_masking(batch, time, 64, 0.9, "cpu", seeded())
    check_consistent(m, 64, 6)
    masks = m.mask.view(batch, time, 64)
    assert torch.all(masks == masks[:, :1])
    assert len({tuple(row.tolist()) for row in masks[:, 0]}) == batch
    per_frame = make_masking("random", batch, time, 64, 0.9, "cpu", seeded()).mask.view(batch, time, 64)
    assert not torch.all(per_frame == per_frame[:, :1])


def boundary_length(mask: torch.Tensor, side: int) -> int:
    """Number of 4-neighbour token pairs where one is kept and the other removed."""
    grid = mask.view(-1, side, side)
    return int((grid[:, 1:] != grid[:, :-1]).sum() + (grid[:, :, 1:] != grid[:, :, :-1]).sum())


@pytest.mark.parametrize("ratio", [0.4, 0.5, 0.75, 0.9])
def test_block_masking_exact_count_and_contiguous(ratio):
    m = block_masking(300, 64, ratio, "cpu", seeded())
    check_consistent(m, 64, num_kept(64, ratio))
    # Blocks have far less kept/removed boundary than scattered tokens (measured ~0.45x).
    random = random_masking(300, 64, ratio, "cpu", seeded())
    assert boundary_length(m.mask, 8) < 0.7 * boundary_length(random.mask, 8)


@pytest.mark.parametrize("ratio, cell", [(0.75, (2, 2)), (0.5, (1, 2)), (0.9375, (4, 4)), (0.875, (2, 4))])
def test_grid_masking_keeps_one_token_per_cell(ratio, cell):
    m = grid_masking(10, 64, ratio, "cpu", seeded())
    check_consistent(m, 64, int(64 * (1 - ratio)))
    rows, cols = m.ids_keep // 8, m.ids_keep % 8
    for r, c in zip(rows, cols):
        # One lattice: every kept token has the same offset inside its cell, one per cell.
        assert len(set((r % cell[0]).tolist())) == 1 and len(set((c % cell[1]).tolist())) == 1
        assert len(set(zip((r // cell[0]).tolist(), (c // cell[1]).tolist()))) == len(r)


def test_grid_masking_rejects_unsupported_ratio():
    assert 0.75 in grid_ratios(64)
    with pytest.raises(ValueError, match="grid masking"):
        grid_masking(2, 64, 0.6, "cpu")


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
@pytest.mark.parametrize("kind", MASKING_KINDS)
def test_bad_ratio_raises_user_error(kind, ratio):
    with pytest.raises(ValueError):
        make_masking(kind, 2, 2, 64, ratio, "cpu")


def test_unknown_kind_and_empty_keep_raise_user_error():
    with pytest.raises(ValueError, match="unknown masking kind"):
        make_masking("checkerboard", 1, 1, 64, 0.5, "cpu")
    with pytest.raises(ValueError):
        random_masking(1, 4, 0.9, "cpu")
    with pytest.raises(ValueError):
        block_masking(1, 10, 0.5, "cpu")
