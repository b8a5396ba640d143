"""World model: KL balancing, loss terms and scales, learning on a fixed batch, open-loop decoding."""

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, Independent, kl_divergence

from mwm.conv import ConvDecoder, ConvEncoder
from mwm.losses.dynamics import discount_loss, kl_balance_loss, latent_recon_loss, reward_loss
from mwm.optim import Optimizer
from mwm.transforms import symlog
from mwm.world_model import FlatViTEncoder, TokenDecoder, WorldModel, rssm_feat_dim, token_pos_embed

B, T, A = 2, 4, 3
RSSM = dict(deter=32, hidden=32, stoch=4, classes=4)
TOKENS, TOKEN_DIM = 5, 16


def token_world_model(**overrides) -> WorldModel:
    torch.manual_seed(0)
    feat = rssm_feat_dim(RSSM)
    encoder = FlatViTEncoder(TOKEN_DIM, TOKENS, width=16, depth=1, heads=2)
    decoder = TokenDecoder(feat, TOKEN_DIM, TOKENS, width=16, depth=1, heads=2)
    kwargs = dict(head_layers=1, head_units=32, **overrides)
    return WorldModel(encoder, decoder, 16, A, RSSM, **kwargs)


def conv_world_model() -> WorldModel:
    torch.manual_seed(0)
    encoder = ConvEncoder(3, depth=4)
    decoder = ConvDecoder(rssm_feat_dim(RSSM), 3, depth=4)
    return WorldModel(encoder, decoder, encoder.out_dim, A, RSSM, head_layers=1, head_units=32)


def batch(obs_shape: tuple[int, ...], seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    is_terminal = torch.zeros(B, T)
    is_terminal[0, -1] = 1.0
    return {
        "inputs": torch.rand(B, T, *obs_shape, generator=gen) - 0.5,
        "action": F.one_hot(torch.randint(0, A, (B, T), generator=gen), A).float(),
        "reward": torch.randn(B, T, generator=gen),
        "is_first": is_first,
        "is_terminal": is_terminal,
    }


def categorical_kl_reference(lhs: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """KL of S independent categoricals with torch.distributions, (B, T, S, K) -> (B, T)."""
    return kl_divergence(Independent(Categorical(logits=lhs), 1), Independent(Categorical(logits=rhs), 1))


def test_kl_balance_value_and_gradients_match_hand_computation():
    torch.manual_seed(0)
    post = torch.randn(2, 3, 4, 5, requires_grad=True)
    prior = torch.randn(2, 3, 4, 5, requires_grad=True)
    loss, value = kl_balance_loss(post, prior, balance=0.8, free=0.0)
    reference = categorical_kl_reference(post, prior)
    assert loss.shape == value.shape == (2, 3)
    assert torch.allclose(value, reference, atol=1e-5)
    assert torch.allclose(loss, reference, atol=1e-5)
    loss.sum().backward()
    grad_post, grad_prior = torch.autograd.grad(reference.sum(), [post, prior])
    # 0.8 * KL(sg(post) || prior) trains the prior, 0.2 * KL(post || sg(prior)) the posterior
    assert torch.allclose(prior.grad, 0.8 * grad_prior, atol=1e-5)
    assert torch.allclose(post.grad, 0.2 * grad_post, atol=1e-5)


def test_free_nats_floor_each_element():
    torch.manual_seed(0)
    prior = torch.randn(1, 4, 4, 5)
    post = prior.clone()
    post[0, 2:] += 3.0 * torch.randn(2, 4, 5)  # steps 0, 1: KL = 0; steps 2, 3: large KL
    post.requires_grad_(True)
    free = 0.5
    loss, value = kl_balance_loss(post, prior, balance=0.8, free=free)
    reference = categorical_kl_reference(post, prior)
    assert torch.all(reference[0, 2:] > free)
    assert torch.allclose(loss, reference.clamp_min(free), atol=1e-5)
    assert torch.allclose(value, reference, atol=1e-5)  # the logged value is not floored
    loss.sum().backward()
    assert torch.all(post.grad[0, :2] == 0)
    assert torch.all(post.grad[0, 2:].abs().sum((-2, -1)) > 0)


def test_loss_terms_by_hand():
    pred = torch.randn(2, 3, 5, 4)
    target = torch.randn(2, 3, 5, 4)
    expected = 256 / 4 * ((pred - target) ** 2).sum(-1).mean(-1)  # official: sum over 256 channels
    assert torch.allclose(latent_recon_loss(pred, target), expected)
    reward = torch.tensor([[3.0, -1.0]])
    assert torch.allclose(reward_loss(symlog(reward), reward, "symlog"), torch.zeros(1, 2))
    assert torch.allclose(reward_loss(torch.zeros(1, 2), reward, "tanh"), torch.tanh(reward) ** 2)
    logits = torch.tensor([[2.0, -1.0]])
    terminal = torch.tensor([[0.0, 1.0]])
    expected = -torch.stack([F.logsigmoid(logits[0, 0]), F.logsigmoid(-logits[0, 1])])[None]
    assert torch.allclose(discount_loss(logits, terminal), expected)


def test_total_is_the_scaled_sum_of_mean_terms():
    scales = {"kl": 0.1, "recon": 2.0, "discount": 5.0}
    model = token_world_model(discount_head=True, kl_scale=0.1, recon_scale=2.0, discount_scale=5.0)
    data = batch((TOKENS, TOKEN_DIM))
    torch.manual_seed(3)
    total, post, metrics = model.loss(**data)
    torch.manual_seed(3)
    terms, _, _ = model.losses(**data)
    assert set(terms) == {"kl", "recon", "reward", "discount"}
    assert all(value.shape == (B, T) for value in terms.values())
    expected = sum({**scales, "reward": 1.0}[name] * value.mean() for name, value in terms.items())
    assert torch.allclose(total, expected)
    assert post["deter"].shape == (B, T, RSSM["deter"])
    assert all(not value.requires_grad and value.dim() == 0 for value in metrics.values())


def test_the_discount_scale_applies_only_with_a_discount_head():
    without = token_world_model(discount_scale=5.0)
    assert set(without.loss_scales) == {"kl", "recon", "reward"}
    assert token_world_model(discount_head=True, discount_scale=5.0).loss_scales["discount"] == 5.0


def test_without_discount_head_episodes_continue():
    model = token_world_model(discount_head=False)
    terms, _, _ = model.losses(**batch((TOKENS, TOKEN_DIM)))
    assert "discount" not in terms
    assert torch.equal(model.discount(torch.randn(3, 7, model.feat_dim)), torch.ones(3, 7))


def test_reward_prediction_is_read_back_through_symexp():
    model = token_world_model()
    feat = torch.randn(6, model.feat_dim)
    assert torch.allclose(symlog(model.reward(feat)), model.reward_head(feat), atol=1e-5)


def learn_fixed_batch(model: WorldModel, data: dict[str, torch.Tensor], updates: int) -> tuple[float, float]:
    optimizer = Optimizer("model", model.parameters(), lr=3e-3)
    first = None
    for _ in range(updates):
        total, _, _ = model.loss(**data)
        first = total.item() if first is None else first
        optimizer.step(total)
    with torch.no_grad():
        last = model.loss(**data)[0].item()
    return first, last


def test_token_world_model_learns_a_fixed_batch():
    torch.manual_seed(0)
    first, last = learn_fixed_batch(token_world_model(), batch((TOKENS, TOKEN_DIM)), 30)
    assert last < 0.5 * first


def test_conv_world_model_learns_a_fixed_batch():
    torch.manual_seed(0)
    data = batch((3, 64, 64))
    # a shared blocky scene plus small per-frame noise: learnable in a few updates
    scene = F.interpolate(torch.rand(1, 3, 8, 8), size=64, mode="nearest") - 0.5  # (1, 3, 64, 64)
    data["inputs"] = scene + 0.1 * data["inputs"]  # (B, T, 3, 64, 64)
    first, last = learn_fixed_batch(conv_world_model(), data, 30)
    assert last < 0.5 * first


def test_conv_shapes():
    encoder = ConvEncoder(1, depth=4)
    assert encoder(torch.zeros(2, 3, 1, 64, 64)).shape == (2, 3, encoder.out_dim)
    assert ConvEncoder(3).out_dim == 1536  # DreamerV2: 384 x 2 x 2
    assert ConvDecoder(10, 1, depth=4)(torch.zeros(2, 3, 10)).shape == (2, 3, 1, 64, 64)
    with pytest.raises(ValueError, match="64x64"):
        encoder(torch.zeros(2, 3, 1, 84, 84))


def test_token_pieces_shapes_and_position_embedding():
    encoder = FlatViTEncoder(TOKEN_DIM, TOKENS, width=16, depth=1, heads=2)
    assert encoder(torch.zeros(2, 3, TOKENS, TOKEN_DIM)).shape == (2, 3, 16)
    decoder = TokenDecoder(7, TOKEN_DIM, TOKENS, width=16, depth=1, heads=2)
    assert decoder(torch.zeros(2, 3, 7)).shape == (2, 3, TOKENS, TOKEN_DIM)
    pos = token_pos_embed(16, 65)
    assert pos.shape == (65, 16) and torch.all(pos[0] == 0)  # cls token: no position
    assert len({tuple(row.tolist()) for row in pos[1:]}) == 64  # grid positions distinct
    with pytest.raises(ValueError):
        token_pos_embed(16, 7)


@pytest.mark.parametrize("state", ["token", "broadcast", "slots"])
def test_token_decoder_state_enters_as_one_token_or_in_every_slot(state):
    """token (MWM): the transformer reads the projected state as an extra first token and
    the L slots are mask + position; broadcast: no extra token, the state is added to
    every slot; slots: each slot adds its own linear map of the state."""
    torch.manual_seed(0)
    decoder = TokenDecoder(7, TOKEN_DIM, TOKENS, width=16, depth=1, heads=2, state=state)
    seen = []
    decoder.transformer.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    feat = torch.randn(2, 3, 7)
    assert decoder(feat).shape == (2, 3, TOKENS, TOKEN_DIM)
    state_row = decoder.proj(feat.reshape(6, 7)).reshape(6, -1, 16)  # (6, 1 or L, 16)
    slots = decoder.mask_token + decoder.pos  # (1, L, 16)
    if state == "slots":  # one map per slot: slot i's input depends on feat through rows i*16..(i+1)*16
        assert state_row.shape == (6, TOKENS, 16)
        with torch.no_grad():
            decoder.proj.weight[3 * 16:4 * 16].zero_()
            decoder.proj.bias[3 * 16:4 * 16].zero_()
        seen.clear()
        decoder(feat)
        assert torch.allclose(seen[0][:, 3], slots[0, 3].expand(6, -1))  # slot 3 no longer reads the state
        assert not torch.allclose(seen[0][:, 4], slots[0, 4].expand(6, -1))
        state_row = decoder.proj(feat.reshape(6, 7)).reshape(6, -1, 16)
    if state == "token":
        assert seen[0].shape == (6, TOKENS + 1, 16)
        assert torch.allclose(seen[0][:, :1], state_row) and torch.allclose(seen[0][:, 1:], slots.expand(6, -1, -1))
    else:
        assert seen[0].shape == (6, TOKENS, 16)
        assert torch.allclose(seen[0], slots + state_row)
    with pytest.raises(ValueError, match="wm.dec_state"):
        TokenDecoder(7, TOKEN_DIM, TOKENS, width=16, depth=1, heads=2, state="tokens")


def test_open_loop_ignores_observations_after_the_context():
    model = token_world_model()
    data = batch((TOKENS, TOKEN_DIM))
    context = 2
    torch.manual_seed(4)
    pred = model.decode_open_loop(data["inputs"], data["action"], data["is_first"], context)
    changed = data["inputs"].clone()
    changed[:, context:] += 10.0
    torch.manual_seed(4)
    pred_changed = model.decode_open_loop(changed, data["action"], data["is_first"], context)
    assert pred.shape == (B, T, TOKENS, TOKEN_DIM)
    assert torch.allclose(pred, pred_changed)
    # the observed part follows the inputs
    changed[:, 0] -= 20.0
    torch.manual_seed(4)
    pred_first = model.decode_open_loop(changed, data["action"], data["is_first"], context)
    assert not torch.allclose(pred[:, 0], pred_first[:, 0])
    with pytest.raises(ValueError):
        model.decode_open_loop(data["inputs"], data["action"], data["is_first"], T + 1)


def test_decoder_without_loss_is_rejected():
    with pytest.raises(ValueError, match="loss"):
        WorldModel(torch.nn.Identity(), torch.nn.Identity(), 4, A, RSSM)
    with pytest.raises(ValueError, match="RSSM"):
        WorldModel(torch.nn.Identity(), ConvDecoder(48, 1, 4), 4, A, {**RSSM, "deterministic": 3})


def test_token_loss_balance_does_not_depend_on_token_width():
    """A preset's token width must not change the weight of reconstruction against the KL:
    tokens of width 32 carrying the same per-channel error as width-256 tokens score the
    same, and at the official width 256 the loss is official MWM's sum over channels."""
    torch.manual_seed(0)
    pred = torch.randn(2, 3, 5, 32)
    target = torch.randn(2, 3, 5, 32)
    wide_pred, wide_target = pred.repeat_interleave(8, dim=-1), target.repeat_interleave(8, dim=-1)  # D = 256
    narrow, wide = latent_recon_loss(pred, target), latent_recon_loss(wide_pred, wide_target)
    assert torch.allclose(narrow, wide, rtol=1e-5)
    assert torch.allclose(wide, ((wide_pred - wide_target) ** 2).sum(-1).mean(-1), rtol=1e-5)


def test_attend_pool_keeps_every_token_and_the_posterior_reads_them_beyond_their_mean():
    """wm.flat_pool attend: the encoder passes its L tokens on, and the posterior's read of
    them depends on more than their mean (which is all a mean-pooling encoder leaves)."""
    torch.manual_seed(0)
    mean = FlatViTEncoder(TOKEN_DIM, TOKENS, width=16, depth=1, heads=2)
    attend = FlatViTEncoder(TOKEN_DIM, TOKENS, width=16, depth=1, heads=2, pool="attend")
    attend.load_state_dict(mean.state_dict())
    assert (mean.embed_tokens, attend.embed_tokens, attend.out_dim) == (0, TOKENS, TOKENS * 16)
    inputs = batch((TOKENS, TOKEN_DIM))["inputs"]
    tokens = attend(inputs)  # (B, T, L * W)
    assert tokens.shape == (B, T, TOKENS * 16)
    assert torch.allclose(tokens.reshape(B, T, TOKENS, 16).mean(2), mean(inputs), atol=1e-6)
    with pytest.raises(ValueError, match="wm.flat_pool"):
        FlatViTEncoder(TOKEN_DIM, TOKENS, width=16, depth=1, heads=2, pool="max")

    torch.manual_seed(0)
    rssm = WorldModel(FlatViTEncoder(TOKEN_DIM, TOKENS, width=16, depth=1, heads=2, pool="attend"),
                      TokenDecoder(rssm_feat_dim(RSSM), TOKEN_DIM, TOKENS, width=16, depth=1, heads=2),
                      TOKENS * 16, A, RSSM, head_layers=1, head_units=32).rssm
    assert rssm.embed_tokens == TOKENS
    state = {key: value + torch.randn_like(value) for key, value in rssm.initial(B).items()}
    action, first = torch.zeros(B, A), torch.zeros(B)
    spread = torch.randn(B, TOKENS, 16)
    same_mean = spread - spread.mean(1, keepdim=True)  # two token sets with one mean: 0
    flipped = -same_mean
    logits = [rssm.obs_step(state, action, e.flatten(1), first)[0]["logits"] for e in (same_mean, flipped)]
    assert not torch.allclose(logits[0], logits[1], atol=1e-4)
    # The read is a set function: the same tokens in another order give the same posterior.
    order = torch.randperm(TOKENS)
    shuffled = rssm.obs_step(state, action, same_mean[:, order].flatten(1), first)[0]["logits"]
    assert torch.allclose(shuffled, logits[0], atol=1e-5)


def test_attend_pool_world_model_trains_the_attention_and_the_encoder():
    torch.manual_seed(0)
    encoder = FlatViTEncoder(TOKEN_DIM, TOKENS, width=16, depth=1, heads=2, pool="attend")
    decoder = TokenDecoder(rssm_feat_dim(RSSM), TOKEN_DIM, TOKENS, width=16, depth=1, heads=2)
    model = WorldModel(encoder, decoder, encoder.out_dim, A, RSSM, head_layers=1, head_units=32)
    data = batch((TOKENS, TOKEN_DIM))
    total, _, _ = model.loss(data["inputs"], data["action"], data["reward"], data["is_first"], data["is_terminal"])
    total.backward()
    for name in ("rssm.post_query.weight", "rssm.post_attn.to_kv.weight", "encoder.proj.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_slots_pool_generalises_the_mean_and_reads_where_a_token_is():
    """wm.flat_pool slots: one linear map per output token into a width-W embedding. With every
    map I / L it is the mean pool exactly; a trained map can tell which position holds a
    feature, which the mean of the same tokens cannot (the mean forgets the order)."""
    torch.manual_seed(0)
    mean = FlatViTEncoder(TOKEN_DIM, TOKENS, width=16, depth=1, heads=2)
    slots = FlatViTEncoder(TOKEN_DIM, TOKENS, width=16, depth=1, heads=2, pool="slots")
    missing = slots.load_state_dict(mean.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["pool.bias", "pool.weight"]
    assert (slots.embed_tokens, slots.out_dim) == (0, 16)
    with torch.no_grad():
        slots.pool.weight.copy_(torch.eye(16).repeat(1, TOKENS) / TOKENS)  # (W, L*W): V_i = I / L
        slots.pool.bias.zero_()
    inputs = batch((TOKENS, TOKEN_DIM))["inputs"]
    assert slots(inputs).shape == (B, T, 16)
    assert torch.allclose(slots(inputs), mean(inputs), atol=1e-6)

    # Order: the same output tokens at swapped positions have one mean but two slot embeddings.
    features = torch.randn(1, TOKENS, 16)
    swapped = features[:, torch.roll(torch.arange(TOKENS), 1)]
    assert torch.allclose(features.mean(1), swapped.mean(1), atol=1e-6)
    torch.nn.init.normal_(slots.pool.weight)
    assert not torch.allclose(slots.pool(features.flatten(1)), slots.pool(swapped.flatten(1)), atol=1e-3)


def test_slots_pool_world_model_trains_the_pool_and_keeps_the_embedding_width():
    torch.manual_seed(0)
    encoder = FlatViTEncoder(TOKEN_DIM, TOKENS, width=16, depth=1, heads=2, pool="slots")
    decoder = TokenDecoder(rssm_feat_dim(RSSM), TOKEN_DIM, TOKENS, width=16, depth=1, heads=2)
    model = WorldModel(encoder, decoder, encoder.out_dim, A, RSSM, head_layers=1, head_units=32)
    assert model.rssm.embed_tokens == 0 and model.embed_dim == 16
    data = batch((TOKENS, TOKEN_DIM))
    total, _, _ = model.loss(data["inputs"], data["action"], data["reward"], data["is_first"], data["is_terminal"])
    total.backward()
    for name in ("encoder.pool.weight", "encoder.proj.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
