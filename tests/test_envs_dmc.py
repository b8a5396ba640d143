"""envs.dmc: dm_control tasks rendered to 64x64 RGB (few steps each)."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import envs  # noqa: E402
from envs.dmc import FAST_SHADOW_SIZE, default_camera, rescale_action  # noqa: E402
from mwm.errors import UserError  # noqa: E402


@pytest.fixture(scope="module")
def cartpole():
    env = envs.make("dmc_cartpole_swingup", seed=0)
    yield env
    env.close()


def test_protocol(cartpole):
    obs, info = cartpole.reset()
    assert cartpole.observation_space.contains(obs)
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (64, 64, 3)
    assert obs["image"].std() > 0  # a real render, not a blank buffer
    assert cartpole.action_space.shape == (1,) and cartpole.action_space.dtype == np.float32
    assert float(cartpole.action_space.low[0]) == -1.0 and float(cartpole.action_space.high[0]) == 1.0
    obs, reward, terminated, truncated, info = cartpole.step(np.array([0.5], np.float32))
    assert cartpole.observation_space.contains(obs)
    assert isinstance(reward, float) and terminated is False and truncated is False


def test_action_repeat_steps_physics_twice(cartpole):
    cartpole.reset()
    control_step = cartpole.control_timestep
    start = cartpole.physics.data.time
    cartpole.step(np.zeros(1, np.float32))
    assert cartpole.physics.data.time - start == pytest.approx(2 * control_step)


def test_time_limit_counts_env_steps():
    env = envs.make("dmc_cartpole_swingup", seed=0, time_limit=5)  # 5 env steps at repeat 2
    env.reset()
    ends = [env.step(np.zeros(1, np.float32))[2:4] for _ in range(3)]
    assert ends == [(False, False), (False, False), (False, True)]
    env.close()


def test_rescale_action():
    low, high = np.array([-1.0, 0.0, -0.8, -1e10]), np.array([1.0, 2.0, 1.1, 1e10])
    assert np.allclose(rescale_action(np.array([-1, -1, -1, -1]), low, high), [-1, 0, -0.8, -1])
    assert np.allclose(rescale_action(np.array([1, 1, 1, 0.5]), low, high), [1, 2, 1.1, 0.5])
    assert np.allclose(rescale_action(np.array([0, 0, 0, 0]), low, high), [0, 1, 0.15, 0])
    assert np.allclose(rescale_action(np.array([3, -3, 2, -2]), low, high), [1, 0, 1.1, -1])  # clipped


def test_quadruped_actions_reach_its_asymmetric_bounds():
    env = envs.make("dmc_quadruped_run", seed=0, size=(16, 16))
    assert default_camera("quadruped") == 2 and env.camera == 2
    env.reset()
    low, high = env.physics.model.actuator_ctrlrange.T  # (A,) each, e.g. -0.8 .. 1.1
    assert not np.allclose(low, -high)
    env.step(np.ones(12, np.float32))
    assert np.allclose(env.physics.data.ctrl, high)
    env.step(-np.ones(12, np.float32))
    assert np.allclose(env.physics.data.ctrl, low)
    with pytest.raises(UserError, match="shape"):
        env.step(np.ones(3, np.float32))
    env.close()


def test_same_seed_same_start_and_images():
    def rollout(seed):
        env = envs.make("dmc_cartpole_swingup", seed=seed)
        obs, _ = env.reset()
        state = env.physics.get_state().copy()
        images = [obs["image"]] + [env.step(np.array([0.7], np.float32))[0]["image"] for _ in range(3)]
        env.close()
        return state, np.stack(images)

    state, images = rollout(1)
    same_state, same_images = rollout(1)
    other_state, _ = rollout(2)
    assert np.array_equal(state, same_state) and np.array_equal(images, same_images)
    assert not np.array_equal(state, other_state)


def test_fast_render_lowers_quality_before_rendering():
    fast = envs.make("dmc_cartpole_swingup", seed=0)
    slow = envs.make("dmc_cartpole_swingup", seed=0, fast_render=False)
    assert fast.physics.model.vis.quality.shadowsize <= FAST_SHADOW_SIZE
    assert fast.physics.model.vis.quality.offsamples == 0
    assert slow.physics.model.vis.quality.shadowsize > FAST_SHADOW_SIZE
    fast_image, slow_image = fast.reset()[0]["image"], slow.reset()[0]["image"]
    # Same scene: lower quality changes shading, not content.
    assert np.abs(fast_image.astype(int) - slow_image.astype(int)).mean() < 20
    fast.close()
    slow.close()


def test_bad_camera_is_a_user_error():
    with pytest.raises(UserError, match="camera"):
        envs.make("dmc_cartpole_swingup", camera=99)
