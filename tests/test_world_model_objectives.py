"""Options beyond the paper (default off): change-weighted reconstruction, a reward head
on the encoder's output and the reward loss on the prior's features (mwm/losses/dynamics.py,
mwm/world_model.py)."""

import pytest
import torch

from mwm.losses.dynamics import (change_weights, embed_reward_loss, image_recon_loss, latent_recon_loss,
                                 prior_reward_loss, reward_loss)
from tests.test_world_model import TOKEN_DIM, TOKENS, B, T, batch, conv_world_model, token_world_model


def first_flags(batch_size: int, steps: int) -> torch.Tensor:
    is_first = torch.zeros(batch_size, steps, dtype=torch.bool)
    is_first[:, 0] = True
    return is_first


def test_change_weights_are_one_for_a_uniform_change():
    # every token moves by the same amount between frames: no token is preferred
    base = torch.randn(1, 1, 6, 8)
    target = torch.cat([base, base + 0.5, base + 1.0], dim=1)  # (1, 3, 6, 8)
    weights = change_weights(target, first_flags(1, 3), mix=1.0, channel_dim=-1)
    assert weights.shape == (1, 3, 6)
    assert torch.allclose(weights, torch.ones_like(weights))


def test_change_weights_upweight_what_changed_and_average_to_one():
    torch.manual_seed(0)
    frame = torch.randn(2, 1, 6, 8)
    moved = frame.clone()
    moved[:, :, 2] += 1.0  # only token 2 changes
    target = torch.cat([frame, moved], dim=1)  # (2, 2, 6, 8)
    weights = change_weights(target, first_flags(2, 2), mix=0.9, channel_dim=-1)  # (2, 2, 6)
    assert torch.allclose(weights[:, 0], torch.ones(2, 6))  # no previous frame: uniform
    assert torch.allclose(weights[:, 1].mean(-1), torch.ones(2))
    assert torch.allclose(weights[:, 1, 2], torch.full((2,), 0.1 + 0.9 * 6))
    assert torch.allclose(weights[:, 1, [0, 1, 3, 4, 5]], torch.full((2, 5), 0.1))
    assert torch.allclose(change_weights(target, first_flags(2, 2), mix=0.0, channel_dim=-1), torch.ones(2, 2, 6))


def test_change_weights_reset_at_episode_starts_and_static_frames():
    torch.manual_seed(0)
    target = torch.randn(1, 3, 4, 5)
    target[:, 2] = target[:, 1]  # nothing changes at step 2
    is_first = torch.tensor([[True, True, False]])  # step 1 starts a new episode
    weights = change_weights(target, is_first, mix=1.0, channel_dim=-1)
    assert torch.allclose(weights, torch.ones(1, 3, 4))


def test_change_weights_per_pixel_for_images():
    frames = torch.zeros(1, 2, 3, 4, 4)  # (B, T, C, H, W)
    frames[0, 1, :, 1, 2] = 1.0  # one pixel lights up in all channels
    weights = change_weights(frames, first_flags(1, 2), mix=1.0, channel_dim=-3)
    assert weights.shape == (1, 2, 4, 4)
    assert weights[0, 1, 1, 2] == 16.0 and weights[0, 1].sum() == 16.0
    with pytest.raises(ValueError, match="mix"):
        change_weights(frames, first_flags(1, 2), mix=1.5, channel_dim=-3)


def test_weighted_recon_losses_reduce_to_the_paper_at_unit_weight():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    assert torch.allclose(latent_recon_loss(pred, target, torch.ones(2, 3, 5)), latent_recon_loss(pred, target))
    weight = torch.zeros(2, 3, 5)
    weight[..., 1] = 5.0
    expected = 256 * ((pred[..., 1, :] - target[..., 1, :]) ** 2).mean(-1)  # 5 * (1 / 5) of token 1
    assert torch.allclose(latent_recon_loss(pred, target, weight), expected, rtol=1e-5)
    images, truth = torch.randn(2, 3, 3, 4, 4), torch.randn(2, 3, 3, 4, 4)
    assert torch.allclose(image_recon_loss(images, truth, torch.ones(2, 3, 4, 4)), image_recon_loss(images, truth))


def test_change_weighting_in_the_world_model():
    data = batch((TOKENS, TOKEN_DIM))
    uniform, changed = token_world_model(), token_world_model(recon_weight="change", recon_change_mix=1.0)
    torch.manual_seed(3)
    plain, _, _ = uniform.losses(**data)
    torch.manual_seed(3)
    weighted, _, _ = changed.losses(**data)
    assert torch.allclose(plain["recon"][:, 0], weighted["recon"][:, 0])  # first steps: uniform weights
    assert not torch.allclose(plain["recon"][:, 1:], weighted["recon"][:, 1:])
    conv = conv_world_model()
    conv.recon_weight = "change"
    terms, _, _ = conv.losses(**batch((3, 64, 64)))
    assert terms["recon"].shape == (B, T)
    with pytest.raises(ValueError, match="recon_weight"):
        token_world_model(recon_weight="pixels")


def test_embed_reward_loss_is_the_reward_loss_on_its_own_head():
    pred, reward = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.allclose(embed_reward_loss(pred, reward, "symlog"), reward_loss(pred, reward, "symlog"))


def test_embed_reward_head_is_off_at_scale_zero():
    model = token_world_model()
    assert model.embed_reward_head is None and "embed_reward" not in model.loss_scales
    terms, _, _ = model.losses(**batch((TOKENS, TOKEN_DIM)))
    assert "embed_reward" not in terms


def encoder_grad_of_embed_reward(model) -> torch.Tensor:
    """Gradient of the embed-reward term alone (times its scale) on the encoder's input projection."""
    terms, _, _ = model.losses(**batch((TOKENS, TOKEN_DIM)))
    model.zero_grad()
    (model.loss_scales["embed_reward"] * terms["embed_reward"].mean()).backward()
    return model.encoder.proj.weight.grad


def test_embed_reward_gradient_reaches_the_encoder_without_the_rssm():
    model = token_world_model(embed_reward_scale=2.0)
    assert model.loss_scales["embed_reward"] == 2.0
    grad = encoder_grad_of_embed_reward(model)
    assert grad is not None and grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.rssm.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.reward_head.parameters())
    # the total includes the term at its scale
    data = batch((TOKENS, TOKEN_DIM))
    torch.manual_seed(3)
    total, _, metrics = model.loss(**data)
    torch.manual_seed(3)
    terms, _, _ = model.losses(**data)
    expected = sum(model.loss_scales[name] * value.mean() for name, value in terms.items())
    assert torch.allclose(total, expected) and "embed_reward_loss" in metrics


def test_embed_reward_changes_the_encoder_gradient_only_when_on():
    data = batch((TOKENS, TOKEN_DIM))

    def encoder_grad(model):
        model.zero_grad()
        torch.manual_seed(3)
        total, _, _ = model.loss(**data)
        total.backward()
        return model.encoder.proj.weight.grad.clone()

    off, on = token_world_model(), token_world_model(embed_reward_scale=1.0)
    # same seed, same encoder/RSSM/decoder initialisation (the extra head is built last)
    assert torch.equal(off.encoder.proj.weight, on.encoder.proj.weight)
    assert not torch.allclose(encoder_grad(off), encoder_grad(on))


def reward_grads_on_the_prior_layer(model) -> torch.Tensor:
    """Gradient of the reward terms alone on the RSSM's prior output layer (img_out)."""
    torch.manual_seed(3)
    terms, _, _ = model.losses(**batch((TOKENS, TOKEN_DIM)))
    model.zero_grad()
    sum(model.loss_scales[name] * terms[name].mean() for name in terms if name.endswith("reward")).backward()
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                      for p in model.rssm.img_out.parameters()])


def test_prior_reward_loss_trains_the_reward_head_on_what_imagination_reads():
    """Off (the paper): the reward loss reads the posterior, so the layer that makes the
    prior's latent gets no reward gradient. On: the same head also reads the prior's
    features, and the reward's gradient reaches that layer."""
    pred, reward = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.allclose(prior_reward_loss(pred, reward, "symlog"), reward_loss(pred, reward, "symlog"))
    off, on = token_world_model(), token_world_model(prior_reward_scale=0.5)
    assert "prior_reward" not in off.loss_scales and on.loss_scales["prior_reward"] == 0.5
    assert reward_grads_on_the_prior_layer(off).abs().sum() == 0
    assert reward_grads_on_the_prior_layer(on).abs().sum() > 0
    # the term is the reward head's loss on the prior's features
    torch.manual_seed(3)
    terms, _, prior = on.losses(**batch((TOKENS, TOKEN_DIM)))
    expected = reward_loss(on.reward_head(on.feature(prior)), batch((TOKENS, TOKEN_DIM))["reward"])
    assert torch.allclose(terms["prior_reward"], expected)
    with pytest.raises(ValueError, match="prior_reward_scale"):
        token_world_model(prior_reward_scale=-1.0)
