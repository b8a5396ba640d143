"""Wrong input to ``mwm.train`` and ``mwm.probe``: exit status 2, one line, nothing written.

Every row of the table is a mistake a user can make. Each is run through the entry
point's real ``main`` (``cli.run_main``, as ``python -m`` does) in this process, pointed
at an existing run directory, and must exit with status 2 and print exactly one line
on stderr that names the problem (the row's words) and the fix, while writing nothing:
the run directory's tree (names, sizes, mtimes) is unchanged and no new folder appears.
A few rows run as real processes to prove the exit status, including a missing
rendering library for a DeepMind Control env.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
from helpers_runs import ROOT, child_env, describe, one_error_line, snapshot

from mwm import cli
from mwm import probe as probe_mod
from mwm import train as train_mod

# The existing run every row is pointed at: a short prefill-only run (no updates).
RUN = ["--env", "toy_catch", "--preset", "tiny", "--run.envs", "1", "--run.parallel", "false", "--steps", "20",
       "--run.prefill", "20", "--env.time_limit", "8", "--run.checkpoint_every", "10", "--run.log_every", "10",
       "--run.report_every", "0"]
# A line "names the fix" when it says what to do.
FIX = re.compile(r"use |choose|pass |set |drop |install|did you mean|must be|see |e\.g\.|stop |restore|"
                 r"valid |lower|leave |one of|must |converted to", re.IGNORECASE)

# (id, flags appended to RUN, words the error line must contain). {run} is the existing run
# directory, {new} a path that must not be created, {file} a regular file, {broken} a run
# directory whose config.yaml is damaged.
TRAIN_ROWS = [
    ("env-no-suite", ["--env", "pong"], ["unknown env 'pong'", "atari_"]),
    ("env-typo", ["--env", "toy_catc"], ["toy_catc", "did you mean", "toy_catch"]),
    ("env-atari-game", ["--env", "atari_pongg"], ["pongg", "did you mean: atari_pong"]),
    ("env-dmc-task", ["--env", "dmc_walker_fly"], ["dmc_walker_fly", "dmc_walker_walk"]),
    ("agent", ["--agent", "ppo"], ["unknown agent 'ppo'", "mwm"]),
    ("preset", ["--preset", "huge"], ["unknown preset 'huge'", "tiny"]),
    ("key-typo", ["--rssm.detr", "5"], ["rssm.detr", "did you mean rssm.deter"]),
    ("key-section", ["--foo.bar", "1"], ["foo.bar", "configs/defaults.yaml"]),
    ("flag-unknown", ["--stepz", "10"], ["--stepz", "--help"]),
    ("positional", ["toy_catch"], ["unknown argument 'toy_catch'"]),
    ("flag-no-value", ["--rssm.deter"], ["--rssm.deter", "needs a value"]),
    ("type-int", ["--steps", "abc"], ["run.steps", "abc"]),
    ("type-float-for-int", ["--run.envs", "1.5"], ["run.envs", "1.5"]),
    ("type-float", ["--mae.lr", "fast"], ["mae.lr", "fast"]),
    ("type-bool", ["--run.parallel", "maybe"], ["run.parallel", "maybe"]),
    ("type-list", ["--env.size", "64"], ["env.size"]),
    ("type-seed", ["--seed", "abc"], ["run.seed", "abc"]),
    ("steps-negative", ["--steps", "-5"], ["run.steps", "positive", "-5"]),
    ("envs-zero", ["--run.envs", "0"], ["run.envs", "positive"]),
    ("train-every-zero", ["--run.train_every", "0"], ["run.train_every", "positive"]),
    ("batch-zero", ["--replay.batch", "0"], ["replay.batch", "positive"]),
    ("capacity-negative", ["--replay.capacity", "-1"], ["replay.capacity", "positive"]),
    ("deter-zero", ["--rssm.deter", "0"], ["rssm.deter", "positive"]),
    ("image-size-zero", ["--env.size", "[0,64]"], ["env.size", "[0, 64]"]),
    ("max-nonfinite-zero", ["--run.max_nonfinite", "0"], ["run.max_nonfinite", "positive"]),
    ("mask-ratio-one", ["--mae.mask_ratio", "1.0"], ["mae.mask_ratio", "[0, 1)", "1.0"]),
    ("mask-ratio-negative", ["--mae.mask_ratio", "-0.1"], ["mae.mask_ratio", "-0.1"]),
    ("mask-type", ["--mae.mask_type", "diamond"], ["mae.mask_type", "diamond", "random"]),
    ("patch-divides", ["--mae.patch", "7"], ["mae.patch", "7"]),
    ("sticky", ["--env.sticky", "2"], ["env.sticky", "[0, 1]"]),
    ("object-size", ["--env.object_size", "40"], ["env.object_size", "40"]),
    ("discount", ["--ac.discount", "1.5"], ["ac.discount", "at most 1"]),
    ("precision", ["--speed.precision", "fp8"], ["speed.precision", "fp8", "bf16"]),
    ("device-kind", ["--device", "tpu"], ["tpu", "cpu"]),
    ("device-missing", ["--device", "cuda:7"], ["cuda:7"]),
    ("device-malformed", ["--device", "cuda:x"], ["cuda:x", "not a device"]),
    ("logdir-file", ["--logdir", "{file}"], ["is a file", "--logdir"]),
    ("logdir-under-file", ["--logdir", "{file}/run"], ["not writable", "--logdir"]),
    ("resume-nothing", ["--logdir", "{new}", "--resume"], ["--resume", "no checkpoint", "drop --resume"]),
    ("resume-other-model", ["--rssm.deter", "48"], ["rssm.deter", "new --logdir"]),
    ("resume-other-agent", ["--agent", "dreamerv2"], ["run.agent", "'mwm'", "dreamerv2"]),
    ("resume-other-env", ["--env", "atari_pong"], ["run.env", "toy_catch", "atari_pong"]),
    ("resume-other-preset", ["--preset", "small"], ["run.preset", "tiny", "small"]),
    ("config-damaged", ["--logdir", "{broken}"], ["config.yaml", "unreadable", "new --logdir"]),
    # out-of-range values that used to end in a traceback (or a run directory locked to them)
    ("seed-negative", ["--seed", "-1"], ["run.seed", "-1"]),
    ("seed-huge", ["--seed", "99999999999"], ["run.seed", "99999999999"]),
    # keys the command line sets by name: not also as dotted keys; a setting given once
    ("env-dotted", ["--run.env", "atari_pong"], ["--run.env", "use --env"]),
    ("agent-dotted", ["--run.agent", "curl"], ["--run.agent", "use --agent"]),
    ("preset-dotted", ["--run.preset", "small"], ["--run.preset", "use --preset"]),
    ("seed-twice", ["--seed", "1", "--run.seed", "2"], ["run.seed", "twice", "once"]),
    ("logdir-twice", ["--run.logdir", "{new}"], ["run.logdir", "twice", "once"]),
    ("key-twice", ["--rssm.deter", "8", "--rssm.deter=9"], ["rssm.deter", "twice", "once"]),
    ("env-twice", ["--env", "atari_pong"], ["--env", "2 times", "toy_catch, atari_pong", "once"]),
    ("preset-twice", ["--preset=small"], ["--preset", "2 times", "once"]),
    # logdirs that are not a run: user files are never adopted (nor cleaned up), a run's
    # folders must be folders
    ("logdir-user-files", ["--logdir", "{notes}"], ["not empty", "holds no run", "new or empty --logdir"]),
    ("logdir-run-without-config", ["--logdir", "{orphan}"], ["replay/", "no config.yaml", "restore"]),
    ("checkpoints-a-file", ["--logdir", "{odd}"], ["checkpoints", "not a folder"]),
    ("logdir-home", ["--logdir", "{notes}/../notes"], ["not empty"]),
    # limits checked before they bite
    ("capacity-below-episode", ["--logdir", "{new}", "--replay.capacity", "5"],
     ["replay.capacity", "--replay.capacity"]),
    ("capacity-below-sequence", ["--logdir", "{new}", "--replay.capacity", "7", "--env.time_limit", "0"],
     ["replay.capacity", "replay.length"]),
    ("sequence-beyond-episode", ["--logdir", "{new}", "--replay.length", "100"], ["replay.length", "env.time_limit"]),
    ("mae-sequence-beyond-episode", ["--logdir", "{new}", "--mae.length", "50"], ["mae.length", "env.time_limit"]),
    ("eval-episodes-zero", ["--logdir", "{new}", "--run.eval_every", "10", "--run.eval_episodes", "0"],
     ["run.eval_episodes", "--run.eval_every 0"]),
    ("batch-huge", ["--logdir", "{new}", "--replay.batch", "100000000"], ["more memory", "--replay.batch"]),
    ("mae-batch-huge", ["--logdir", "{new}", "--mae.batch", "100000000"], ["more memory", "mae.batch"]),
    ("envs-far-too-many", ["--logdir", "{new}", "--run.envs", "1000", "--run.parallel", "true"],
     ["run.envs 1000", "cores"]),
]
if sys.platform.startswith("linux"):  # folders even root cannot write into
    TRAIN_ROWS += [("logdir-unwritable-sys", ["--logdir", "/sys/mwm-test-run"], ["cannot create logdir", "--logdir"]),
                   ("logdir-unwritable-proc", ["--logdir", "/proc/mwm-test/run"], ["cannot create logdir"])]

# mwm.probe: the same parser and config, plus its own method and probe block.
PROBE_ROWS = [
    ("probe-method", ["--method", "vae"], ["unknown probe method 'vae'", "mwm"]),
    ("probe-seeds-zero", ["--probe.seeds", "0"], ["probe.seeds", "positive"]),
    ("probe-updates-negative", ["--probe.updates", "-1"], ["probe.updates", "-1"]),
    ("probe-confidence", ["--probe.confidence", "1.5"], ["probe.confidence", "1.5"]),
    ("probe-frames-negative", ["--probe.eval_frames", "-5"], ["probe.eval_frames", "-5"]),
    ("probe-key", ["--probe.bogus", "1"], ["probe.bogus", "did you mean"]),
    ("probe-mask-ratio", ["--mae.mask_ratio", "1.5"], ["mae.mask_ratio", "1.5"]),
    ("probe-preset", ["--preset", "huge"], ["unknown preset 'huge'"]),
    ("probe-device", ["--device", "cuda:7"], ["cuda:7"]),
    ("probe-logdir-file", ["--logdir", "{file}"], ["is a file"]),
    ("probe-batch-huge", ["--mae.batch", "100000000"], ["more memory", "mae.batch"]),
    ("probe-seed-negative", ["--seed", "-3"], ["run.seed", "-3"]),
]
# Refused after the frames' source is opened (the env is built, the replay read), still
# before anything is written.
PROBE_LATE_ROWS = [
    ("probe-env", ["--env", "toy_catx"], ["toy_catx", "did you mean"]),
    ("probe-replay-missing", ["--probe.replay", "{new}-frames"], ["probe.replay", "no episode files"]),
    ("probe-policy-not-a-run", ["--probe.policy", "{file}"], ["probe.policy"]),
    ("probe-into-a-training-run", ["--logdir", "{run}"], ["holds a training run", "--probe.replay"]),
    ("probe-into-user-files", ["--logdir", "{notes}"], ["not empty", "new or empty --logdir"]),
    ("probe-method-dotted", ["--probe.method", "mae"], ["--probe.method", "use --method"]),
    # every source is checked against --env and the image shape
    ("probe-replay-other-env", ["--env", "atari_pong", "--probe.replay", "{run}"],
     ["probe.replay", "toy_catch", "not atari_pong", "--env toy_catch"]),
    ("probe-replay-folder-other-env", ["--env", "atari_pong", "--probe.replay", "{run}/replay"],
     ["probe.replay", "toy_catch", "not atari_pong"]),
    ("probe-replay-bare-other-suite", ["--env", "dmc_cartpole_swingup", "--probe.replay", "{bare}"],
     ["probe.replay", "dmc_cartpole_swingup"]),
    ("probe-replay-bare-other-size", ["--env", "atari_pong", "--env.size", "[32,32]", "--probe.replay", "{bare}"],
     ["probe.replay", "shape (64, 64, 3)", "(32, 32, 3)"]),
    ("probe-replay-junk-config", ["--probe.replay", "{junk}"], ["probe.replay", "config.yaml", "unreadable"]),
    ("probe-policy-junk-config", ["--probe.policy", "{junk}"], ["probe.policy", "config.yaml", "unreadable"]),
    ("probe-policy-other-env", ["--env", "atari_pong", "--probe.policy", "{run}"],
     ["probe.policy", "toy_catch", "not atari_pong"]),
    ("probe-policy-damaged-checkpoints", ["--probe.policy", "{damaged}"], ["probe.policy", "no intact checkpoint"]),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """An existing run directory (a real short run), a regular file, a damaged run directory."""
    from mwm.run_dir import prepare_run

    root = tmp_path_factory.mktemp("bad_input")
    args, overrides = train_mod.parse_args(RUN + ["--logdir", str(root / "run")])
    run = prepare_run(args.env, args.agent, args.preset, overrides)
    try:
        train_mod.train(run, train_mod.StopFlag())
    finally:
        run.close()
    (root / "file").write_text("not a folder\n")
    (root / "broken").mkdir()
    (root / "broken" / "config.yaml").write_text("run: [unclosed\n  : :\n")
    (root / "notes").mkdir()  # a user's folder: a note named like an old temp file
    (root / "notes" / ".notes.tmp").write_text("mine\n")
    shutil.copytree(root / "run" / "replay", root / "orphan" / "replay")  # a run whose config.yaml was deleted
    (root / "odd").mkdir()
    (root / "odd" / "checkpoints").write_text("a file where the run keeps its checkpoints\n")
    shutil.copytree(root / "run" / "replay", root / "bare")  # episodes without their run
    shutil.copytree(root / "run" / "replay", root / "junk" / "replay")  # a run with a junk config
    (root / "junk" / "config.yaml").write_bytes(b"\x00\xff junk: [")
    shutil.copytree(root / "run", root / "damaged")  # every checkpoint damaged
    for path in (root / "damaged" / "checkpoints").glob("checkpoint-*.pt"):
        path.write_bytes(path.read_bytes()[:200])
    return {name: root / name for name in ("run", "file", "broken", "notes", "orphan", "odd", "bare", "junk",
                                           "damaged")}


def fill(flags, places, new: Path) -> list:
    return [f.format(new=new, **places) for f in flags]


def with_flags(base: list, flags: list) -> list:
    """``base`` (pairs ``--flag value``) less the pairs whose flag ``flags`` sets, then ``flags``."""
    given = {flag.split("=", 1)[0] for flag in flags if flag.startswith("--")}
    kept = [item for name, value in zip(base[::2], base[1::2]) if name not in given for item in (name, value)]
    return kept + flags


def refuse(entry, argv, capsys, places, new, needles) -> str:
    """Run ``entry`` in-process; assert status 2, one line naming ``needles``, nothing written."""
    watched = [places[name] for name in ("run", "broken", "notes", "orphan", "odd", "junk", "damaged")]
    before = [snapshot(path) for path in watched]
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(lambda: entry(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    line = one_error_line(err, needles)
    assert FIX.search(line), f"the line does not say what to do: {line}"
    assert [snapshot(path) for path in watched] == before, "an existing run directory was written to"
    assert not new.exists(), f"{new} was created"
    return line


@pytest.fixture
def no_training(monkeypatch):
    """A row that slips through validation must fail loudly, not start a run."""
    def fail(*args, **kwargs):
        raise AssertionError("bad input reached the training loop")

    monkeypatch.setattr(train_mod, "train", fail)


@pytest.mark.parametrize("flags,needles", [row[1:] for row in TRAIN_ROWS], ids=[row[0] for row in TRAIN_ROWS])
def test_train_refuses(flags, needles, places, tmp_path, capsys, no_training):
    new = tmp_path / "new"
    argv = with_flags(RUN + ["--logdir", str(places["run"])], fill(flags, places, new))
    if "once" in needles:  # the row's point is the repetition
        argv = RUN + ["--logdir", str(places["run"])] + fill(flags, places, new)
    refuse(train_mod.main, argv, capsys, places, new, needles)


def test_train_refuses_a_missing_env_flag(places, tmp_path, capsys, no_training):
    refuse(train_mod.main, ["--logdir", str(places["run"])], capsys, places, tmp_path / "new",
           ["required: --env", "--help"])


def test_train_refuses_a_logdir_in_use(places, tmp_path, capsys, no_training):
    import fcntl

    with open(places["run"] / ".lock", "a") as held:  # as a running training process holds it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        refuse(train_mod.main, RUN + ["--logdir", str(places["run"])], capsys, places, tmp_path / "new",
               ["in use by another training process", "stop that run"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_train_refuses_a_read_only_logdir(places, tmp_path, capsys, no_training):
    parent = tmp_path / "locked"
    parent.mkdir(mode=0o500)
    try:
        refuse(train_mod.main, RUN + ["--logdir", str(parent / "run")], capsys, places, parent / "run",
               ["not writable", "--logdir"])
    finally:
        parent.chmod(0o700)


@pytest.mark.parametrize("flags,needles", [row[1:] for row in PROBE_ROWS + PROBE_LATE_ROWS],
                         ids=[row[0] for row in PROBE_ROWS + PROBE_LATE_ROWS])
def test_probe_refuses(flags, needles, places, tmp_path, capsys):
    new = tmp_path / "new"
    argv = with_flags(["--env", "toy_catch", "--preset", "tiny", "--logdir", str(new)], fill(flags, places, new))
    refuse(probe_mod.main, argv, capsys, places, new, needles)


def test_probe_refuses_and_leaves_an_existing_directory_alone(places, tmp_path, capsys):
    argv = ["--env", "toy_catch", "--preset", "tiny", "--logdir", str(places["run"]), "--probe.seeds", "0"]
    refuse(probe_mod.main, argv, capsys, places, tmp_path / "new", ["probe.seeds"])


def test_a_path_is_a_path():
    """String keys (paths, names) take the text as given, never YAML: 0x10 is not 16, yes not True."""
    from mwm import config as config_lib

    for text in ("0x10", "yes", "-", "~", "1e3", "[a]", "null", "a: b"):
        args, overrides = train_mod.parse_args(["--env", "toy_catch", "--logdir", text, "--probe.replay", text])
        cfg = config_lib.build(args.env, args.agent, "tiny", overrides)
        assert cfg.run.logdir == text and cfg.probe.replay == text
    assert config_lib.build("toy_catch", "mwm", "tiny", ["run.device=cpu", "rssm.deter=0x10"]).rssm.deter == 16


def test_a_path_the_locale_cannot_read_is_one_line(capsys, tmp_path):
    """LC_ALL=C without UTF-8 mode: non-ASCII bytes arrive as surrogates (a YAML traceback before)."""
    logdir = str(tmp_path) + "/\udcc3\udca9preuve"
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(lambda: train_mod.main(RUN + ["--logdir", logdir]))
    assert exit_info.value.code == 2
    one_error_line(capsys.readouterr().err, ["run.logdir", "locale", "LC_ALL=C.UTF-8"])
    assert list(tmp_path.iterdir()) == []


def main_code(argv) -> int:
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(lambda: train_mod.main(argv))
    return exit_info.value.code


def test_a_failed_start_leaves_the_logdir_as_it_was(tmp_path, capsys, monkeypatch):
    """An error raised after the run directory is opened (building the agent here) writes no
    config.yaml and removes what the start created, so the corrected command then runs."""
    import agents

    def bad_agent(*args, **kwargs):
        raise ValueError("mae.width must be divisible by mae.heads")

    monkeypatch.setattr(agents, "make_agent", bad_agent)
    new, empty = tmp_path / "new" / "run", tmp_path / "empty"
    empty.mkdir()
    for logdir in (new, empty):
        before = snapshot(logdir)
        assert main_code(RUN + ["--logdir", str(logdir)]) == 2
        one_error_line(capsys.readouterr().err, ["cannot build the mwm agent", "mae.width"])
        assert snapshot(logdir) == before
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    assert main_code(RUN + ["--logdir", str(new), "--seed", "3"]) == 0  # another seed: not "a different run"
    assert (new / "config.yaml").is_file() and (new / "checkpoints" / "checkpoint-20.pt").is_file()


def test_replay_episodes_of_another_image_shape_are_one_line(places, tmp_path, capsys):
    from replay.episodes import list_episode_files, load_episode, save_episode

    run = tmp_path / "run"
    shutil.copytree(places["run"], run)
    episode = load_episode(list_episode_files(str(run / "replay"))[0].path)
    episode["image"] = episode["image"][:, :32, :32]
    save_episode(str(run / "replay"), episode, 99)
    before = snapshot(run)
    assert main_code(RUN + ["--logdir", str(run)]) == 2
    one_error_line(capsys.readouterr().err, ["-99-", "shape (32, 32, 3)", "(64, 64, 3)", "move"])
    assert snapshot(run) == before


def test_the_table_is_large_enough():
    assert len(TRAIN_ROWS) + len(PROBE_ROWS) + len(PROBE_LATE_ROWS) >= 30


# --------------------------------------------------------------------------- real processes


def run_module(module: str, argv: list, env=None, code: Optional[str] = None) -> subprocess.CompletedProcess:
    """``python -m module argv`` (or ``python -c code``) as a child process."""
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", module, *argv]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env or child_env(), timeout=300,
                          check=False)


def assert_refused_process(result, places, before, needles) -> None:
    assert result.returncode == 2, describe(result)
    line = one_error_line(result.stderr, needles)
    assert FIX.search(line), line
    assert snapshot(places["run"]) == before


def test_real_process_exits_2_on_a_bad_value(places):
    before = snapshot(places["run"])
    result = run_module("mwm.train", RUN + ["--logdir", str(places["run"]), "--mae.mask_ratio", "1.0"])
    assert_refused_process(result, places, before, ["mae.mask_ratio", "[0, 1)"])


def test_real_process_exits_2_on_an_unusable_rendering_backend(places):
    """MUJOCO_GL names a backend that cannot load: dm_control fails on import."""
    before = snapshot(places["run"])
    result = run_module("mwm.train", ["--env", "dmc_cartpole_swingup", "--preset", "tiny", "--logdir",
                                      str(places["run"])], env=child_env(MUJOCO_GL="no-such-gl"))
    assert_refused_process(result, places, before, ["MuJoCo", "MUJOCO_GL=no-such-gl", "install"])


def test_real_process_exits_2_without_any_rendering_library(places):
    """No headless OpenGL at all: every backend probe fails (simulated in the child)."""
    before = snapshot(places["run"])
    env = child_env()
    env.pop("MUJOCO_GL", None)
    argv = ["--env", "dmc_cartpole_swingup", "--preset", "tiny", "--logdir", str(places["run"])]
    code = ("import envs.gl; envs.gl.BACKENDS = ()\n"
            "from mwm import cli, train\n"
            f"cli.run_main(lambda: train.main({argv!r}))")
    result = run_module("", [], env=env, code=code)
    assert_refused_process(result, places, before, ["no headless OpenGL", "install"])


def test_real_probe_process_exits_2(places, tmp_path):
    before = snapshot(places["run"])
    result = run_module("mwm.probe", ["--env", "toy_catch", "--logdir", str(tmp_path / "new"), "--method", "vae"])
    assert_refused_process(result, places, before, ["unknown probe method 'vae'"])
    assert not (tmp_path / "new").exists()
