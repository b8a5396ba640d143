"""Frame sources: random and trained policies, and a run's replay; labels and splits."""

import numpy as np
import pytest
import torch

from mwm.errors import UserError
from mwm.probes.annotations import labels_for
from mwm.probes.frames import from_episodes, sample_windows, split_episodes, window_starts
from mwm.probes.sources import collect_episodes, replay_episodes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_random_collection_is_seeded_and_labelled_from_the_env():
    a = collect_episodes("toy_catch", {"object_size": 5}, 2, 15, seed=1)
    b = collect_episodes("toy_catch", {"object_size": 5}, 2, 15, seed=1)
    assert [len(ep["image"]) for ep in a] == [16, 16]  # reset frame + 15 steps
    assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, b))
    labels = labels_for("toy_catch", a[0], margin=1)
    top, left, bottom, right = labels.boxes[3]
    assert bottom - top == 5 and right - left == 5  # toy boxes are exact: no margin
    patch = a[0]["image"][3, top:bottom, left:right]
    assert (patch == (255, 96, 32)).all()  # the object's colour fills its box
    assert labels.targets["object_col"][3] == left and labels.sizes[3] == 5


def test_split_is_by_whole_episodes_and_windows_stay_inside_one():
    episodes = collect_episodes("toy_catch", {}, 4, 12, seed=0)
    frames = from_episodes(episodes, [labels_for("toy_catch", ep, 1) for ep in episodes])
    train, test = split_episodes(frames, 1)
    assert set(train.episode) == {0, 1, 2} and set(test.episode) == {3}
    assert len(train) + len(test) == len(frames)
    starts = window_starts(train, 5)
    assert all(train.episode[s] == train.episode[s + 4] for s in starts)
    assert len(starts) == 3 * (13 - 4)
    batch = sample_windows(train, 6, 5, np.random.default_rng(0))
    assert batch["image"].shape == (6, 5, 64, 64, 3) and batch["reward"].shape == (6, 5)
    with pytest.raises(UserError, match="cannot hold out"):
        split_episodes(frames, 4)


def test_a_trained_runs_policy_collects_frames(tmp_path):
    import envs
    from agents import make_agent
    from mwm.run_dir import prepare_run

    run = prepare_run("toy_catch", "mwm", "tiny", [f"run.logdir={tmp_path / 'run'}"], check_env=False)
    env = envs.make("toy_catch", seed=0)
    agent = make_agent(run.cfg, env.observation_space, env.action_space, run.device)
    run.save(agent, {"step": 0, "updates": 0, "episodes": 0, "pretrained": False})
    episodes = collect_episodes("toy_catch", {}, 2, 8, seed=0, policy_dir=str(tmp_path / "run"),
                                device=torch.device("cpu"))
    assert [len(ep["image"]) for ep in episodes] == [9, 9]
    with pytest.raises(UserError, match="not a run directory"):
        collect_episodes("toy_catch", {}, 1, 8, seed=0, policy_dir=str(tmp_path))


def test_replay_source_needs_enough_episodes(tmp_path):
    from replay.episodes import save_episode

    for index, episode in enumerate(collect_episodes("toy_catch", {}, 2, 6, seed=0)):
        n = len(episode["image"])
        episode.update(action=np.zeros((n, 3), np.float32), is_first=np.arange(n) == 0,
                       is_last=np.arange(n) == n - 1, is_terminal=np.zeros(n, bool))
        save_episode(str(tmp_path), episode, index)
    assert len(replay_episodes(str(tmp_path), 2)) == 2
    with pytest.raises(UserError, match="holds 2 readable episodes"):
        replay_episodes(str(tmp_path), 3)


def test_replay_source_reads_rank_0s_shard_of_a_torchrun_run(tmp_path):
    from replay.episodes import save_episode

    shard = tmp_path / "run" / "replay" / "rank0"
    shard.mkdir(parents=True)
    (tmp_path / "run" / "replay" / "rank1").mkdir()
    for index, episode in enumerate(collect_episodes("toy_catch", {}, 2, 6, seed=0)):
        n = len(episode["image"])
        episode.update(action=np.zeros((n, 3), np.float32), is_first=np.arange(n) == 0,
                       is_last=np.arange(n) == n - 1, is_terminal=np.zeros(n, bool))
        save_episode(str(shard), episode, index)
    assert len(replay_episodes(str(tmp_path / "run"), 2)) == 2
