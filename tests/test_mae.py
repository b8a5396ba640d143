"""Masked autoencoder: what the encoder sees, decoder outputs, losses, training, figures."""

import pytest
import torch

from mwm.losses.representation import mae_pixel_loss, mae_reward_loss, normalize_patches
from mwm.mae import GREY, MaskedAutoencoder
from mwm.masking import keep_all, random_masking
from mwm.stem import ConvStem, PatchEmbed, deprocess, preprocess
from mwm.transforms import symexp, symlog

TINY = dict(width=32, depth=1, heads=2, dec_width=32, dec_depth=1, dec_heads=2)


def tiny_mae(**overrides) -> MaskedAutoencoder:
    """16x16 images, 2-conv stem (downsample 4) -> 4x4 = 16 tokens of width 32."""
    torch.manual_seed(0)
    kwargs = dict(in_channels=3, image_size=16, stem_channels=(8, 16), patch=4, **TINY)
    kwargs.update(overrides)
    return MaskedAutoencoder(**kwargs)


def random_images(n: int, size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, channels), generator=gen, dtype=torch.uint8)


def square_images(n: int, size: int = 16) -> torch.Tensor:
    """Black frames with one coloured square each, at a different place per frame."""
    images = torch.zeros(n, size, size, 3, dtype=torch.uint8)
    for i in range(n):
        top, left = (3 * i) % (size - 5), (5 * i) % (size - 5)
        images[i, top : top + 5, left : left + 5, i % 3] = 255
    return images


def encoder_input_shapes(model: MaskedAutoencoder, images, masking) -> list[tuple[int, ...]]:
    shapes = []
    hook = model.encoder.blocks[0].register_forward_hook(lambda mod, args, out: shapes.append(tuple(args[0].shape)))
    model.encode(images, masking)
    hook.remove()
    return shapes


# ----------------------------------------------------------------- stem and pixels


def test_preprocess_standardises_and_deprocess_inverts():
    images = random_images(2)
    x = preprocess(images)
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    expected = (images[0, 3, 5, 1] / 255 - 0.456) / 0.224  # channel 1 of pixel (3, 5)
    torch.testing.assert_close(x[0, 1, 3, 5], expected)
    assert torch.equal(deprocess(x), images)
    gray = random_images(2, channels=1)
    torch.testing.assert_close(preprocess(gray)[0, 0, 0, 0], (gray[0, 0, 0, 0] / 255 - 0.449) / 0.226)
    assert torch.equal(deprocess(preprocess(gray)), gray)
    with pytest.raises(ValueError):
        preprocess(random_images(1, channels=2))


def test_stem_and_patch_embed_give_64_tokens_for_64x64():
    x = preprocess(random_images(2, size=64))
    assert ConvStem(3, (32, 64, 128), width=24)(x).shape == (2, 64, 24)
    assert PatchEmbed(3, patch=8, width=24)(x).shape == (2, 64, 24)


def test_patch_embed_tokens_are_row_major_patches():
    embed = PatchEmbed(3, patch=4, width=8)
    x = torch.zeros(1, 3, 16, 16)
    x[0, :, 4:8, 8:12] = 1.0  # patch at row 1, column 2 -> token 1 * 4 + 2 = 6
    changed = (embed(x) - embed(torch.zeros_like(x))).abs().sum(-1)[0]
    assert changed.nonzero().flatten().tolist() == [6]


def test_patchify_layout_and_round_trip():
    model = tiny_mae()
    x = torch.randn(2, 3, 16, 16)
    patches = model.patchify(x)
    assert patches.shape == (2, 16, 4 * 4 * 3)
    # Patch 1 is rows 0-3, columns 4-7, flattened as (row, column, channel).
    torch.testing.assert_close(patches[:, 1], x[:, :, 0:4, 4:8].permute(0, 2, 3, 1).reshape(2, -1))
    torch.testing.assert_close(model.unpatchify(patches), x)


# ----------------------------------------------------------------- encoder


def test_mae_encoder_sees_only_kept_tokens_plus_cls():
    model = tiny_mae()
    masking = random_masking(3, 16, 0.75, "cpu", torch.Generator().manual_seed(0))
    assert encoder_input_shapes(model, random_images(3), masking) == [(3, 1 + 4, 32)]
    latents, used = model.encode(random_images(3), masking)
    assert latents.shape == (3, 5, 32) and used is masking


def test_simmim_encoder_sees_all_tokens_plus_cls():
    model = tiny_mae(simmim=True)
    masking = random_masking(3, 16, 0.75, "cpu", torch.Generator().manual_seed(0))
    assert encoder_input_shapes(model, random_images(3), masking) == [(3, 1 + 16, 32)]
    pixels, reward = model.decode(model.encode(random_images(3), masking)[0], masking)
    assert pixels.shape == (3, 16, 48) and reward.shape == (3,)


@pytest.mark.parametrize("simmim", [False, True])
def test_removed_patches_do_not_reach_the_encoder(simmim):
    """With pixel patches (no overlapping stem), changing removed pixels changes nothing."""
    model = tiny_mae(stem=False, simmim=simmim)
    images = random_images(2)
    masking = random_masking(2, 16, 0.75, "cpu", torch.Generator().manual_seed(0))
    removed = model.unpatchify(masking.mask[..., None].expand(-1, -1, 48)).movedim(1, -1) > 0
    noisy = torch.where(removed, random_images(2, seed=1), images)
    torch.testing.assert_close(model.encode(noisy, masking)[0], model.encode(images, masking)[0])
    visible_changed = torch.where(removed, images, random_images(2, seed=1))
    assert not torch.allclose(model.encode(visible_changed, masking)[0], model.encode(images, masking)[0])


def test_features_are_the_unmasked_encoding():
    model = tiny_mae()
    images = random_images(2)
    features = model.features(images)
    assert features.shape == (2, 1 + 16, 32)
    torch.testing.assert_close(features, model.encode(images, keep_all(2, 16, "cpu"))[0])


def test_default_model_matches_mwm_sizes():
    model = MaskedAutoencoder(3)
    assert model.num_tokens == 64
    assert len(model.encoder.blocks) == 4 and len(model.decoder.blocks) == 3
    assert model.pixel_head.out_features == 8 * 8 * 3
    assert "pos_embed" not in dict(model.named_parameters())
    latents, _ = model.encode(random_images(2, size=64), random_masking(2, 64, 0.75, "cpu"))
    assert latents.shape == (2, 17, 256)


def test_user_errors_for_bad_inputs_and_settings():
    model = tiny_mae()
    with pytest.raises(ValueError, match="expects images"):
        model.encode(random_images(2, size=32), None)
    with pytest.raises(ValueError, match="uint8"):
        model.encode(random_images(2).float() / 255, None)
    with pytest.raises(ValueError, match="masking"):
        model.encode(random_images(2), random_masking(3, 16, 0.5, "cpu"))
    with pytest.raises(ValueError, match="stem"):
        MaskedAutoencoder(3, image_size=16, stem_channels=(8, 16, 32), patch=4, **TINY)
    with pytest.raises(ValueError, match="loss_on"):
        tiny_mae(loss_on="visible")


# ----------------------------------------------------------------- losses


def test_masked_loss_ignores_visible_patches():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 16, 12, generator=gen), torch.randn(2, 16, 12, generator=gen)
    mask = random_masking(2, 16, 0.75, "cpu", gen).mask
    visible, removed = pred.clone(), pred.clone()
    visible[mask == 0] += 5.0
    removed[mask == 1] += 5.0
    base = mae_pixel_loss(pred, target, mask, "masked", False)
    assert base.shape == (2,)
    torch.testing.assert_close(mae_pixel_loss(visible, target, mask, "masked", False), base)
    assert torch.all(mae_pixel_loss(removed, target, mask, "masked", False) > base)
    assert torch.all(mae_pixel_loss(visible, target, mask, "all", False) > mae_pixel_loss(pred, target, mask, "all", False))
    expected = ((pred - target) ** 2).mean(-1)
    torch.testing.assert_close(mae_pixel_loss(pred, target, mask, "all", False), expected.mean(-1))


def test_norm_pix_target_is_per_patch_standardised():
    target = torch.randn(2, 16, 12) * 3 + 7
    normed = normalize_patches(target)
    torch.testing.assert_close(normed.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed.var(-1), torch.ones(2, 16), atol=1e-3, rtol=0)
    mask = torch.ones(2, 16)
    torch.testing.assert_close(mae_pixel_loss(normed, target, mask, "all", True), torch.zeros(2), atol=1e-8, rtol=0)
    assert torch.all(mae_pixel_loss(target, target, mask, "all", True) > 1.0)


def test_reward_loss_is_squared_error_to_symlog_reward():
    reward = torch.tensor([0.0, torch.e - 1.0, -10.0])
    torch.testing.assert_close(mae_reward_loss(symlog(reward), reward), torch.zeros(3))
    torch.testing.assert_close(mae_reward_loss(torch.zeros(3), reward)[1], torch.tensor(1.0))
    torch.testing.assert_close(symexp(symlog(reward)), reward)


def test_loss_combines_terms_with_reward_scale():
    images, rewards = random_images(4), torch.tensor([0.0, 1.0, -2.0, 5.0])
    masking = random_masking(4, 16, 0.75, "cpu", torch.Generator().manual_seed(0))
    loss, metrics = tiny_mae(reward_scale=2.0).loss(images, rewards, masking)
    assert set(metrics) == {"mae/pixel_loss", "mae/reward_loss", "mae/loss"}
    assert all(not value.requires_grad for value in metrics.values())
    torch.testing.assert_close(loss.detach(), metrics["mae/pixel_loss"] + 2.0 * metrics["mae/reward_loss"])
    _, no_reward = tiny_mae(reward_head=False).loss(images, None, masking)
    assert no_reward["mae/reward_loss"] == 0


# ----------------------------------------------------------------- training


@pytest.mark.parametrize("stem", [True, False])
def test_loss_falls_on_a_fixed_batch(stem, one_thread):
    model = tiny_mae(stem=stem)
    images, rewards = square_images(8), torch.linspace(-1, 1, 8)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss, _ = model.loss(images, rewards, random_masking(8, 16, 0.5, "cpu", gen))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_gradients_reach_the_stem_and_every_parameter():
    model = tiny_mae()
    masking = random_masking(4, 16, 0.75, "cpu", torch.Generator().manual_seed(0))
    loss, _ = model.loss(random_images(4), torch.ones(4), masking)
    loss.backward()
    assert model.embed.net[0].weight.grad.abs().sum() > 0
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


# ----------------------------------------------------------------- figures


@pytest.mark.parametrize("norm_pix", [False, True])
def test_reconstruct_figures(norm_pix):
    model = tiny_mae(norm_pix=norm_pix)
    images = random_images(2)
    masking = random_masking(2, 16, 0.75, "cpu", torch.Generator().manual_seed(0))
    figures = model.reconstruct(images, masking)
    assert set(figures) == {"input", "masked", "reconstruction", "pasted"}
    assert all(f.shape == images.shape and f.dtype == torch.uint8 for f in figures.values())
    removed = model.unpatchify(masking.mask[..., None].expand(-1, -1, 48)).movedim(1, -1) > 0
    assert torch.equal(figures["input"], images)
    assert torch.all(figures["masked"][removed] == GREY)
    assert torch.equal(figures["masked"][~removed], images[~removed])
    assert torch.equal(figures["pasted"][~removed], images[~removed])
    assert torch.equal(figures["pasted"][removed], figures["reconstruction"][removed])
