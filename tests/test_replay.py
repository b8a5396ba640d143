"""Replay: disk round trip, eviction, window sampling, restart, corrupt files, prefetch."""

import os
import threading
import tracemalloc

import numpy as np
import pytest
import torch

from mwm.errors import UserError
from replay import Replay
from replay.episodes import list_episode_files

HW = (6, 6, 3)


def make_steps(length, episode_id, actions=2, hw=HW):
    """Protocol steps of one episode; extras ``episode_id`` (constant) and ``t`` (step index)."""
    rng = np.random.default_rng(episode_id)
    steps = []
    for t in range(length):
        steps.append(
            {
                "image": rng.integers(0, 256, hw, dtype=np.uint8),
                "action": np.eye(actions, dtype=np.float32)[t % actions] * (t > 0),
                "reward": np.float32(0.0 if t == 0 else rng.normal()),
                "is_first": t == 0,
                "is_last": t == length - 1,
                "is_terminal": t == length - 1 and episode_id % 2 == 0,
                "episode_id": np.int32(episode_id),
                "t": np.int32(t),
            }
        )
    return steps


def make_episode(length, episode_id):
    steps = make_steps(length, episode_id)
    return {key: np.stack([np.asarray(s[key]) for s in steps]) for key in steps[0]}


def add_steps(replay, steps, worker=0):
    for step in steps:
        replay.add(step, worker=worker)


def test_steps_round_trip_through_disk_into_a_new_replay(tmp_path):
    replay = Replay(tmp_path, capacity=1000, seed=0)
    add_steps(replay, make_steps(7, episode_id=1))
    add_steps(replay, make_steps(12, episode_id=2))
    files = list_episode_files(str(tmp_path))
    assert [f.length for f in files] == [7, 12]
    assert [f.index for f in files] == [0, 1]
    expected = make_episode(12, episode_id=2)
    with np.load(files[1].path) as data:
        assert sorted(data.files) == sorted(expected)
        for key, value in expected.items():
            np.testing.assert_array_equal(data[key], value)
            assert data[key].dtype == value.dtype or key in ("is_first", "is_last", "is_terminal")
    restarted = Replay(tmp_path, capacity=1000, seed=0)
    assert restarted.load() == 19
    assert (restarted.num_steps, restarted.num_episodes) == (19, 2)
    whole = restarted.sample(batch=1, length=12)  # only episode 2 is long enough
    for key, value in expected.items():
        np.testing.assert_array_equal(whole[key][0], value)
    assert whole["image"].dtype == np.uint8 and whole["reward"].dtype == np.float32


def test_capacity_evicts_oldest_from_ram_but_keeps_every_file(tmp_path):
    replay = Replay(tmp_path, capacity=25, seed=0)
    for episode_id in range(5):
        add_steps(replay, make_steps(10, episode_id))
        assert replay.num_steps <= 25
    assert (replay.num_steps, replay.num_episodes) == (20, 2)
    assert len(list_episode_files(str(tmp_path))) == 5
    ids = replay.sample(batch=64, length=4)["episode_id"]
    assert set(np.unique(ids)) == {3, 4}
    assert replay.stats()["episodes_evicted"] == 3


def test_windows_never_cross_episodes_and_is_first_only_at_episode_start(tmp_path):
    replay = Replay(tmp_path, capacity=1000, seed=3)
    for episode_id, length in enumerate([3, 8, 5, 13]):
        add_steps(replay, make_steps(length, episode_id))
    batch = replay.sample(batch=500, length=5)
    ids, t = batch["episode_id"], batch["t"]  # (B, T)
    assert (ids == ids[:, :1]).all()
    np.testing.assert_array_equal(t, t[:, :1] + np.arange(5))
    np.testing.assert_array_equal(batch["is_first"][:, 0], t[:, 0] == 0)
    assert not batch["is_first"][:, 1:].any()
    assert 0 not in ids  # 3 steps: shorter than the window, never sampled
    assert (batch["t"][:, 0] == 0).any() and (batch["is_last"][:, -1]).any()


def test_sampling_is_uniform_over_windows(tmp_path):
    replay = Replay(tmp_path, capacity=1000, seed=0)
    lengths, window = [5, 10, 20], 5
    for episode_id, length in enumerate(lengths):
        replay.add_episode(make_episode(length, episode_id), save=False)
    cells = [(e, s) for e, n in enumerate(lengths) for s in range(n - window + 1)]  # 23 windows
    draws = 23 * 400
    batch = replay.sample(batch=draws, length=window)
    observed = {cell: 0 for cell in cells}
    for e, s in zip(batch["episode_id"][:, 0].tolist(), batch["t"][:, 0].tolist()):
        observed[(e, s)] += 1
    expected = draws / len(cells)
    chi2 = sum((count - expected) ** 2 / expected for count in observed.values())
    assert chi2 < 48.3  # chi-square, 22 degrees of freedom, p = 0.001


def test_prioritize_ends_oversamples_windows_that_end_an_episode(tmp_path):
    replay = Replay(tmp_path, capacity=1000, seed=0)
    replay.add_episode(make_episode(20, 0), save=False)
    uniform = replay.sample(4000, 5)["is_last"][:, -1].mean()
    ends = replay.sample(4000, 5, prioritize_ends=True)["is_last"][:, -1].mean()
    assert abs(uniform - 1 / 16) < 0.02
    assert abs(ends - 5 / 20) < 0.03  # DreamerV2: start ~ U{0..19} clipped to 15


def test_sampling_is_reproducible_from_the_seed(tmp_path):
    batches = []
    for run in range(2):
        replay = Replay(tmp_path / str(run), capacity=1000, seed=7)
        for episode_id in range(3):
            replay.add_episode(make_episode(9 + episode_id, episode_id), save=False)
        batches.append(replay.sample(8, 4)["t"])
    np.testing.assert_array_equal(batches[0], batches[1])


def test_restart_loads_newest_files_up_to_capacity_and_continues_numbering(tmp_path):
    first = Replay(tmp_path, capacity=1000, seed=0)
    for episode_id in range(4):
        add_steps(first, make_steps(10, episode_id))
    restarted = Replay(tmp_path, capacity=25, seed=0)
    assert restarted.load() == 40
    assert (restarted.num_steps, restarted.num_episodes) == (20, 2)
    assert set(np.unique(restarted.sample(64, 3)["episode_id"])) == {2, 3}
    assert restarted.load() == 40 and restarted.num_steps == 20  # no duplicates
    add_steps(restarted, make_steps(10, 9))
    assert list_episode_files(str(tmp_path))[-1].index == 4
    limited = Replay(tmp_path, capacity=1000, seed=0)
    limited.load(max_steps=15)
    assert limited.num_episodes == 1


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing_key", "bad_length"])
def test_corrupt_episode_file_is_skipped_with_a_warning_and_kept(tmp_path, damage):
    replay = Replay(tmp_path, capacity=1000, seed=0)
    for episode_id in range(3):
        add_steps(replay, make_steps(6, episode_id))
    victim = list_episode_files(str(tmp_path))[1].path
    data = open(victim, "rb").read()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes()
    if damage in ("truncated", "garbage"):
        with open(victim, "wb") as f:
            f.write(data)
    else:
        episode = make_episode(6, 1)
        if damage == "missing_key":
            del episode["is_terminal"]
        else:
            episode["reward"] = episode["reward"][:-1]
        np.savez_compressed(open(victim, "wb"), **episode)
    (tmp_path / ".20990101T000000000000-9-6.npz.abc.tmp").write_bytes(b"partial")
    restarted = Replay(tmp_path, capacity=1000, seed=0)
    with pytest.warns(UserWarning, match=os.path.basename(victim)):
        restarted.load()
    assert restarted.num_episodes == 2
    assert set(np.unique(restarted.sample(32, 6)["episode_id"])) == {0, 2}
    assert os.path.exists(victim)
    assert restarted.stats()["files_skipped"] == 1


def test_dataset_yields_tensors_while_steps_are_added_and_closes(tmp_path):
    replay = Replay(tmp_path, capacity=200, seed=0)
    add_steps(replay, make_steps(12, 0))
    data = replay.dataset(batch=3, length=4, prefetch=2)
    adder = threading.Thread(target=lambda: [add_steps(replay, make_steps(12, i)) for i in range(1, 25)])
    adder.start()
    for _ in range(20):
        batch = next(data)
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 4) + HW
        assert batch["is_first"].dtype == torch.bool
        assert (batch["episode_id"] == batch["episode_id"][:, :1]).all()
    adder.join()
    data.close()
    assert not data.running
    with pytest.raises(StopIteration):
        next(data)


def test_dataset_reraises_sampling_errors(tmp_path):
    replay = Replay(tmp_path, capacity=100, seed=0)
    with replay.dataset(batch=2, length=4) as data:
        with pytest.raises(UserError, match="no episode of 4 or more steps"):
            next(data)


def test_ongoing_episodes_are_sampled_only_when_enabled(tmp_path):
    for ongoing in (False, True):
        replay = Replay(tmp_path / str(ongoing), capacity=100, seed=0, ongoing=ongoing)
        add_steps(replay, make_steps(8, 0))
        add_steps(replay, make_steps(20, 1)[:9], worker=1)  # unfinished
        ids = replay.sample(200, 4)["episode_id"]
        assert (1 in ids) == ongoing
        assert replay.stats()["ongoing_steps"] == 9


def test_add_batch_routes_rows_to_workers(tmp_path):
    replay = Replay(tmp_path, capacity=100, seed=0)
    a, b = make_steps(5, 0), make_steps(5, 1)
    for sa, sb in zip(a, b):
        replay.add_batch({key: np.stack([np.asarray(sa[key]), np.asarray(sb[key])]) for key in sa})
    assert replay.num_episodes == 2
    batch = replay.sample(50, 5)
    assert set(np.unique(batch["episode_id"])) == {0, 1}
    np.testing.assert_array_equal(batch["t"][0], np.arange(5))


def test_protocol_mistakes_raise_user_errors(tmp_path):
    replay = Replay(tmp_path, capacity=100, seed=0)
    steps = make_steps(4, 0)
    with pytest.raises(UserError, match="is_first=False"):
        replay.add(steps[1])
    float_image = dict(steps[0], image=steps[0]["image"].astype(np.float32))
    with pytest.raises(UserError, match="uint8"):
        replay.add(float_image)
    with pytest.raises(UserError, match="lacks keys"):
        replay.add({k: v for k, v in steps[0].items() if k != "action"})
    with pytest.raises(UserError, match="capacity"):
        Replay(tmp_path, capacity=0, seed=0)
    with pytest.warns(UserWarning, match="dropping its 2 unfinished steps"):
        add_steps(replay, steps[:2] + steps)
    assert replay.num_steps == 4


def test_ram_holds_raw_arrays_without_per_step_overhead(tmp_path):
    replay = Replay(tmp_path, capacity=10_000, seed=0)
    steps = [make_steps(150, i, hw=(16, 16, 3)) for i in range(6)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for episode in steps:
        add_steps(replay, episode)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    raw = sum(np.asarray(s[k]).nbytes for episode in steps for s in episode for k in s)
    assert replay.stats()["ram_bytes"] == raw
    assert used < 1.05 * raw
