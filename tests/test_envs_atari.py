"""envs.atari: DreamerV2 preprocessing of ALE games (few steps each, Pong and Breakout)."""

import numpy as np
import pytest

import envs
from envs.atari import max_pool_last_two, resize_frame


def _ram_rollout(seed, steps=40, **overrides):
    """RAM after each step of Pong with a fixed up/down action pattern."""
    env = envs.make("atari_pong", seed=seed, **overrides)
    env.reset()
    rams = [env.step(2 if (step // 5) % 2 else 3)[0]["ram"] for step in range(steps)]
    env.close()
    return np.stack(rams)  # (T, 128)


def test_max_pool_uses_exactly_the_last_two_frames():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 100, (6, 5, 3), dtype=np.uint8) for _ in range(4)]
    frames[0][0, 0] = 255  # bright pixels in frames that must be ignored
    frames[1][1, 1] = 255
    frames[2][2, 2] = 200  # bright pixels in the two frames that count
    frames[3][3, 3] = 210
    pooled = max_pool_last_two(frames)
    assert np.array_equal(pooled, np.maximum(frames[2], frames[3]))
    assert pooled[2, 2, 0] == 200 and pooled[3, 3, 0] == 210
    assert pooled[0, 0, 0] != 255 and pooled[1, 1, 0] != 255
    assert max_pool_last_two(frames[:1]) is frames[0]


def test_resize_keeps_channels():
    frame = np.zeros((210, 160, 3), np.uint8)
    assert resize_frame(frame, (64, 64)).shape == (64, 64, 3)
    assert resize_frame(frame[..., 0], (32, 48)).shape == (32, 48, 1)


def test_protocol_and_ram():
    env = envs.make("atari_pong", seed=0)
    obs, info = env.reset()
    assert env.observation_space.contains(obs)
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["ram"].shape == (128,) and obs["ram"].dtype == np.uint8
    assert env.get_action_meanings()[0] == "NOOP" and env.action_space.n == 6  # minimal set
    rams = [obs["ram"]]
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
        rams.append(obs["ram"])
    assert np.array_equal(obs["ram"], env.ale.getRAM())
    assert any(not np.array_equal(a, b) for a, b in zip(rams, rams[1:]))
    env.close()


@pytest.mark.parametrize("repeat", [4, 2])
def test_action_repeat_advances_frames(repeat):
    env = envs.make("atari_pong", seed=0, action_repeat=repeat)
    env.reset()
    for _ in range(3):
        before = env.ale.getEpisodeFrameNumber()
        env.step(0)
        assert env.ale.getEpisodeFrameNumber() - before == repeat
    env.close()


def test_step_image_is_max_of_last_two_raw_frames():
    # One env repeats each action 4 times itself; a twin repeats by hand at action_repeat=1.
    pooled = envs.make("atari_pong", seed=0, sticky=0.0, noops=0)
    single = envs.make("atari_pong", seed=0, sticky=0.0, noops=0, action_repeat=1)
    pooled.reset()
    single.reset()
    for step in range(12):
        action = 2 if step % 4 < 2 else 3
        obs = pooled.step(action)[0]
        raws = []
        for _ in range(4):
            single.step(action)
            raws.append(single.ale.getScreenRGB())
        expected = resize_frame(np.maximum(raws[2], raws[3]), (64, 64))
        assert np.array_equal(obs["image"], expected), f"step {step}"
        assert np.array_equal(obs["ram"], single.ale.getRAM())


def test_noops_vary_the_start():
    frames = set()
    for seed in range(4):
        env = envs.make("atari_pong", seed=seed, noops=30)
        env.reset()
        frame = env.ale.getEpisodeFrameNumber()
        assert 1 <= frame <= 30
        frames.add(frame)
    assert len(frames) > 1
    env = envs.make("atari_pong", seed=0, noops=0)
    env.reset()
    assert env.ale.getEpisodeFrameNumber() == 0


def test_time_limit_truncates():
    env = envs.make("atari_pong", seed=0, time_limit=3)
    env.reset()
    ends = [env.step(0)[2:4] for _ in range(3)]
    assert ends == [(False, False), (False, False), (False, True)]


def test_same_seed_same_images_and_ram():
    def rollout(seed):
        env = envs.make("atari_pong", seed=seed)  # sticky actions and no-ops on
        obs, _ = env.reset()
        images, rams = [obs["image"]], [obs["ram"]]
        for step in range(25):
            obs = env.step(step % 6)[0]
            images.append(obs["image"])
            rams.append(obs["ram"])
        return np.stack(images), np.stack(rams)

    first, second = rollout(3), rollout(3)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_sticky_actions_setting_and_effect():
    assert envs.make("atari_pong").ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    assert envs.make("atari_pong", sticky=0.0).ale.getFloat("repeat_action_probability") == 0.0
    # Without sticky actions (and no-ops) the emulator ignores the seed ...
    assert np.array_equal(_ram_rollout(1, sticky=0.0, noops=0), _ram_rollout(2, sticky=0.0, noops=0))
    # ... with them, different seeds repeat different actions and the games diverge.
    assert not np.array_equal(_ram_rollout(1, noops=0), _ram_rollout(2, noops=0))


def test_grayscale_has_one_channel():
    env = envs.make("atari_pong", seed=0, grayscale=True, size=(48, 40))
    obs, _ = env.reset()
    assert obs["image"].shape == (48, 40, 1) and env.observation_space.contains(obs)
    assert env.step(0)[0]["image"].shape == (48, 40, 1)


@pytest.mark.parametrize("life_done", [True, False])
def test_life_loss_terminal_only_when_asked(life_done):
    env = envs.make("atari_breakout", seed=0, noops=0, sticky=0.0, life_done=life_done)
    _, info = env.reset()
    lives = info["lives"]
    for step in range(200):
        _, _, terminated, truncated, info = env.step(1 if step % 10 == 0 else 0)  # FIRE, then wait
        if info["lives"] < lives:
            break
    assert info["lives"] == lives - 1
    assert terminated is life_done and truncated is False
