"""envs: names, overrides, the GL backend choice, and the toy_catch game."""

import subprocess
import sys

import numpy as np
import pytest

import envs
from envs import toy
from envs.gl import choose_backend
from mwm.errors import UserError

# ---------------------------------------------------------------- names and overrides


def test_import_is_cheap():
    code = "import envs, sys; print('ale_py' in sys.modules, 'dm_control' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_list_envs_has_every_suite():
    names = envs.list_envs()
    for name in ("atari_pong", "atari_breakout", "atari_ms_pacman", "dmc_walker_walk",
                 "dmc_cartpole_swingup", "dmc_quadruped_run", "dmc_ball_in_cup_catch", "toy_catch"):
        assert name in names
    assert envs.list_envs("toy") == ["toy_catch"]
    assert set(envs.SUITES) == {"atari", "dmc", "toy"}


def test_atari_game_ids_map_snake_case_to_ale():
    from envs.atari import game_id

    assert game_id("pong") == "ALE/Pong-v5"
    assert game_id("ms_pacman") == "ALE/MsPacman-v5"
    assert game_id("montezuma_revenge") == "ALE/MontezumaRevenge-v5"


@pytest.mark.parametrize("name, suggestion", [
    ("pong", "atari_pong"),  # no suite prefix
    ("walker_walk", "dmc_walker_walk"),
    ("atari_pongg", "atari_pong"),  # a name the user can type, not the bare game
    ("atari_mspacman", "atari_ms_pacman"),
    ("dmc_walker_wlak", "dmc_walker_walk"),
    ("toy_cath", "toy_catch"),
])
def test_unknown_name_suggests_close_matches(name, suggestion):
    with pytest.raises(UserError, match="did you mean") as caught:
        envs.make(name)
    assert suggestion in str(caught.value)
    assert "\n" not in str(caught.value)
    assert len(str(caught.value)) < 300  # short enough to read: no list of every game


def test_unknown_prefix_lists_suites():
    with pytest.raises(UserError) as caught:
        envs.make("procgen_coinrun")
    assert all(prefix in str(caught.value) for prefix in ("atari_", "dmc_", "toy_"))


@pytest.mark.parametrize("name, bad, good", [
    ("toy_catch", "objct_size", "object_size"),
    ("atari_pong", "repeat", "action_repeat"),
    ("dmc_cartpole_swingup", "camra", "camera"),
])
def test_unknown_override_is_named(name, bad, good):
    with pytest.raises(UserError) as caught:
        envs.make(name, **{bad: 1})
    assert repr(bad) in str(caught.value) and good in str(caught.value)


@pytest.mark.parametrize("overrides", [
    {"object_size": 0}, {"object_size": 17}, {"object_size": 2.5}, {"drops": 0},
])
def test_bad_override_values_raise(overrides):
    with pytest.raises(UserError):
        envs.make("toy_catch", **overrides)


# ---------------------------------------------------------------- GL backend choice


def test_gl_keeps_a_backend_the_user_set():
    environ = {"MUJOCO_GL": "osmesa"}
    assert choose_backend(environ, probe=lambda backend: pytest.fail("probed")) == "osmesa"
    assert environ == {"MUJOCO_GL": "osmesa"}


def test_gl_prefers_egl_then_falls_back_to_osmesa():
    environ = {}
    assert choose_backend(environ, probe=lambda backend: True) == "egl"
    assert environ["MUJOCO_GL"] == "egl"
    tried = []
    environ = {}
    assert choose_backend(environ, probe=lambda b: tried.append(b) or b == "osmesa") == "osmesa"
    assert tried == ["egl", "osmesa"] and environ["MUJOCO_GL"] == "osmesa"


def test_gl_without_any_backend_names_the_packages():
    environ = {}
    with pytest.raises(UserError) as caught:
        choose_backend(environ, probe=lambda backend: False)
    assert "libegl1" in str(caught.value) and "libosmesa6" in str(caught.value)
    assert "MUJOCO_GL" not in environ


# ---------------------------------------------------------------- toy_catch


def _pixels(image, colour):
    """Boolean (H, W) mask of the pixels of one colour."""
    return np.all(image == np.array(colour, np.uint8), axis=-1)


def _follow(obs, paddle_width):
    """Action moving the paddle's centre towards the object's centre."""
    size = obs["object_box"][2] - obs["object_box"][0]
    target = obs["object_pos"][1] + size / 2 - paddle_width / 2
    gap = target - obs["paddle_pos"][1]
    return toy.STAY if abs(gap) < 2 else (toy.RIGHT if gap > 0 else toy.LEFT)


def _flee(obs):
    """Action moving the paddle to the side away from the object."""
    return toy.LEFT if obs["object_pos"][1] >= 32 else toy.RIGHT


def test_toy_protocol():
    env = envs.make("toy_catch", seed=0)
    obs, info = env.reset()
    assert env.observation_space.contains(obs)
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (64, 64, 3)
    assert obs["object_pos"].dtype == np.float32 and obs["object_box"].dtype == np.int32
    assert env.action_space.n == 3
    obs, reward, terminated, truncated, info = env.step(1)
    assert env.observation_space.contains(obs)
    assert isinstance(reward, float) and terminated is False and truncated is False


@pytest.mark.parametrize("size, paddle_height", [(1, 2), (4, 2), (16, 2), (16, 8)])
def test_toy_object_size_and_position(size, paddle_height):
    env = envs.make("toy_catch", seed=size, object_size=size, drift=2.0, paddle_height=paddle_height)
    obs, _ = env.reset()
    for _ in range(12):
        mask = _pixels(obs["image"], toy.OBJECT_COLOUR)
        top, left, bottom, right = obs["object_box"]
        assert mask.sum() == size * size
        assert mask[top:bottom, left:right].all()
        assert tuple(obs["object_pos"]) == (top, left) and (bottom - top, right - left) == (size, size)
        paddle = _pixels(obs["image"], toy.PADDLE_COLOUR)
        assert paddle.sum() == env.paddle_width * paddle_height
        assert paddle[64 - paddle_height:].sum() == paddle.sum()  # on the bottom rows
        assert obs["paddle_pos"][0] == 64 - paddle_height
        obs, *_ = env.step(1)


def test_toy_colours_are_distinct():
    colours = {toy.BACKGROUND, toy.OBJECT_COLOUR, toy.PADDLE_COLOUR}
    assert len(colours) == 3


@pytest.mark.parametrize("paddle_height", [2, 8])
def test_toy_catch_rewards_plus_one_and_miss_minus_one(paddle_height):
    for policy, expected in ((_follow, 1.0), (_flee, -1.0)):
        env = envs.make("toy_catch", seed=3, drops=3, paddle_height=paddle_height)
        obs, _ = env.reset()
        rewards, terminated, steps = [], False, 0
        while not terminated:
            obs, reward, terminated, truncated, info = env.step(
                policy(obs, env.paddle_width) if policy is _follow else policy(obs))
            steps += 1
            if reward:
                rewards.append(reward)
        assert rewards == [expected] * 3
        assert info["drops"] == 3 and info["caught"] == (3 if expected > 0 else 0)
        assert 3 * 15 <= steps <= 3 * 22  # each fall takes about 15-20 steps


def test_toy_fall_time_and_drift_bounds():
    env = envs.make("toy_catch", seed=1, object_size=4, drift=3.0)
    obs, _ = env.reset()
    columns, steps, reward = {obs["object_pos"][1]}, 0, 0.0
    while reward == 0.0:
        obs, reward, *_ = env.step(1)
        steps += 1
        columns.add(obs["object_pos"][1])
        assert 0 <= obs["object_pos"][1] <= 64 - 4
    assert 15 <= steps <= 21
    assert len(columns) > 1  # drift moved it sideways


def test_toy_time_limit_truncates():
    env = envs.make("toy_catch", seed=0, time_limit=5)
    env.reset()
    ends = [env.step(1)[2:4] for _ in range(5)]
    assert ends[-1] == (False, True) and all(end == (False, False) for end in ends[:-1])


def test_toy_is_deterministic_under_a_seed():
    def rollout(seed):
        env = envs.make("toy_catch", seed=seed, drift=1.0)
        frames = [env.reset()[0]["image"]]
        frames += [env.step(step % 3)[0]["image"] for step in range(40)]
        return np.stack(frames)

    assert np.array_equal(rollout(7), rollout(7))
    assert not np.array_equal(rollout(7), rollout(8))


def test_toy_reset_seed_overrides_construction_seed():
    env = envs.make("toy_catch", seed=1)
    first = env.reset(seed=5)[0]["object_pos"]
    again = envs.make("toy_catch").reset(seed=5)[0]["object_pos"]
    assert np.array_equal(first, again)
