"""CURL baseline: contrastive loss, EMA, C51 projection, n-step transitions, PER, SAC losses, agent."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from agents.curl.agent import CurlAgent, annealed_beta
from agents.curl.augment import center_crop, crop_at, random_crop, random_shift
from agents.curl.checks import check_atari100k
from agents.curl.contrastive import BilinearSimilarity, ema_update
from agents.curl.frames import push_frame, to_channels
from agents.curl.losses import (c51_loss, categorical_projection, contrastive_logits, info_nce_loss,
                                sac_actor_loss, sac_critic_loss, sac_critic_target, sac_temperature_loss)
from agents.curl.sac import squashed_gaussian_sample
from mwm import config
from mwm.errors import UserError
from replay import Replay
from replay.transitions import SumTree, TransitionSampler, frame_stack


def make_episode(length, rng, size=8, channels=1, actions=3, terminal=True, start=0):
    """An episode whose frame t is filled with the value start + t (so frames are identifiable)."""
    values = (start + np.arange(length)) % 256
    image = np.broadcast_to(values[:, None, None, None], (length, size, size, channels)).astype(np.uint8)
    return {"image": image.copy(),
            "action": np.eye(actions, dtype=np.float32)[rng.integers(0, actions, length)],
            "reward": rng.normal(size=length).astype(np.float32),
            "is_first": np.arange(length) == 0, "is_last": np.arange(length) == length - 1,
            "is_terminal": (np.arange(length) == length - 1) & terminal}


def make_replay(tmp_path, episodes, capacity=10_000):
    replay = Replay(str(tmp_path / "replay"), capacity=capacity, seed=0)
    for episode in episodes:
        replay.add_episode(episode, save=False)
    return replay


# ----------------------------------------------------------------------------- contrastive


def test_contrastive_logits_are_bilinear_with_row_max_removed():
    torch.manual_seed(0)
    q, k, w = torch.randn(5, 4), torch.randn(5, 4), torch.randn(4, 4)
    logits = contrastive_logits(q, k, w, scale=0.1)
    raw = torch.stack([torch.stack([q[i] @ w @ k[j] for j in range(5)]) for i in range(5)])
    assert torch.allclose(logits, 0.1 * (raw - raw.max(1, keepdim=True).values), atol=1e-5)
    assert torch.allclose(logits.max(1).values, torch.zeros(5))


def test_info_nce_positives_are_on_the_diagonal():
    logits = torch.tensor([[0.0, -5.0, -5.0], [-5.0, 0.0, -5.0], [-5.0, -5.0, 0.0]])
    matched = info_nce_loss(logits)
    shuffled = info_nce_loss(logits[[1, 2, 0]])  # each row's high logit is now off the diagonal
    assert matched.shape == (3,)
    assert torch.allclose(matched, -torch.log_softmax(logits, 1).diagonal())
    assert (matched < 0.02).all() and (shuffled > 4.9).all()


def test_contrastive_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    images = torch.rand(16, 2, 12, 12) * 255
    query = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 16))
    key = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 16)).requires_grad_(False)
    key.load_state_dict(query.state_dict())
    similarity = BilinearSimilarity(16)
    optimizer = torch.optim.Adam([*query.parameters(), *similarity.parameters()], lr=1e-2)
    anchor_crop, positive_crop = random_crop(images, 8), random_crop(images, 8)
    losses = []
    for _ in range(40):
        logits = contrastive_logits(query(anchor_crop / 255), key(positive_crop / 255), similarity.weight)
        loss = info_nce_loss(logits).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema_update(key.parameters(), query.parameters(), 0.05)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_ema_update_matches_the_formula():
    torch.manual_seed(0)
    target, source = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(target.parameters(), source.parameters(), 0.001)
    for old, new, src in zip(before, target.parameters(), source.parameters()):
        assert torch.allclose(new, 0.999 * old + 0.001 * src, atol=1e-7)


# ----------------------------------------------------------------------------- augmentation


def test_crops_cover_every_frame_of_a_stack_alike():
    torch.manual_seed(0)
    images = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).view(2, 3, 10, 10)
    out = crop_at(images, torch.tensor([0, 2]), torch.tensor([1, 3]), 4)
    assert torch.equal(out[0], images[0, :, 0:4, 1:5]) and torch.equal(out[1], images[1, :, 2:6, 3:7])
    assert random_crop(images, 6).shape == (2, 3, 6, 6)
    assert torch.equal(center_crop(images, 6), images[..., 2:8, 2:8])
    shifted = random_shift(images, 2)
    assert shifted.shape == images.shape
    # a shift of at most 2 pixels: each output pixel is an input pixel from the same channel
    for b in range(2):
        for c in range(3):
            assert set(shifted[b, c].unique().tolist()) <= set(images[b, c].unique().tolist())


# ----------------------------------------------------------------------------- C51


def test_categorical_projection_matches_a_hand_computation():
    support = torch.tensor([-1.0, 0.0, 1.0])
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5]])
    returns = torch.tensor([0.5, 0.3, 5.0])
    discounts = torch.tensor([0.5, 0.0, 0.9])
    target = categorical_projection(probs, returns, discounts, support)
    # row 0: Tz = (0, 0.5, 1): 0.2 -> atom 0.0; 0.3 split 0.15/0.15; 0.5 -> atom 1.0
    # row 1: terminal, Tz = 0.3 for every atom: 70% to 0.0 and 30% to 1.0
    # row 2: Tz clipped to v_max: all mass on 1.0
    expected = torch.tensor([[0.0, 0.35, 0.65], [0.0, 0.7, 0.3], [0.0, 0.0, 1.0]])
    assert torch.allclose(target, expected, atol=1e-6)
    loss = c51_loss(torch.log(probs), target)
    assert torch.allclose(loss, -(expected * torch.log(probs)).sum(1))


# ----------------------------------------------------------------------------- transitions


def test_frame_stack_repeats_the_first_frame():
    images = np.arange(5)[:, None, None, None] * np.ones((5, 2, 2, 1), np.uint8)
    assert frame_stack(images, 0, 4)[:, 0, 0, 0].tolist() == [0, 0, 0, 0]
    assert frame_stack(images, 2, 4)[:, 0, 0, 0].tolist() == [0, 0, 1, 2]
    assert frame_stack(images, 4, 4)[:, 0, 0, 0].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("terminal", [True, False])
def test_n_step_returns_match_a_hand_recursion(tmp_path, terminal):
    rng = np.random.default_rng(1)
    length, n, gamma = 7, 3, 0.9
    episode = make_episode(length, rng, terminal=terminal)
    other = make_episode(5, rng, start=100)
    sampler = TransitionSampler(make_replay(tmp_path, [other, episode]), 100, history=2, n_step=n,
                                discount=gamma, prioritized=False)
    assert sampler.sync() == (5 - 1) + (length - 1)
    r = episode["reward"]
    for t in range(length - 1):
        m = min(n, length - 1 - t)
        expected, g = 0.0, 1.0
        for j in range(m):  # R = r[t+1] + gamma r[t+2] + ... over at most the episode's end
            expected += g * r[t + 1 + j]
            g *= gamma
        ended = terminal and t + m == length - 1
        batch = sampler.gather(np.array([4 + t]))  # the first episode holds slots 0..3
        assert batch["reward"][0] == pytest.approx(expected, rel=1e-5)
        assert batch["discount"][0] == pytest.approx(0.0 if ended else gamma ** m)
        assert batch["obs"][0, :, 0, 0, 0].tolist() == [max(t - 1, 0), t]
        assert batch["next_obs"][0, :, 0, 0, 0].tolist() == [t + m - 1, t + m]
        assert np.array_equal(batch["action"][0], episode["action"][t + 1])


def test_reward_clip_applies_before_summing(tmp_path):
    episode = make_episode(3, np.random.default_rng(0))
    episode["reward"][:] = [0.0, 5.0, -3.0]
    sampler = TransitionSampler(make_replay(tmp_path, [episode]), 10, 1, 2, 0.5, prioritized=False,
                                reward_clip=1.0)
    sampler.sync()
    assert sampler.gather(np.array([0]))["reward"][0] == pytest.approx(1.0 - 0.5)


def test_sampler_follows_replay_eviction(tmp_path):
    rng = np.random.default_rng(0)
    replay = make_replay(tmp_path, [make_episode(10, rng, start=0)], capacity=25)
    sampler = TransitionSampler(replay, 25, 1, 1, 0.99)
    assert sampler.sync() == 9
    replay.add_episode(make_episode(10, rng, start=100), save=False)
    replay.add_episode(make_episode(10, rng, start=200), save=False)  # evicts the first episode
    assert sampler.sync() == 18
    frames = sampler.sample(200)["obs"][:, 0, 0, 0, 0]
    assert frames.min() >= 100


def test_sampler_keeps_its_place_past_one_step_episodes(tmp_path):
    rng = np.random.default_rng(0)
    replay = make_replay(tmp_path, [make_episode(1, rng, start=0), make_episode(4, rng, start=10)])
    sampler = TransitionSampler(replay, 100, 1, 1, 0.99)
    assert sampler.sync() == 3
    replay.add_episode(make_episode(3, rng, start=20), save=False)
    assert sampler.sync() == 5
    assert set(sampler.sample(100)["obs"][:, 0, 0, 0, 0].tolist()) == {10, 11, 12, 20, 21}


def test_sum_tree_finds_the_interval_holding_a_value():
    tree = SumTree(5)
    tree.set(np.arange(5), np.array([1.0, 0.0, 2.0, 3.0, 4.0]))
    assert tree.total == pytest.approx(10.0)
    found = tree.find(np.array([0.0, 0.99, 1.0, 2.99, 3.0, 5.99, 6.0, 9.99]))
    assert found.tolist() == [0, 0, 2, 2, 3, 3, 4, 4]


def test_prioritized_sampling_frequencies_follow_priorities(tmp_path):
    episode = make_episode(5, np.random.default_rng(0))  # 4 transitions
    sampler = TransitionSampler(make_replay(tmp_path, [episode]), 16, 1, 1, 0.99, prioritized=True,
                                priority_exponent=0.5, seed=3)
    first = sampler.sample(4)
    assert np.allclose(first["weight"], 1.0)  # new transitions share the max priority
    sampler.update_priorities(np.arange(4), first["serial"][:1].repeat(4), np.array([1.0, 4.0, 9.0, 16.0]))
    expected = np.array([1.0, 2.0, 3.0, 4.0]) / 10.0  # loss ** 0.5, normalised
    counts = np.zeros(4)
    for _ in range(100):
        batch = sampler.sample(64, beta=0.5)
        counts += np.bincount(batch["index"], minlength=4)
    assert np.allclose(counts / counts.sum(), expected, atol=0.02)
    weights = (4 * expected[batch["index"]]) ** -0.5
    assert np.allclose(batch["weight"], weights / weights.max(), rtol=1e-5)
    assert sampler.max_priority == pytest.approx(4.0)


def test_uniform_sampling_is_flat(tmp_path):
    episode = make_episode(5, np.random.default_rng(0))
    sampler = TransitionSampler(make_replay(tmp_path, [episode]), 16, 1, 1, 0.99, prioritized=False, seed=0)
    counts = np.bincount(sampler.sample(8000)["index"], minlength=4)
    assert np.allclose(counts / counts.sum(), 0.25, atol=0.02)


def test_annealed_beta_reaches_one():
    assert annealed_beta(0.4, 0, 100) == pytest.approx(0.4)
    assert annealed_beta(0.4, 50, 100) == pytest.approx(0.7)
    assert annealed_beta(0.4, 500, 100) == 1.0


# ----------------------------------------------------------------------------- SAC


def test_sac_critic_target_on_a_toy_case():
    args = dict(next_q1=torch.tensor([2.0, 2.0]), next_q2=torch.tensor([3.0, 3.0]),
                next_log_pi=torch.tensor([-1.0, -1.0]), alpha=torch.tensor(0.5))
    target = sac_critic_target(torch.tensor([1.0, 1.0]), torch.tensor([0.99, 0.0]), **args)
    assert torch.allclose(target, torch.tensor([1.0 + 0.99 * (2.0 + 0.5), 1.0]))
    loss = sac_critic_loss(torch.tensor([3.0]), torch.tensor([4.0]), torch.tensor([3.5]))
    assert loss.item() == pytest.approx(0.5)
    actor = sac_actor_loss(torch.tensor([-1.0]), torch.tensor([2.0]), torch.tensor([3.0]), torch.tensor(0.5))
    assert actor.item() == pytest.approx(-0.5 - 2.0)


def test_temperature_loss_moves_alpha_towards_the_target_entropy():
    log_alpha = torch.tensor(math.log(0.5), requires_grad=True)
    loss = sac_temperature_loss(log_alpha, torch.tensor([-1.0]), target_entropy=-2.0)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 2.0))
    loss.sum().backward()
    assert log_alpha.grad.item() == pytest.approx(1.5)  # entropy 1 above target -2: alpha shrinks
    log_alpha.grad = None
    sac_temperature_loss(log_alpha, torch.tensor([4.0]), target_entropy=-2.0).sum().backward()
    assert log_alpha.grad.item() < 0  # entropy -4 below target: alpha grows


def test_squashed_gaussian_log_prob_matches_change_of_variables():
    torch.manual_seed(0)
    mu, log_std = torch.randn(6, 2), torch.randn(6, 2) * 0.3
    action, log_pi = squashed_gaussian_sample(mu, log_std)
    u = torch.atanh(action.clamp(-1 + 1e-6, 1 - 1e-6))
    normal = torch.distributions.Normal(mu, log_std.exp())
    expected = (normal.log_prob(u) - torch.log(1 - action.pow(2))).sum(-1)
    assert torch.allclose(log_pi, expected, atol=1e-3)
    assert (action.abs() < 1).all()


# ----------------------------------------------------------------------------- the agent


def make_agent(env="toy_catch", overrides=()):
    cfg = config.build(env, "curl", "tiny", overrides)
    if env.startswith("dmc"):
        obs_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (100, 100, 3), np.uint8)})
        act_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    else:
        obs_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)})
        act_space = gym.spaces.Discrete(3)
    return CurlAgent(cfg, obs_space, act_space, torch.device("cpu")), obs_space


def test_policy_frame_stack_restarts_at_episode_starts():
    frames = push_frame(None, torch.full((2, 1, 1, 1), 5, dtype=torch.uint8), torch.tensor([True, True]), 3)
    assert frames[:, :, 0, 0, 0].tolist() == [[5, 5, 5], [5, 5, 5]]
    frames = push_frame(frames, torch.tensor([6, 9], dtype=torch.uint8).view(2, 1, 1, 1),
                        torch.tensor([False, True]), 3)
    assert frames[:, :, 0, 0, 0].tolist() == [[5, 5, 6], [9, 9, 9]]
    assert to_channels(frames).shape == (2, 3, 1, 1)


@pytest.mark.parametrize("env", ["toy_catch", "dmc_walker_walk"])
def test_policy_returns_valid_actions(env):
    torch.manual_seed(0)
    agent, obs_space = make_agent(env)
    h, w, c = obs_space["image"].shape
    obs = {"image": torch.randint(0, 256, (4, h, w, c), dtype=torch.uint8), "is_first": torch.ones(4, dtype=torch.bool)}
    for mode in ("train", "eval"):
        action, state = agent.policy(obs, None, mode)
        assert action.shape == (4, agent.action_size) and action.dtype == torch.float32
        if agent.discrete:
            assert ((action == 0) | (action == 1)).all() and (action.sum(-1) == 1).all()
        else:
            assert (action.abs() <= 1).all()
        assert state.shape == (4, agent.history, h, w, c)
    first, _ = agent.policy(obs, None, "eval")
    again, _ = agent.policy(obs, None, "eval")
    assert torch.equal(first, again)  # evaluation is greedy: no noise, no sampling


def test_rainbow_update_moves_the_key_encoder_by_ema_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    agent, _ = make_agent("toy_catch")
    rng = np.random.default_rng(0)
    replay = make_replay(tmp_path, [make_episode(12, rng, size=64, channels=3) for _ in range(2)])
    learner = agent.learner
    key_before = [p.detach().clone() for p in learner.key.parameters()]
    metrics = agent.update(replay)
    query = [*learner.online.encoder.parameters(), *learner.online.projection.parameters()]
    for old, new, q in zip(key_before, learner.key.parameters(), query):
        assert torch.allclose(new, (1 - learner.key_tau) * old + learner.key_tau * q, atol=1e-6)
    for name in ("rl/loss", "rl/q_mean", "curl/contrastive_loss", "rainbow/nonfinite"):
        assert torch.isfinite(metrics[name]) and metrics[name].dim() == 0
    assert metrics["rainbow/nonfinite"] == 0
    restored, _ = make_agent("toy_catch")
    restored.load_state_dict(agent.state_dict())
    assert restored.learner.updates == 1
    assert restored.learner.optimizer.state_dict()["adam"]["state"].keys() == \
        learner.optimizer.state_dict()["adam"]["state"].keys()
    for a, b in zip(restored.state_dict().values(), agent.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


def test_sac_update_runs_and_keeps_the_actor_off_the_conv_trunk(tmp_path):
    torch.manual_seed(0)
    agent, _ = make_agent("dmc_walker_walk")
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(2):
        episode = make_episode(6, rng, size=100, channels=3, terminal=False)
        episode["action"] = rng.uniform(-1, 1, (6, 2)).astype(np.float32)
        episodes.append(episode)
    learner = agent.learner
    assert learner.actor.encoder.trunk is learner.critic.encoder.trunk  # tied conv weights
    trunk_ids = {id(p) for p in learner.critic.encoder.trunk.parameters()}
    assert not trunk_ids & {id(p) for p in learner.actor_opt.params}
    metrics = agent.update(make_replay(tmp_path, episodes))
    for name in ("rl/loss", "rl/q_mean", "rl/alpha", "curl/contrastive_loss", "critic/nonfinite",
                 "actor/nonfinite", "curl/nonfinite"):
        assert torch.isfinite(metrics[name]), name


def test_atari100k_refuses_settings_off_the_protocol():
    cfg = config.build("atari_pong", "curl", "default")
    check_atari100k(cfg.env, cfg.run.steps)
    with pytest.raises(UserError, match="env.sticky"):
        check_atari100k(config.build("atari_pong", "curl", "default", ["env.sticky=0.25"]).env, 100_000)
    with pytest.raises(UserError, match="run.steps"):
        check_atari100k(cfg.env, 400_000)
