"""envs.vector: batched step protocol, autoreset, seeding and crashed workers."""

import os
import signal

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import envs  # noqa: E402
from envs.vector import VectorEnv  # noqa: E402
from mwm.errors import UserError  # noqa: E402

PROTOCOL = {"image": np.uint8, "reward": np.float32, "is_first": np.bool_,
            "is_last": np.bool_, "is_terminal": np.bool_}


def _check_batch(batch, n):
    for key, dtype in PROTOCOL.items():
        assert batch[key].dtype == dtype, key
        assert batch[key].shape[0] == n, key
    assert batch["image"].shape == (n, 64, 64, 3)
    assert batch["object_pos"].shape == (n, 2) and batch["object_box"].shape == (n, 4)


def _run_protocol(vector, steps):
    """Step with 'stay' and check is_first follows is_last; return the batches."""
    batches = [vector.reset()]
    assert batches[0]["is_first"].all() and not batches[0]["is_last"].any()
    for _ in range(steps):
        batches.append(vector.step(np.ones(vector.num_envs, np.int64)))
    for before, after in zip(batches, batches[1:]):
        _check_batch(after, vector.num_envs)
        assert np.array_equal(after["is_first"], before["is_last"])  # NEXT_STEP autoreset
        assert not (after["is_first"] & after["is_last"]).any()
        assert (after["reward"][after["is_first"]] == 0).all()
        assert (after["is_terminal"] <= after["is_last"]).all()
    return batches


@pytest.fixture(scope="module")
def parallel():
    vector = VectorEnv("toy_catch", 2, seed=10, drops=1)
    yield vector
    vector.close()


def test_parallel_protocol_and_autoreset(parallel):
    assert parallel.num_envs == 2 and parallel.discrete and parallel.action_size == 3
    assert set(parallel.obs_space.spaces) >= {"image", "object_pos", "object_box", "paddle_pos"}
    batches = _run_protocol(parallel, 45)  # drops=1: episodes of about 20 steps
    lasts = np.stack([b["is_last"] for b in batches])
    assert lasts.sum(0).min() >= 2  # every env finished two episodes
    rewards = np.stack([b["reward"] for b in batches])
    assert set(np.abs(rewards[lasts])) == {1.0}  # a catch or a miss ends each episode


def test_env_i_is_seeded_with_seed_plus_i(parallel):
    batch = parallel.reset()  # not the first reset: no reseeding, the episode continues the RNG
    assert batch["is_first"].all()
    with VectorEnv("toy_catch", 2, seed=10, parallel=False, drops=1) as serial:
        fresh = serial.reset()
    for i in range(2):
        single = envs.make("toy_catch", seed=10 + i, drops=1).reset()[0]
        assert np.array_equal(fresh["image"][i], single["image"])


def test_sync_and_parallel_agree():
    parallel = VectorEnv("toy_catch", 2, seed=3, drops=1)
    serial = VectorEnv("toy_catch", 2, seed=3, parallel=False, drops=1)
    try:
        first = _run_protocol(parallel, 25)
        second = _run_protocol(serial, 25)
    finally:
        parallel.close()
        serial.close()
    for a, b in zip(first, second):
        assert all(np.array_equal(a[key], b[key]) for key in a)


def test_actions_one_hot_and_bad_shapes(parallel):
    parallel.reset()
    assert not parallel.step(np.eye(3, dtype=np.float32)[[0, 2]])["is_first"].any()
    with pytest.raises(UserError, match="shape"):
        parallel.step(np.zeros((3,), np.int64))


def test_step_before_reset_and_use_after_close_are_errors():
    vector = VectorEnv("toy_catch", 1, seed=0)
    with pytest.raises(UserError, match="reset"):
        vector.step(np.ones(1, np.int64))
    vector.close()
    with pytest.raises(UserError, match="closed"):
        vector.reset()


def test_killed_worker_is_restarted_with_a_reset_batch(parallel):
    parallel.reset()
    parallel.step(np.ones(2, np.int64))
    restarts = parallel.restarts
    os.kill(parallel._env.processes[0].pid, signal.SIGKILL)
    batch = parallel.step(np.ones(2, np.int64))
    assert batch["is_first"].all() and not batch["is_last"].any()
    assert parallel.restarts == restarts + 1
    _check_batch(parallel.step(np.ones(2, np.int64)), 2)


def test_hung_worker_times_out_and_is_restarted():
    vector = VectorEnv("toy_catch", 2, seed=0, timeout=2.0)
    try:
        vector.reset()
        old_workers = list(vector._env.processes)
        os.kill(old_workers[1].pid, signal.SIGSTOP)
        batch = vector.step(np.ones(2, np.int64))
        assert batch["is_first"].all() and vector.restarts == 1
        assert not any(worker.is_alive() for worker in old_workers)
    finally:
        vector.close()


def test_continuous_actions_in_process():
    vector = VectorEnv("dmc_cartpole_swingup", 2, seed=0, parallel=False, time_limit=4)
    try:
        assert not vector.discrete and vector.action_size == 1
        batch = vector.reset()
        assert batch["image"].shape == (2, 64, 64, 3)
        lasts = [vector.step(np.full((2, 1), 2.0, np.float32))["is_last"] for _ in range(2)]
        assert not lasts[0].any() and lasts[1].all()  # 4 env steps = 2 agent steps
        batch = vector.step(np.zeros((2, 1), np.float32))
        assert batch["is_first"].all() and not batch["is_terminal"].any()
    finally:
        vector.close()


def test_too_many_failures_raise_a_user_error():
    vector = VectorEnv("toy_catch", 2, seed=0, max_restarts=0)
    try:
        vector.reset()
        os.kill(vector._env.processes[0].pid, signal.SIGKILL)
        with pytest.raises(UserError, match="parallel=False"):
            vector.step(np.ones(2, np.int64))
    finally:
        vector.close()


def test_a_restart_seeds_past_every_process_that_shares_the_seed_range():
    # torchrun rank 0 of two, two envs each: rank 1 took seeds 2 and 3, so rank 0's first
    # restart must seed 4 and 5 (with the default stride it would repeat rank 1's 2 and 3)
    vector = VectorEnv("toy_catch", 2, seed=0, seed_stride=4)
    try:
        vector.reset()
        vector.step(np.ones(2, np.int64))
        os.kill(vector._env.processes[0].pid, signal.SIGKILL)
        restarted = vector.step(np.ones(2, np.int64))["image"]
    finally:
        vector.close()
    fresh = {}
    for seed in (2, 4):
        single = VectorEnv("toy_catch", 2, seed=seed, parallel=False)
        fresh[seed] = single.reset()["image"]
        single.close()
    assert not np.array_equal(fresh[2], fresh[4])  # the seeds are told apart by their first frames
    np.testing.assert_array_equal(restarted, fresh[4])
