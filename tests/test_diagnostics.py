"""World-model diagnostics (mwm/diagnostics.py): the scores by hand, no peeking in the open
loop, held-out eval episodes laid out as replay, and the scalars of a tiny training run."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from mwm import diagnostics


def test_pearson_and_reward_events_by_hand():
    assert diagnostics.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert diagnostics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(diagnostics.pearson([1, 1, 1], [1, 2, 3]))  # a constant prediction has no correlation
    pred = np.array([[0.9, -0.8, 0.1, 0.7]])
    truth = np.array([[1.0, 1.0, 0.0, 0.0]])
    # events: predicted +, -, +; true +, +. Only the first matches in place and sign.
    scores = diagnostics.event_scores(pred, truth)
    assert scores["reward_precision"] == pytest.approx(1 / 3)
    assert scores["reward_recall"] == pytest.approx(1 / 2)
    assert math.isnan(diagnostics.event_scores(np.zeros((1, 3)), truth[:, :3])["reward_precision"])


def _episode(length: int, offset: float) -> dict:
    return {"image": np.zeros((length, 64, 64, 3), np.uint8), "action": np.zeros((length, 3), np.float32),
            "reward": offset + np.arange(length, dtype=np.float32), "is_first": np.arange(length) == 0,
            "is_terminal": np.zeros(length, bool)}


def test_windows_stay_inside_one_episode_and_start_fresh():
    episodes = [_episode(7, 0.0), _episode(30, 100.0)]
    batch = diagnostics.cut_windows(episodes, 20, 50, np.random.default_rng(0))
    assert batch["reward"].shape == (50, 20)
    assert np.all(batch["reward"][:, 0] >= 100)  # the 7-step episode is too short to hold a window
    assert np.all(np.diff(batch["reward"], axis=1) == 1)  # consecutive steps of one episode
    assert batch["is_first"][:, 0].all() and not batch["is_first"][:, 1:].any()
    with pytest.raises(ValueError, match="no episode has 40 steps"):
        diagnostics.cut_windows(episodes, 40, 1, np.random.default_rng(0))


def _agent(name: str):
    from agents.registry import make_agent
    from mwm import config

    torch.manual_seed(0)
    cfg = config.build("toy_catch", name, "tiny")
    obs_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)})
    return make_agent(cfg, obs_space, gym.spaces.Discrete(3), torch.device("cpu"))


def _batch(seed: int = 0, sequences: int = 6) -> dict:
    rng = np.random.default_rng(seed)
    steps = diagnostics.CONTEXT + diagnostics.HORIZON
    return {"image": torch.as_tensor(rng.integers(0, 256, (sequences, steps, 64, 64, 3), dtype=np.uint8)),
            "action": torch.as_tensor(np.eye(3, dtype=np.float32)[rng.integers(3, size=(sequences, steps))]),
            "reward": torch.as_tensor(rng.choice([0.0, 0.0, 1.0, -1.0], size=(sequences, steps)).astype(np.float32)),
            "is_first": torch.as_tensor(np.arange(steps)[None].repeat(sequences, 0) == 0),
            "is_terminal": torch.zeros(sequences, steps, dtype=torch.bool)}


@pytest.mark.parametrize("name", ["mwm", "dreamerv2"])
def test_open_loop_reads_only_the_context_and_follows_the_actions(name):
    agent = _agent(name)
    batch = _batch()

    def predict(sequences):  # the latents are sampled: the same noise for every call
        torch.manual_seed(1)
        return diagnostics.predict(agent, sequences)

    before = predict(batch)
    future = dict(batch, image=batch["image"].clone())
    future["image"][:, diagnostics.CONTEXT:] = 255 - future["image"][:, diagnostics.CONTEXT:]
    after = predict(future)
    torch.testing.assert_close(after["reward"], before["reward"])  # later frames are never read
    torch.testing.assert_close(after["decoded"], before["decoded"])
    assert not torch.allclose(after["post"], before["post"])  # ... though the posterior over them changes
    steered = dict(batch, action=batch["action"].roll(1, dims=-1))
    assert not torch.allclose(predict(steered)["reward"], before["reward"])
    agent.close()


def test_open_loop_scores_have_the_horizon_shape_and_leave_the_model_as_it_was():
    agent = _agent("mwm")
    agent.train()
    def tensors():
        return {k: v.clone() for k, v in agent.state_dict()["modules"].items() if torch.is_tensor(v)}

    state = tensors()
    result = diagnostics.open_loop(agent, _batch(sequences=8))
    assert result["horizon"] == diagnostics.HORIZON and result["sequences"] == 8
    assert len(result["recon_error_by_step"]) == len(result["reward_corr_by_step"]) == diagnostics.HORIZON
    assert len(result["pixel_mse_by_step"]) == diagnostics.HORIZON
    assert all(0.0 <= v <= 1.0 for v in result["pixel_mse_by_step"])
    assert result["kl"] >= 0 and 0 <= result["input_signal"] <= 1.0 + 1e-6
    assert agent.wm.training  # the train/eval mode is restored
    for key, value in tensors().items():
        torch.testing.assert_close(value, state[key])  # nothing learned, no statistics moved
    scalars = diagnostics.scalars(result)
    assert {"diag/reward_corr", "diag/recon_error_h1", "diag/recon_error_h15", "diag/pixel_mse_h15"} <= set(scalars)
    agent.close()


def test_evaluation_keeps_its_episodes_laid_out_as_replay(tmp_path):
    from envs.vector import VectorEnv
    from mwm.collect import Collector
    from replay import Replay

    class Fixed:  # always "right": a policy whose actions are known
        device = torch.device("cpu")

        def policy(self, obs, state, mode):
            return torch.tensor([[0.0, 0.0, 1.0]]).repeat(obs["image"].shape[0], 1), state

    env = VectorEnv("toy_catch", 1, seed=0, parallel=False, drops=1)
    eval_env = VectorEnv("toy_catch", 1, seed=1, parallel=False, drops=1)
    try:
        collector = Collector(env, Replay(str(tmp_path / "replay"), capacity=1000, seed=0), Fixed())
        mean = collector.evaluate(eval_env, 2)
    finally:
        env.close()
        eval_env.close()
    assert len(collector.eval_episodes) == 2
    assert mean == pytest.approx(np.mean([ep["reward"].sum() for ep in collector.eval_episodes]))
    for ep in collector.eval_episodes:
        assert ep["is_first"][0] and not ep["is_first"][1:].any() and ep["is_last"][-1]
        assert np.all(ep["action"][0] == 0) and np.all(ep["action"][1:] == [0.0, 0.0, 1.0])
        assert ep["image"].shape[1:] == (64, 64, 3) and len(ep["image"]) == len(ep["reward"])
