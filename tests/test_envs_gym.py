"""The envs as gymnasium sees them: ``mwm/<name>-v0`` ids and ``render_mode="rgb_array"``."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.registration import atari_names, dmc_names, gym_id
from mwm.errors import UserError


def test_every_env_is_registered_under_the_mwm_namespace_without_importing_simulators():
    code = ("import envs, sys, gymnasium as gym; ids = [k for k in gym.registry if k.startswith('mwm/')]; "
            "print('ale_py' in sys.modules, 'dm_control' in sys.modules, 'mwm/toy_catch-v0' in ids, "
            "'mwm/atari_pong-v0' in ids, 'mwm/dmc_walker_walk-v0' in ids)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False", "True", "True", "True"]


def test_registered_names_are_exactly_the_names_make_accepts():
    # the names are read from files (cheap); here they are checked against the simulators' own lists
    if atari_names():
        assert atari_names() == sorted(envs.list_envs("atari"))
    if dmc_names():
        assert sorted(dmc_names()) == sorted(envs.list_envs("dmc"))
    for name in envs.list_envs("toy") + atari_names() + dmc_names():
        assert gym_id(name) in gym.registry


def test_gymnasium_make_builds_the_env_with_keywords_and_renders_what_it_observes():
    env = gym.make("mwm/toy_catch-v0", render_mode="rgb_array_list", object_size=8)  # RenderCollection
    obs, _ = env.reset(seed=3)
    images = [obs["image"]]
    for action in (0, 2, 2, 1, 0):
        obs, *_ = env.step(action)
        images.append(obs["image"])
    assert env.unwrapped.object_size == 8
    frames = env.render()
    assert len(frames) == len(images)
    assert all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in frames)
    assert all(np.array_equal(f, i) for f, i in zip(frames, images))
    assert not np.array_equal(frames[0], frames[-1])  # the object fell and the paddle moved
    env.close()


def test_render_modes_and_the_env_checker():
    from gymnasium.utils.env_checker import check_env

    plain = envs.make("toy_catch", seed=0)
    plain.reset()
    assert plain.render() is None  # no render_mode: nothing rendered
    check_env(gym.make("mwm/toy_catch-v0", render_mode="rgb_array").unwrapped, skip_render_check=False)
    with pytest.raises(UserError, match="render_mode"):
        envs.make("toy_catch", render_mode="ansi")


def test_grayscale_atari_renders_three_channels():
    pytest.importorskip("ale_py")
    env = gym.make("mwm/atari_pong-v0", render_mode="rgb_array", grayscale=True, size=(32, 32))
    obs, _ = env.reset(seed=0)
    frame = env.render()
    assert obs["image"].shape == (32, 32, 1) and frame.shape == (32, 32, 3)
    assert all(np.array_equal(frame[..., c], obs["image"][..., 0]) for c in range(3))
    env.close()


def test_record_video_films_an_episode(tmp_path):
    pytest.importorskip("moviepy")  # gymnasium's RecordVideo writes through moviepy
    from gymnasium.wrappers import RecordVideo

    env = RecordVideo(gym.make("mwm/toy_catch-v0", render_mode="rgb_array", time_limit=6), str(tmp_path),
                      episode_trigger=lambda episode: True, disable_logger=True)
    env.reset(seed=0)
    done = False
    while not done:
        _, _, terminated, truncated, _ = env.step(1)
        done = terminated or truncated
    env.close()
    assert list(tmp_path.glob("*.mp4"))
