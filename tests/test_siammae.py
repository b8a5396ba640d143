"""SiamMAE: asymmetric masking, cross-attention to the past frame, the loss, pairs, the agent."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from mwm.losses.siamese import future_frame_loss
from mwm.masking import keep_all
from mwm.optim import Optimizer
from mwm.siammae import SiameseMaskedAutoencoder, frame_pairs

L = 64  # 8x8 tokens, as MWM's 64x64 frames
KEPT = 3  # floor(64 * (1 - 0.95))


def tiny_siammae(**overrides) -> SiameseMaskedAutoencoder:
    """32x32 images, 2-conv stem (downsample 4) -> 8x8 = 64 tokens of width 16."""
    torch.manual_seed(0)
    kwargs = dict(in_channels=3, image_size=32, stem_channels=(4, 8), patch=4, width=16, depth=1, heads=2,
                  dec_width=16, dec_depth=1, dec_heads=2)
    kwargs.update(overrides)
    return SiameseMaskedAutoencoder(**kwargs)


def square_frames(n: int, shift: int, size: int = 32) -> torch.Tensor:
    """Black frames with one coloured 8x8 square each; ``shift`` moves it right (motion)."""
    images = torch.zeros(n, size, size, 3, dtype=torch.uint8)
    for i in range(n):
        top, left = (5 * i) % (size - 8), ((3 * i) % (size - 16)) + shift
        images[i, top : top + 8, left : left + 8, i % 3] = 255
    return images


def encoder_input_shapes(model, fn) -> list[tuple[int, ...]]:
    shapes = []
    hook = model.encoder.blocks[0].register_forward_hook(lambda mod, args, out: shapes.append(tuple(args[0].shape)))
    fn()
    hook.remove()
    return shapes


# ----------------------------------------------------------------- masking


def test_only_the_future_frame_is_masked():
    model = tiny_siammae()
    past, future = square_frames(2, 0), square_frames(2, 4)
    masking = model.mask_future(2, "cpu")
    shapes = encoder_input_shapes(model, lambda: model.pair_loss(past, future, torch.zeros(2), masking))
    assert shapes == [(2, 1 + L, 16), (2, 1 + KEPT, 16)]  # past: cls + all 64; future: cls + 3
    assert masking.mask.sum(dim=1).tolist() == [L - KEPT] * 2


def test_kept_count_at_095_and_masks_independent_per_pair():
    model = tiny_siammae()
    assert model.future_kept == KEPT
    masking = model.mask_future(16, "cpu", torch.Generator().manual_seed(0))
    assert masking.ids_keep.shape == (16, KEPT)
    assert len({tuple(row.tolist()) for row in masking.ids_keep}) > 1
    with pytest.raises(ValueError):
        tiny_siammae(mask_ratio=0.99)  # keeps no token of 64


def test_removed_future_pixels_never_reach_the_prediction():
    model = tiny_siammae(stem=False)  # pixel patches: no receptive field across patches
    past, future = square_frames(2, 0), square_frames(2, 4)
    masking = model.mask_future(2, "cpu", torch.Generator().manual_seed(1))
    removed = model.unpatchify(masking.mask[..., None].expand(2, L, 4 * 4 * 3)).movedim(1, -1) > 0  # (N, H, W, C)
    noisy = torch.where(removed, torch.randint_like(future, 0, 256), future)
    before, _ = model.predict_future(past, future, masking)
    after, _ = model.predict_future(past, noisy, masking)
    torch.testing.assert_close(before, after)


# ----------------------------------------------------------------- decoder


def test_cross_attention_keys_and_values_come_from_the_past_frame():
    model = tiny_siammae()
    past, future = square_frames(3, 0), square_frames(3, 4)
    masking = model.mask_future(3, "cpu")
    block = model.decoder.blocks[0]
    seen = {}
    hooks = [block.cross_attn.to_kv.register_forward_hook(lambda m, a, o: seen.__setitem__("kv", a[0])),
             block.cross_attn.to_q.register_forward_hook(lambda m, a, o: seen.__setitem__("q", a[0]))]
    model.predict_future(past, future, masking)
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        expected = block.norm_context(model.embed_context(model.encode(past, None)[0]))  # (N, 1 + L, Dd)
    torch.testing.assert_close(seen["kv"], expected)
    assert seen["q"].shape == (3, 1 + L + 1, 16)  # future cls + L slots + reward token


def test_prediction_depends_on_the_past_frame():
    model = tiny_siammae()
    future = square_frames(2, 4)
    masking = model.mask_future(2, "cpu")
    a, _ = model.predict_future(square_frames(2, 0), future, masking)
    b, _ = model.predict_future(square_frames(2, 8), future, masking)
    assert not torch.allclose(a, b)


def test_decode_without_context_reads_a_whole_frame():
    model = tiny_siammae()
    images = square_frames(2, 0)
    latents = model.features(images)  # (N, 1 + L, D), what the world model reads
    pixels, reward = model.decode(latents, keep_all(2, L, "cpu"))
    assert pixels.shape == (2, L, 4 * 4 * 3) and reward.shape == (2,)
    with pytest.raises(ValueError):
        model.embed_context(latents[:, :10])  # a context must be an unmasked frame


# ----------------------------------------------------------------- loss


def test_future_frame_loss_scores_only_the_future_frame():
    target = torch.randn(2, L, 12)
    mask = torch.zeros(2, L)
    mask[:, KEPT:] = 1.0
    pred = target.clone()
    pred[:, :KEPT] += 1.0  # wrong on the kept patches only
    assert torch.all(future_frame_loss(pred, target, mask, "masked", False) == 0)
    torch.testing.assert_close(future_frame_loss(pred, target, mask, "all", False), torch.full((2,), KEPT / L))


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    model = tiny_siammae()
    past, future = square_frames(8, 0), square_frames(8, 4)
    reward = torch.linspace(-1, 1, 8)
    masking = model.mask_future(8, "cpu", torch.Generator().manual_seed(0))
    opt = Optimizer("siammae", model.parameters(), lr=3e-3, warmup=0)
    losses = []
    for _ in range(40):
        loss, metrics = model.pair_loss(past, future, reward, masking)
        opt.step(loss)
        losses.append(float(loss.detach()))
    assert set(metrics) == {"siammae/pixel_loss", "siammae/reward_loss", "siammae/loss"}
    assert losses[-1] < 0.5 * losses[0], losses


def test_norm_pix_figures_undo_the_patch_normalisation():
    model = tiny_siammae(norm_pix=True)
    past, future = square_frames(2, 0), square_frames(2, 4)
    figure = model.reconstruct_pair(past, future)
    assert set(figure) == {"past", "future", "masked", "reconstruction", "pasted"}
    assert all(v.shape == future.shape and v.dtype == torch.uint8 for v in figure.values())
    kept = figure["masked"] != 128
    assert torch.equal(figure["pasted"][kept], future[kept])


# ----------------------------------------------------------------- pairs


def test_frame_pairs_take_frame_0_and_a_gap_in_range():
    b, t = 64, 4
    images = torch.arange(b * t, dtype=torch.int64).reshape(b, t, 1, 1, 1).expand(b, t, 2, 2, 1)
    reward = torch.arange(b * t, dtype=torch.float32).reshape(b, t)
    pairs = frame_pairs({"image": images, "reward": reward}, 1, 3, torch.Generator().manual_seed(0))
    assert set(pairs.gap.tolist()) == {1, 2, 3}
    rows = torch.arange(b)
    assert torch.equal(pairs.past[:, 0, 0, 0], rows * t)
    assert torch.equal(pairs.future[:, 0, 0, 0], rows * t + pairs.gap)
    assert torch.equal(pairs.future_reward, (rows * t + pairs.gap).float())
    with pytest.raises(ValueError):
        frame_pairs({"image": images, "reward": reward}, 0, 3)
    with pytest.raises(ValueError):
        frame_pairs({"image": images, "reward": reward}, 3, 2)
    with pytest.raises(ValueError):
        frame_pairs({"image": images, "reward": reward}, 1, 4)  # needs 5 steps


# ----------------------------------------------------------------- the agent


def toy_episode(steps: int, actions: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    action = np.eye(actions, dtype=np.float32)[rng.integers(actions, size=steps)]
    action[0] = 0.0
    return {
        "image": rng.integers(0, 256, (steps, 64, 64, 3), dtype=np.uint8),
        "action": action,
        "reward": rng.normal(size=steps).astype(np.float32),
        "is_first": np.arange(steps) == 0,
        "is_last": np.arange(steps) == steps - 1,
        "is_terminal": np.zeros(steps, dtype=bool),
    }


def test_agent_updates_reports_and_round_trips(tmp_path):
    from agents.registry import make_agent
    from mwm import config
    from replay import Replay

    torch.manual_seed(0)
    cfg = config.build("toy_catch", "siammae", "tiny")
    obs_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)})
    agent = make_agent(cfg, obs_space, gym.spaces.Discrete(3), torch.device("cpu"))
    replay = Replay(str(tmp_path / "replay"), capacity=1000, seed=0)
    for seed in range(2):
        replay.add_episode(toy_episode(20, 3, seed))
    before = [p.detach().clone() for p in agent.representation.mae.parameters()]
    metrics = agent.update(replay)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values())
    for key in ("siammae/pixel_loss", "siammae/gap", "mae/grad_norm", "wm/kl_loss", "ac/actor_loss"):
        assert key in metrics
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.representation.mae.parameters()))
    media = agent.report(replay)
    from mwm.representations.mae import FIGURE_GAP, FIGURE_LABELS

    rows, pairs = 5, 8  # past | future | masked | reconstruction | pasted, of 8 pairs
    assert media["siammae/past_future_masked_reconstruction"].shape == (
        rows * 64 + (rows - 1) * FIGURE_GAP, FIGURE_LABELS + pairs * 64 + (pairs - 1) * FIGURE_GAP, 3)
    assert "wm/open_loop" in media
    obs = {"image": torch.zeros(2, 64, 64, 3, dtype=torch.uint8), "is_first": torch.ones(2, dtype=torch.bool)}
    action, _ = agent.policy(obs, None, "eval")
    assert action.shape == (2, 3)
    clone = make_agent(cfg, obs_space, gym.spaces.Discrete(3), torch.device("cpu"))
    clone.load_state_dict(agent.state_dict())
    assert clone.rep_opt.updates == agent.rep_opt.updates == 1
    agent.close()
