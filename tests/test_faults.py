"""Fault injection: kills, signals, damaged files, a full disk, NaNs and crashed env workers.

What "lose nothing" means here (see mwm/train.py): a checkpoint ``checkpoint-<S>.pt`` is a
consistent snapshot (its counters say step S, and its optimisers have made exactly
``counters["updates"]`` updates); a restart resumes from the newest intact checkpoint;
every episode that was completed before a crash is still in replay afterwards; no file
under its final name is ever half-written (a crash leaves at most a hidden temp file,
removed on restart); and the run goes on to its last step.

The crash suite is one run directory driven through a chain of processes, each killed
at a different point (deterministic points through ``MWM_KILL_AT``, see mwm/faults.py,
then kills and stops at random times), each resuming the previous one.
"""

from __future__ import annotations

import errno
import hashlib
import random
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_runs import (
    TINY_RUN,
    checkpoint_files,
    describe,
    killed,
    load_counters,
    main_exit_code,
    metrics_rows,
    one_error_line,
    override,
    run_and_signal,
    run_train,
    temp_files,
)

from mwm import cli
from mwm import train as train_mod
from mwm.checkpoint import all_finite, load_latest
from mwm.errors import UserError
from mwm.nonfinite import NonFiniteGuard
from mwm.run_dir import RunDir
from replay import Replay
from replay.episodes import list_episode_files, load_episode

STEPS, PREFILL, PRETRAIN = 70, 30, 2
CHAIN = [*TINY_RUN, "--steps", str(STEPS), "--run.prefill", str(PREFILL)]
GARBAGE_EPISODE = "20000101T000000000000-999-9.npz"  # an episode file name holding junk


# --------------------------------------------------------------------------- checks


def intact_episodes(logdir: Path) -> set:
    """Names of the episode files in replay/ that load and validate (the planted junk excluded)."""
    names = set()
    for file in list_episode_files(str(logdir / "replay")):
        if Path(file.path).name == GARBAGE_EPISODE:
            continue
        load_episode(file.path, expected_length=file.length)  # raises on a half-written file
        names.add(Path(file.path).name)
    return names


def check_consistent(logdir: Path, episodes_before: set) -> set:
    """The invariants that must hold after any crash; returns the intact episode names."""
    episodes = intact_episodes(logdir)
    assert episodes_before <= episodes, f"completed episodes lost: {sorted(episodes_before - episodes)}"
    for step, path in checkpoint_files(logdir).items():
        counters = load_counters(path)
        assert counters["step"] == step, (path, counters)
        opt = counters["optimizer_updates"]
        assert opt["mae"] == counters["updates"], counters  # every update trains the autoencoder
        assert opt["wm"] == counters["updates"] - counters["pretrain_updates"], counters
        assert counters["pretrained"] == (counters["pretrain_updates"] >= PRETRAIN), counters
        assert counters["episodes"] <= len(episodes), counters
    for row in metrics_rows(logdir):  # every line parses: no torn log line
        assert isinstance(row["step"], int)
    return episodes


def newest(logdir: Path) -> int:
    return max(checkpoint_files(logdir))


def assert_resumed_from(result, step: int) -> None:
    assert f"checkpoint-{step}.pt at step {step}" in result.stdout, describe(result)


# --------------------------------------------------------------------------- the crash chain


def test_kills_at_many_points_lose_nothing(tmp_path):
    logdir = tmp_path / "run"
    rng = random.Random(7)

    # 1. SIGKILL during prefill (step 23): checkpoints 10 and 20, two episodes.
    result = run_train(logdir, *CHAIN, kill_at="step:23")
    assert killed(result) and "fault injection: SIGKILL at step:23" in result.stderr, describe(result)
    episodes = check_consistent(logdir, set())
    assert sorted(checkpoint_files(logdir)) == [10, 20] and len(episodes) == 2

    # 2. SIGKILL while an episode file is being written (past prefill: pre-training ran).
    result = run_train(logdir, *CHAIN, kill_at="write:*-3-*.npz")
    assert killed(result) and "SIGKILL at write:" in result.stderr, describe(result)
    assert_resumed_from(result, 20)
    assert "pre-training" in result.stdout
    (leftover,) = temp_files(logdir / "replay")  # the interrupted write, never under its final name
    assert not any("-3-" in name for name in episodes | intact_episodes(logdir))
    episodes = check_consistent(logdir, episodes)
    assert newest(logdir) == 30

    # Damage the newest checkpoint and plant a junk episode file before the next start.
    damaged = checkpoint_files(logdir)[30]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    (logdir / "replay" / GARBAGE_EPISODE).write_bytes(b"not an npz file")

    # 3. SIGKILL during an update (the 7th: weights changed, not yet counted).
    result = run_train(logdir, *CHAIN, kill_at="update:6")
    assert killed(result) and "SIGKILL at update:6" in result.stderr, describe(result)
    assert "skipping damaged checkpoint" in result.stderr and str(damaged) in result.stderr, describe(result)
    assert "skipping episode file" in result.stderr and GARBAGE_EPISODE in result.stderr, describe(result)
    assert "unfinished temp file" in result.stderr and leftover in result.stderr, describe(result)
    assert_resumed_from(result, 20)  # the damaged 30 was skipped; 20 is the newest intact one
    assert not temp_files(logdir / "replay")
    episodes = check_consistent(logdir, episodes)
    assert newest(logdir) == 40 and load_counters(checkpoint_files(logdir)[30])["step"] == 30  # 30 rewritten

    # 4. SIGKILL while a checkpoint is being written: the older two stay intact.
    before = {step: hashlib.sha256(path.read_bytes()).hexdigest() for step, path in checkpoint_files(logdir).items()}
    result = run_train(logdir, *CHAIN, kill_at="write:checkpoint-*.pt")
    assert killed(result) and "SIGKILL at write:checkpoint-50.pt" in result.stderr, describe(result)
    assert_resumed_from(result, 40)
    assert len(temp_files(logdir / "checkpoints")) == 1
    after = {step: hashlib.sha256(path.read_bytes()).hexdigest() for step, path in checkpoint_files(logdir).items()}
    assert after == before
    episodes = check_consistent(logdir, episodes)

    # 5. SIGKILL at a random moment of the resumed run.
    result = run_and_signal(logdir, *CHAIN, sig=signal.SIGKILL, delay=rng.uniform(0.2, 2.5))
    assert killed(result) or result.returncode == 0, describe(result)
    assert_resumed_from(result, 40)
    episodes = check_consistent(logdir, episodes)

    # 6. SIGTERM at a random moment: a clean stop with a final checkpoint at the step reached.
    resumed_at = newest(logdir)
    result = run_and_signal(logdir, *CHAIN, sig=signal.SIGTERM, delay=rng.uniform(0.2, 2.5))
    assert result.returncode == 0, describe(result)
    episodes = check_consistent(logdir, episodes)
    if "stopped by SIGTERM" in result.stdout:
        done = int(result.stdout.split("done: ")[1].split(" agent steps")[0])
        assert newest(logdir) == done >= resumed_at, describe(result)

    # 7. Run to the end: training continues from the newest checkpoint to the last step,
    # with every episode on disk back in replay (its first log counts their steps).
    resumed_at, rows_before = newest(logdir), len(metrics_rows(logdir))
    on_disk = sum(int(name.split("-")[2].split(".")[0]) for name in episodes)
    result = run_train(logdir, *CHAIN)
    assert result.returncode == 0, describe(result)
    if resumed_at < STEPS:
        assert_resumed_from(result, resumed_at)
        assert metrics_rows(logdir)[rows_before]["replay/steps"] >= on_disk
    episodes = check_consistent(logdir, episodes)
    final = load_counters(checkpoint_files(logdir)[STEPS])
    assert final["pretrained"] and final["updates"] > PRETRAIN, final
    assert not temp_files(logdir / "replay") and not temp_files(logdir / "checkpoints")
    assert len(episodes) >= final["episodes"] >= 4


# --------------------------------------------------------------------------- in-process runs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """In-process runs use one torch thread, as the child runs do (OMP_NUM_THREADS=1): on a
    shared CPU, spin-waiting intra-op threads make tiny networks many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_only(logdir: Path, steps: int = 40) -> list:
    """A run that never leaves prefill: cheap (no policy forward passes, no updates)."""
    return ["--logdir", str(logdir), *TINY_RUN, "--steps", str(steps), "--run.prefill", str(steps)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly_with_a_final_checkpoint(tmp_path, monkeypatch, capsys, restore_signals, sig):
    def signal_at_step_15(point, tag):
        if point == "step" and tag == 15:
            signal.raise_signal(sig)

    monkeypatch.setattr(train_mod, "maybe_kill", signal_at_step_15)
    assert main_exit_code(random_only(tmp_path / "run")) == 0
    out = capsys.readouterr()
    assert f"stopped by {signal.Signals(sig).name}" in out.out and "done: 15 agent steps" in out.out
    assert sorted(checkpoint_files(tmp_path / "run")) == [10, 15]
    assert load_counters(checkpoint_files(tmp_path / "run")[15])["step"] == 15


def test_a_second_interrupt_stops_at_once_with_one_line(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(interrupted)
    assert exit_info.value.code == 130
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def file_hashes(folder: Path) -> dict:
    """name -> sha256 of every file in ``folder`` (hidden temp files included)."""
    if not folder.is_dir():
        return {}
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("target", ["checkpoint-30.pt", "*-3-*.npz", "metrics.jsonl"])
def test_full_disk_is_one_line_and_earlier_files_stay(tmp_path, monkeypatch, capsys, restore_signals, target):
    """ENOSPC while writing a checkpoint, an episode or the metrics log."""
    logdir = tmp_path / "run"
    snapshots = {}

    def fill_disk(filename=None):
        """Remember what is on disk now, then fail like a full disk."""
        for folder in ("checkpoints", "replay"):  # the files under their final names
            snapshots[folder] = {k: v for k, v in file_hashes(logdir / folder).items() if not k.startswith(".")}
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    def full_disk(point, tag):
        if point == "write" and Path(tag).match(target):
            fill_disk()

    def full_disk_log(self, step=None):
        fill_disk(str(logdir / "metrics.jsonl"))

    monkeypatch.setattr(train_mod, "maybe_kill", full_disk)
    monkeypatch.setattr("mwm.atomic.maybe_kill", full_disk)
    if target == "metrics.jsonl":
        monkeypatch.setattr("mwm.logger.Logger.write", full_disk_log)
    assert main_exit_code(random_only(logdir)) == 2
    err = capsys.readouterr().err
    line = one_error_line(err, ["no space left on device", "free disk space"])
    assert target.strip("*").split("*")[-1] in line
    for folder in ("checkpoints", "replay"):  # what was there when the disk filled up is intact, no temp file
        assert file_hashes(logdir / folder) == snapshots[folder], folder
    assert len(snapshots["replay"]) >= 1 and (target == "metrics.jsonl" or len(snapshots["checkpoints"]) == 2)


def poison_mae_loss(monkeypatch, bad_calls) -> list:
    """Make the autoencoder's loss NaN on the given (1-based) calls; returns the call log."""
    from mwm.mae import MaskedAutoencoder

    calls = []
    original = MaskedAutoencoder.loss

    def poisoned(self, *args, **kwargs):
        loss, metrics = original(self, *args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) in bad_calls else loss), metrics

    monkeypatch.setattr(MaskedAutoencoder, "loss", poisoned)
    return calls


def test_a_few_nonfinite_updates_are_skipped_logged_and_survived(tmp_path, monkeypatch, capsys, restore_signals):
    poison_mae_loss(monkeypatch, (1, 2))
    logdir = tmp_path / "run"
    argv = ["--logdir", str(logdir), *override(TINY_RUN, "--steps", "25", "--run.prefill", "20", "--run.pretrain", "4",
                                               "--run.max_nonfinite", "3")]
    assert main_exit_code(argv) == 0
    assert capsys.readouterr().err.count("update skipped") == 2
    assert metrics_rows(logdir)[-1]["train/nonfinite_total"] == 2
    final = load_counters(checkpoint_files(logdir)[25])
    assert final["optimizer_updates"]["mae"] == final["updates"] == 6  # skipped updates still count
    assert all_finite(torch.load(checkpoint_files(logdir)[25], weights_only=True))


def test_nonfinite_updates_are_skipped_then_stop_the_run(tmp_path, monkeypatch, capsys, restore_signals):
    calls = poison_mae_loss(monkeypatch, (1, 2, 4, 5, 6))
    logdir = tmp_path / "run"
    argv = ["--logdir", str(logdir), *override(TINY_RUN, "--steps", "40", "--run.prefill", "20", "--run.pretrain", "8",
                                               "--run.max_nonfinite", "3")]
    checkpoint_10 = None

    def remember(point, tag):
        nonlocal checkpoint_10
        if point == "step" and tag == 20:
            checkpoint_10 = hashlib.sha256(checkpoint_files(logdir)[10].read_bytes()).hexdigest()

    monkeypatch.setattr(train_mod, "maybe_kill", remember)
    assert main_exit_code(argv) == 2
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if "update skipped" in line]
    assert len(skipped) == 5 and "mae/nonfinite" in skipped[0]  # 2 in a row, a good one, then 3
    assert "(3 in a row, limit 3)" in skipped[-1]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 3 non-finite updates in a row")
    # the advice is true (that checkpoint exists and is kept) and can be followed (see below)
    assert f"{checkpoint_files(logdir)[10]} (step 10) is kept" in last and "--mae.lr 0.00015" in last, last
    assert len(calls) == 6  # stopped at the third in a row, not later
    assert list(checkpoint_files(logdir)) == [10]  # nothing written after the divergence
    assert hashlib.sha256(checkpoint_files(logdir)[10].read_bytes()).hexdigest() == checkpoint_10
    # following it: lower learning rates (and other optimiser settings) are accepted on resume
    from mwm.run_dir import prepare_run

    args, overrides = train_mod.parse_args(argv + ["--mae.lr", "0.00015", "--wm.lr", "1e-4", "--ac.actor_lr",
                                                   "5e-5", "--mae.eps", "1e-6", "--wm.clip", "50"])
    prepare_run(args.env, args.agent, args.preset, overrides, check_env=False).close()


def test_nonfinite_advice_without_a_checkpoint_says_so(tmp_path):
    from mwm import config as config_lib
    from mwm.train import divergence_advice

    cfg = config_lib.build("toy_catch", "dreamerv2", "tiny", [])
    advice = divergence_advice(RunDir(tmp_path, cfg, torch.device("cpu"), resumed=False))
    assert "before its first checkpoint" in advice and "start from step 0" in advice and "kept" not in advice
    assert "--wm.lr" in advice and "--mae.lr" not in advice  # dreamerv2 has no autoencoder


def test_optimiser_settings_come_from_the_config_on_resume():
    from mwm.optim import Optimizer

    old = Optimizer("a", [torch.nn.Parameter(torch.ones(3))], lr=1e-3, eps=1e-5)
    new = Optimizer("a", [torch.nn.Parameter(torch.ones(3))], lr=2e-4, eps=1e-3)
    new.load_state_dict(old.state_dict())
    assert new.adam.param_groups[0]["eps"] == 1e-3 and new.current_lr() == pytest.approx(2e-4)


def streak(n: int) -> dict:
    """Metrics of an update after ``n`` skipped updates in a row (the optimiser's streak)."""
    return {"mae/nonfinite": torch.tensor(float(n)), "model/nonfinite": torch.tensor(0.0)}


def test_nonfinite_guard_counts_in_a_row():
    guard = NonFiniteGuard(limit=2)
    bad = streak(1)
    assert guard.check(bad, 1) is bad and guard.total == 1
    guard.check(streak(0), 2)
    guard.check(streak(1), 3)
    with pytest.raises(UserError, match="2 non-finite updates in a row"):
        guard.check(streak(2), 4)


def test_nonfinite_guard_reading_every_n_updates_misses_no_streak():
    guard = NonFiniteGuard(limit=3, read_every=4)  # as on CUDA: one host read per 4 updates
    for n in (0, 1, 2):  # three updates between reads: nothing read
        guard.check(streak(n), n)
    with pytest.raises(UserError, match="3 non-finite updates in a row"):
        guard.check(streak(3), 3)  # the 4th update is read: the streak reached the limit
    guard = NonFiniteGuard(limit=3, read_every=4)
    for n in (1, 0, 0, 0):  # a single skip between reads, since recovered
        guard.check(streak(n), n)
    assert guard.in_row == 0


def test_a_checkpoint_is_never_written_with_nonfinite_weights(tmp_path):
    run = RunDir(tmp_path, cfg=None, device=torch.device("cpu"), resumed=False)
    agent = torch.nn.Linear(3, 2)
    good = run.save(agent, {"step": 10, "updates": 1})
    digest = hashlib.sha256(Path(good).read_bytes()).hexdigest()
    with torch.no_grad():
        agent.weight[0, 0] = float("inf")
    with pytest.raises(UserError, match="weight' holds NaN or inf"):
        run.save(agent, {"step": 20, "updates": 2})
    assert sorted(checkpoint_files(tmp_path)) == [10] and not temp_files(tmp_path / "checkpoints")
    assert hashlib.sha256(Path(good).read_bytes()).hexdigest() == digest


def test_damaged_files_are_skipped_with_a_warning_naming_them(tmp_path):
    from mwm.checkpoint import save_checkpoint

    replay = Replay(tmp_path / "replay", capacity=1000, seed=0)
    steps = 5
    for _ in range(2):
        replay.add_episode({"image": np.zeros((steps, 4, 4, 3), np.uint8), "action": np.zeros((steps, 2)),
                            "reward": np.zeros(steps), "is_first": np.arange(steps) == 0,
                            "is_last": np.arange(steps) == steps - 1, "is_terminal": np.zeros(steps, bool)})
    files = list_episode_files(str(tmp_path / "replay"))
    Path(files[0].path).write_bytes(Path(files[0].path).read_bytes()[:100])  # truncated
    save_checkpoint(str(tmp_path / "ckpt"), {"w": torch.ones(3)}, step=1)
    newest_path = save_checkpoint(str(tmp_path / "ckpt"), {"w": torch.ones(3)}, step=2)
    Path(newest_path).write_bytes(Path(newest_path).read_bytes()[:-50])

    fresh = Replay(tmp_path / "replay", capacity=1000, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh.load()
        _, path = load_latest(str(tmp_path / "ckpt"))
    messages = [str(w.message) for w in caught]
    assert any(files[0].path in m for m in messages) and fresh.num_episodes == 1
    assert any(newest_path in m for m in messages) and path.endswith("checkpoint-1.pt")


def test_a_crashed_env_worker_is_restarted_and_replay_stays_valid(tmp_path):
    import os

    from envs.vector import VectorEnv
    from mwm.collect import Collector, random_actions

    env = VectorEnv("toy_catch", 2, seed=0, parallel=True, timeout=20.0, time_limit=6)
    replay = Replay(tmp_path / "replay", capacity=1000, seed=0)
    rng = np.random.default_rng(0)
    try:
        collector = Collector(env, replay, agent=None)

        def policy(obs):
            return random_actions(env.act_space, env.num_envs, rng)

        for _ in range(3):
            collector.step(policy)
        os.kill(env._env.processes[0].pid, signal.SIGKILL)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            obs = collector.step(policy)  # a reset batch; each worker had 4 steps (reset + 3)
            for _ in range(15):
                collector.step(policy)
        assert obs["is_first"].all() and env.restarts == 1
        assert sum("dropping its 4 unfinished steps" in str(w.message) for w in caught) == 2
    finally:
        env.close()
    files = list_episode_files(str(tmp_path / "replay"))
    assert len(files) == 4 and all(f.length == 7 for f in files)  # whole episodes only, after the restart
    for file in files:
        assert load_episode(file.path)["is_first"][0]


def test_fault_hook_fires_only_on_its_point_and_pattern(monkeypatch):
    import os

    from mwm import faults

    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append(sig))
    faults.maybe_kill("write", "checkpoint-10.pt")  # MWM_KILL_AT unset: nothing
    monkeypatch.setenv(faults.ENV_VAR, "write:checkpoint-*.pt")
    faults.maybe_kill("write", "20260101T000000000000-3-9.npz")
    faults.maybe_kill("step", "checkpoint-10.pt")
    assert sent == []
    faults.maybe_kill("write", "checkpoint-10.pt")
    assert sent == [signal.SIGKILL]


# --------------------------------------------------------------------------- round two (issue 12)


def test_only_our_own_stale_temp_files_are_ever_removed(tmp_path, monkeypatch):
    """A user's ``.notes.tmp`` (or anything not named by mwm.atomic, or whose writer still
    runs) is never removed; the writers name their temp files so that this is certain."""
    import os
    import subprocess
    import sys

    from mwm import atomic

    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    stale = f".checkpoint-10.pt{atomic.TEMP_MARK}{gone.pid}-abcd1234.tmp"
    keep = [".notes.tmp", ".checkpoint-10.pt.abcd1234.tmp",  # a user's; the old, too general pattern
            f".config.yaml{atomic.TEMP_MARK}{os.getppid()}-abcd1234.tmp",  # its writer is alive
            f"notes{atomic.TEMP_MARK}{gone.pid}-abcd1234.tmp",  # not hidden
            f".a{atomic.TEMP_MARK}{gone.pid}-abcd1234.tmp.bak"]
    for name in [stale, *keep]:
        (tmp_path / name).write_text("x")
    (tmp_path / f".l{atomic.TEMP_MARK}{gone.pid}-abcd1234.tmp").symlink_to(tmp_path / ".notes.tmp")
    (tmp_path / f".d{atomic.TEMP_MARK}{gone.pid}-abcd1234.tmp").mkdir()
    assert atomic.remove_stale_temp_files(str(tmp_path)) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        keep + [f".l{atomic.TEMP_MARK}{gone.pid}-abcd1234.tmp", f".d{atomic.TEMP_MARK}{gone.pid}-abcd1234.tmp"])

    seen = []
    monkeypatch.setattr(atomic, "maybe_kill", lambda point, tag: seen.extend(os.listdir(tmp_path / "w")))
    atomic.atomic_write_text(str(tmp_path / "w" / "config.yaml"), "a: 1\n")
    (temp,) = seen
    assert atomic.is_temp_name(temp) and f"{atomic.TEMP_MARK}{os.getpid()}-" in temp


def test_damaged_checkpoints_are_refused_and_never_deleted(tmp_path, capsys, restore_signals):
    logdir = tmp_path / "run"

    def upto(steps: int) -> list:
        return override(random_only(logdir, steps=40), "--steps", str(steps))

    assert main_exit_code(upto(20)) == 0
    # A valid zip that is not a checkpoint of this run, as the newest file: the run falls back
    # to the intact one before it (no crash) and goes on.
    torch.save({"weights": torch.ones(3)}, checkpoint_files(logdir)[20])
    assert main_exit_code(upto(30)) == 0
    out = capsys.readouterr()
    assert "skipping damaged checkpoint" in out.err and "checkpoint-20.pt (not a checkpoint" in out.err
    assert_resumed_from(subprocess_like(out), 10)
    assert sorted(checkpoint_files(logdir)) == [20, 30]
    # Every checkpoint damaged: one line naming them, nothing deleted or rewritten.
    for path in checkpoint_files(logdir).values():
        path.write_bytes(path.read_bytes()[:300])
    before = file_hashes(logdir / "checkpoints")
    for extra in ([], ["--resume"]):
        assert main_exit_code(upto(40) + extra) == 2
        one_error_line(capsys.readouterr().err, ["no intact checkpoint", "checkpoint-30.pt, checkpoint-20.pt",
                                                 "restore", "move them away"])
        assert file_hashes(logdir / "checkpoints") == before


def subprocess_like(captured):
    """capsys output in the shape the subprocess helpers assert on."""
    import subprocess

    return subprocess.CompletedProcess([], 0, captured.out, captured.err)


def test_rotation_deletes_only_checkpoints_a_newer_intact_one_supersedes(tmp_path):
    from mwm.checkpoint import save_checkpoint

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "checkpoint-50.pt").write_bytes(b"damaged, from before a resume")
    for step in (10, 20, 30):
        save_checkpoint(str(folder), {"w": torch.ones(1)}, step=step)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-20.pt", "checkpoint-30.pt", "checkpoint-50.pt"]


def test_sigint_stops_a_run_with_parallel_envs(tmp_path, monkeypatch, capsys, restore_signals):
    """gymnasium builds one env in the trainer itself: its worker set-up must not make the
    trainer ignore Ctrl-C."""
    def interrupt_at_step_16(point, tag):
        if point == "step" and tag == 16:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(train_mod, "maybe_kill", interrupt_at_step_16)
    argv = override(random_only(tmp_path / "run", steps=40), "--run.envs", "2", "--run.parallel", "true")
    assert main_exit_code(argv) == 0
    out = capsys.readouterr().out
    assert "stopped by SIGINT" in out and "done: 16 agent steps" in out
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


def worker_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_env_workers_exit_when_their_trainer_is_killed():
    import subprocess
    import sys
    import time

    from helpers_runs import ROOT, child_env

    # Real workers (idle ones notice a closed pipe), and a process set up by the same worker
    # factory that is busy (here: asleep) when the trainer dies, as in a long env step.
    code = ("import multiprocessing, os, time\nfrom envs.vector import VectorEnv, _make_in_worker\n"
            "env = VectorEnv('toy_catch', 2, seed=0, parallel=True)\n"
            "def busy(parent):\n    _make_in_worker('toy_catch', {}, parent)\n    time.sleep(120)\n"
            "worker = multiprocessing.get_context('fork').Process(target=busy, args=(os.getpid(),))\n"
            "worker.start()\ntime.sleep(1)\n"
            "print(*[p.pid for p in env._env.processes], worker.pid, flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env=child_env())
    try:
        pids = [int(pid) for pid in proc.stdout.readline().split()]
        assert len(pids) == 3 and all(worker_alive(pid) for pid in pids)
    finally:
        proc.kill()  # as kill -9 or the out-of-memory killer would
        proc.wait()
    deadline = time.time() + 15
    while any(worker_alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(worker_alive(pid) for pid in pids), "env workers outlived their trainer"


def test_a_worker_whose_parent_is_already_gone_exits():
    """The parent-pid fallback (for platforms without PR_SET_PDEATHSIG, and a parent that
    died before the worker set it)."""
    import subprocess
    import sys

    from helpers_runs import ROOT, child_env

    code = ("import os\nfrom envs.vector import _die_with_parent\n"
            "_die_with_parent(os.getppid() + 999999)\nprint('alive')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=child_env(),
                            timeout=120)
    assert result.returncode == 1 and "alive" not in result.stdout


def test_a_full_disk_inside_torch_save_is_one_line(tmp_path, monkeypatch):
    """torch.save reports a failed write as RuntimeError, not OSError."""
    from mwm.atomic import atomic_torch_save

    path = tmp_path / "checkpoint-10.pt"
    atomic_torch_save({"w": torch.ones(2)}, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    def full(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match="free disk space") as info:
        atomic_torch_save({"w": torch.zeros(2)}, str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_a_half_written_metrics_line_is_cut_and_readers_skip_it(tmp_path, capsys):
    import json
    import sys

    from helpers_runs import ROOT
    from mwm.logger import Logger

    sys.path.insert(0, str(ROOT))
    from benchmarks.learning import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10, "a": 1.0}\n{"step": 20, "a": 2')  # killed mid-write
    assert [row["step"] for row in read_metrics(path)] == [10]
    logger = Logger(str(tmp_path), use_tensorboard=False, console=False)
    logger.scalar("a", 3.0)
    logger.write(30)
    logger.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [10, 30]
    assert "half-written line" in capsys.readouterr().err
    assert [row["step"] for row in read_metrics(path)] == [10, 30]


def test_memory_and_worker_limits_refuse_what_cannot_run(capsys):
    from mwm import config as config_lib
    from mwm.limits import check_config, check_model

    gib = 2**30
    cfg = config_lib.build("toy_catch", "mwm", "tiny", ["run.envs=40", "run.parallel=true"])
    with pytest.raises(UserError, match="40 env workers take at least"):
        check_config(cfg, memory=2 * gib, cores=16)
    with pytest.raises(UserError, match="40 worker processes on 2 CPU cores"):
        check_config(cfg, memory=64 * gib, cores=2)
    check_config(cfg, memory=64 * gib, cores=16)  # allowed, with a warning: 40 > 2 per core
    assert "40 worker processes on 16 CPU cores" in capsys.readouterr().err
    check_config(config_lib.build("toy_catch", "mwm", "tiny", ["run.envs=40", "run.parallel=false"]),
                 memory=2 * gib, cores=2)  # in-process envs: no workers
    with pytest.raises(UserError, match="more memory than the machine has"):
        check_config(config_lib.build("toy_catch", "mwm", "tiny", ["replay.batch=100000"]), memory=4 * gib, cores=2)
    dmc = config_lib.build("dmc_walker_walk", "mwm", "tiny", ["env.time_limit=100", "replay.capacity=60"])
    check_config(dmc, memory=64 * gib, cores=2)  # 100 control steps at action_repeat 2: 51-step episodes fit
    with pytest.raises(UserError, match="at least 51"):
        check_config(config_lib.build("dmc_walker_walk", "mwm", "tiny", ["env.time_limit=100", "replay.capacity=40"]),
                     memory=64 * gib, cores=2)
    model = torch.nn.Linear(1000, 1000)  # 4 MB of weights: 16 MB with gradients and Adam's moments
    with pytest.raises(UserError, match="smaller --preset"):
        check_model(cfg, model, torch.device("cpu"), memory=8 * 2**20)
    check_model(cfg, model, torch.device("cpu"), memory=gib)


def test_episode_files_with_nonfinite_rewards_are_skipped_with_a_warning(tmp_path):
    from mwm.atomic import atomic_save_npz
    from replay.episodes import episode_filename

    steps = 5
    episode = {"image": np.zeros((steps, 4, 4, 3), np.uint8), "action": np.zeros((steps, 2), np.float32),
               "reward": np.zeros(steps, np.float32), "is_first": np.arange(steps) == 0,
               "is_last": np.arange(steps) == steps - 1, "is_terminal": np.zeros(steps, bool)}
    Replay(tmp_path, capacity=1000, seed=0).add_episode(episode)
    episode["reward"][3] = np.nan
    bad = tmp_path / episode_filename(7, steps)
    atomic_save_npz(str(bad), episode)
    replay = Replay(tmp_path, capacity=1000, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        replay.load()
    assert replay.num_episodes == 1
    assert any(str(bad) in str(w.message) and "reward holds NaN or inf at step 3" in str(w.message) for w in caught)
    with pytest.raises(UserError, match="NaN or inf"):
        replay.add_episode(episode)
