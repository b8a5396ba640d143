"""ViT blocks: attention against a naive reference, shapes, position embeddings, init."""

import math

import pytest
import torch

from mwm.vit import Attention, Block, CrossBlock, Transformer, sincos_pos_embed_2d


def naive_attention(attn: Attention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V per head, written out with the module's own weights."""
    d = x.shape[-1]
    h = attn.heads
    q = x @ attn.to_q.weight.T + attn.to_q.bias
    kv = context @ attn.to_kv.weight.T + attn.to_kv.bias
    k, v = kv[..., :d], kv[..., d:]
    outs = []
    for i in range(h):
        sl = slice(i * d // h, (i + 1) * d // h)
        scores = q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(d // h)
        outs.append(torch.softmax(scores, dim=-1) @ v[..., sl])
    return torch.cat(outs, dim=-1) @ attn.proj.weight.T + attn.proj.bias


def test_self_attention_matches_naive_softmax():
    torch.manual_seed(0)
    attn = Attention(8, heads=2)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(attn(x), naive_attention(attn, x, x), rtol=1e-5, atol=1e-5)


def test_cross_attention_matches_naive_softmax_and_uses_context():
    torch.manual_seed(0)
    attn = Attention(8, heads=4)
    x, context = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    out = attn(x, context)
    assert out.shape == (2, 5, 8)
    torch.testing.assert_close(out, naive_attention(attn, x, context), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, attn(x, torch.randn(2, 3, 8)))


def test_block_keeps_shape_and_is_permutation_equivariant():
    torch.manual_seed(0)
    block = Block(16, heads=4)
    x = torch.randn(3, 7, 16)
    perm = torch.randperm(7)
    out = block(x)
    assert out.shape == (3, 7, 16)
    torch.testing.assert_close(block(x[:, perm]), out[:, perm], rtol=1e-5, atol=1e-5)


def test_cross_block_queries_x_and_reads_context():
    torch.manual_seed(0)
    block = CrossBlock(16, heads=2)
    x, context = torch.randn(2, 6, 16), torch.randn(2, 4, 16)
    out = block(x, context)
    assert out.shape == (2, 6, 16)
    assert not torch.allclose(out, block(x, context + 1.0))


def test_transformer_stacks_blocks_and_ends_with_layernorm():
    torch.manual_seed(0)
    net = Transformer(16, depth=3, heads=4)
    assert len(net.blocks) == 3
    out = net(torch.randn(2, 5, 16) * 10)
    assert out.shape == (2, 5, 16)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    assert net.norm.eps == 1e-6


def test_mae_initialisation():
    block = Block(16, heads=4)
    for linear in (block.attn.to_q, block.attn.to_kv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
        assert torch.all(linear.bias == 0)
        fan_out, fan_in = linear.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))  # xavier-uniform limit
        assert linear.weight.abs().max() <= bound
        assert linear.weight.abs().max() > 0.5 * bound
    assert torch.all(block.norm1.weight == 1) and torch.all(block.norm1.bias == 0)


def test_pos_embed_is_fixed_with_distinct_rows():
    embed = sincos_pos_embed_2d(32, 4, 6)
    assert embed.shape == (24, 32)
    assert not embed.requires_grad
    torch.testing.assert_close(embed, sincos_pos_embed_2d(32, 4, 6))
    distances = torch.cdist(embed, embed) + torch.eye(24) * 1e3
    assert distances.min() > 1e-3
    # Token (0, 0) is sin(0) = 0 then cos(0) = 1 in each half.
    torch.testing.assert_close(embed[0], torch.tensor(([0.0] * 8 + [1.0] * 8) * 2))
    # Row-major: tokens of the same row share the row half of the channels.
    torch.testing.assert_close(embed[1, :16], embed[0, :16])
    torch.testing.assert_close(embed[6, 16:], embed[0, 16:])


def test_bad_widths_raise_user_error():
    with pytest.raises(ValueError):
        Attention(10, heads=4)
    with pytest.raises(ValueError):
        sincos_pos_embed_2d(6, 2, 2)
