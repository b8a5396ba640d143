"""Running token standardisation (wm.token_norm): statistics, inverse, and where the agent updates them."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from mwm.token_norm import TokenStandardizer


def test_first_update_sets_the_batch_statistics_and_centres_with_one_scale():
    torch.manual_seed(0)
    spread = torch.tensor([0.01, 1.0, 3.0, 10.0])
    tokens = torch.randn(500, 3, 4) * spread + 5.0  # (N, L, D)
    norm = TokenStandardizer(3, 4, decay=0.9)
    norm.update(tokens)
    torch.testing.assert_close(norm.mean, tokens.mean(0))
    torch.testing.assert_close(norm.var, tokens.var(0, unbiased=False))
    out = norm(tokens)
    # every entry is centred; all share one scale, so the mean variance becomes 1 ...
    torch.testing.assert_close(out.mean(0), torch.zeros(3, 4), atol=1e-4, rtol=0)
    assert out.var(0, unbiased=False).mean().item() == pytest.approx(1.0, rel=1e-4)
    # ... and the entries keep their relative spread: a near-constant one is not amplified
    std = out.std(0, unbiased=False).mean(0)  # (D,)
    torch.testing.assert_close(std / std[-1], spread / spread[-1], atol=2e-3, rtol=0.05)
    assert std[0] < 0.01
    torch.testing.assert_close(norm.inverse(out), tokens, atol=1e-4, rtol=0)


def test_later_updates_are_an_ema_of_mean_and_variance():
    torch.manual_seed(1)
    batches = [torch.randn(64, 2, 3) * (i + 1) + i for i in range(4)]  # shifting statistics
    norm = TokenStandardizer(2, 3, decay=0.75)
    for x in batches:
        norm.update(x)
    # reference: the same EMA written out with numpy, mixing variances and the mean shift
    mean = batches[0].numpy().mean(0)
    var = batches[0].numpy().var(0)
    for x in batches[1:]:
        w = 0.25
        m, v = x.numpy().mean(0), x.numpy().var(0)
        delta = m - mean
        mean = mean + w * delta
        var = (1 - w) * var + w * v + w * (1 - w) * delta ** 2
    np.testing.assert_allclose(norm.mean.numpy(), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(norm.var.numpy(), var, rtol=1e-5, atol=1e-5)
    assert norm.count.item() == 4


def test_ema_of_two_equal_sized_halves_recovers_the_pooled_variance():
    # decay 0.5: the second half weighs as much as the first, so the result is the pooled statistics
    torch.manual_seed(2)
    a, b = torch.randn(100, 1, 2), torch.randn(100, 1, 2) * 3 + 4
    norm = TokenStandardizer(1, 2, decay=0.5)
    norm.update(a)
    norm.update(b)
    both = torch.cat([a, b])
    torch.testing.assert_close(norm.mean, both.mean(0))
    torch.testing.assert_close(norm.var, both.var(0, unbiased=False))


def _agent(token_norm: bool):
    from agents.registry import make_agent
    from mwm import config

    torch.manual_seed(0)
    cfg = config.build("toy_catch", "mwm", "tiny", [f"wm.token_norm={str(token_norm).lower()}"])
    obs_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)})
    return cfg, obs_space, make_agent(cfg, obs_space, gym.spaces.Discrete(3), torch.device("cpu"))


def test_agent_updates_statistics_in_training_only_and_checkpoints_them(tmp_path):
    from agents.registry import make_agent
    from replay import Replay
    from tests.test_siammae import toy_episode

    cfg, obs_space, agent = _agent(True)
    replay = Replay(str(tmp_path / "replay"), capacity=1000, seed=0)
    for seed in range(2):
        replay.add_episode(toy_episode(20, 3, seed))
    obs = {"image": torch.randint(0, 255, (2, 64, 64, 3), dtype=torch.uint8), "is_first": torch.ones(2, dtype=torch.bool)}
    agent.policy(obs, None, "train")
    assert agent.representation.token_norm.count.item() == 0  # acting reads the statistics, never changes them
    agent.update(replay)
    assert agent.representation.token_norm.count.item() == 1
    mean = agent.representation.token_norm.mean.clone()
    # the world model reads standardised tokens: the training batch's entries are centred
    images = torch.as_tensor(replay.sample(4, 8)["image"])
    inputs = agent.representation.inputs(images)
    raw = agent.representation.mae.features(images.flatten(0, 1))
    torch.testing.assert_close(inputs.flatten(0, 1), agent.representation.token_norm(raw))
    # decoding predicted tokens to pixels undoes the standardisation first
    # (uint8 pixels: the inverse's float round-off may move a value across a rounding edge by one level)
    torch.testing.assert_close(agent.representation.to_images(inputs).float(), _decode_raw(agent, raw, images.shape[:2]).float(),
                               atol=1.0, rtol=0.0)
    clone = make_agent(cfg, obs_space, gym.spaces.Discrete(3), torch.device("cpu"))
    clone.load_state_dict(agent.state_dict())
    torch.testing.assert_close(clone.representation.token_norm.mean, mean)
    assert clone.representation.token_norm.count.item() == 1
    agent.close()


def _decode_raw(agent, raw, lead):
    agent_norm, agent.representation.token_norm = agent.representation.token_norm, None
    try:
        return agent.representation.to_images(raw.reshape(*lead, *raw.shape[1:]))
    finally:
        agent.representation.token_norm = agent_norm


def test_off_by_default_reads_the_raw_tokens():
    _, _, agent = _agent(False)
    assert agent.representation.token_norm is None
    images = torch.randint(0, 255, (1, 2, 64, 64, 3), dtype=torch.uint8)
    torch.testing.assert_close(agent.representation.inputs(images, train=True)[0], agent.representation.mae.features(images[0]))


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5])
def test_bad_decay_fails_at_start_up_naming_the_key(decay):
    from mwm import config
    from mwm.errors import UserError

    with pytest.raises(UserError, match="wm.token_norm_decay"):
        config.build("toy_catch", "mwm", "tiny", [f"wm.token_norm_decay={decay}"])
