"""End to end: `python -m mwm.train` on each suite with the tiny preset, and exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Smaller than tiny: a handful of updates, enough to pass through every phase.
FAST = ["--preset", "tiny", "--run.prefill", "60", "--run.pretrain", "2", "--run.train_every", "30",
        "--run.log_every", "40", "--run.checkpoint_every", "60", "--run.report_every", "90",
        "--run.parallel", "false"]


def train(logdir: Path, env: str, steps: int, *extra: str, agent: str = "mwm") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mwm.train", "--env", env, "--agent", agent, "--logdir", str(logdir),
           "--steps", str(steps), *FAST, *extra]
    env_vars = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env_vars, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def metrics(logdir: Path) -> list:
    return [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_steps(logdir: Path) -> list:
    return sorted(int(p.stem.split("-")[1]) for p in (logdir / "checkpoints").glob("checkpoint-*.pt"))


# Metrics every agent logs, and the prefixes of each agent's own losses.
CORE_METRICS = {"speed/env_steps_per_s", "speed/updates_per_s", "train/return"}
DIAGNOSTICS = {"diag/reward_corr", "diag/reward_recall", "diag/recon_error_h15", "diag/kl", "diag/post_entropy"}
LOSS_PREFIXES = {"mwm": ("mae/", "wm/", "ac/"), "dreamerv2": ("wm/", "ac/"), "siammae": ("siammae/", "wm/", "ac/"),
                 "curl": ("curl/", "rl/")}


def check_run_outputs(logdir: Path, steps: int, agent: str = "mwm") -> None:
    assert (logdir / "config.yaml").exists()
    assert list(logdir.glob("events.out.tfevents.*")), "no TensorBoard events"
    assert checkpoint_steps(logdir)[-1] == steps
    assert list((logdir / "replay").glob("*.npz")), "no episodes saved"
    rows = metrics(logdir)
    keys = set().union(*rows)
    assert CORE_METRICS <= keys, sorted(CORE_METRICS - keys)
    for prefix in LOSS_PREFIXES[agent]:
        assert any(k.startswith(prefix) for k in keys), (prefix, sorted(keys))
    if agent != "curl":  # the Dreamer family's open-loop world-model scores, logged at each report
        assert DIAGNOSTICS <= keys, sorted(DIAGNOSTICS - keys)


def test_toy_catch_trains_and_resumes(tmp_path):
    """Steps, logs and console lines across a resume; tests/test_resume.py checks that the resumed
    run learns exactly what the uninterrupted one does."""
    logdir = tmp_path / "run"
    out = train(logdir, "toy_catch", 120)
    check_run_outputs(logdir, 120)
    keys = set().union(*metrics(logdir))
    assert {"mae/pixel_loss", "mae/reward_loss", "wm/kl_loss", "wm/recon_loss", "ac/actor_loss"} <= keys
    assert "done: 120 agent steps (120 frames)" in out.stdout and "(mean of the last" in out.stdout
    # the periodic console line: step, frames, return, the main losses, fps, update rate, in that order
    line = next(row for row in out.stdout.splitlines() if row.startswith("step 120 |"))
    labels = [part.split(" ")[0] for part in line.split(" | ")]
    assert labels[:3] == ["step", "frames", "return"], line
    assert labels[3:7] == ["mae/loss", "model/loss", "actor/loss", "critic/loss"], line
    assert labels[7] == "fps" and (line.endswith("updates/s") or line.endswith("s/update")), line
    assert "ac/" not in line and "more)" not in line

    out = train(logdir, "toy_catch", 180)  # same logdir: resumes
    assert "resuming from" in out.stdout and "at step 120" in out.stdout
    assert "pre-training" not in out.stdout  # the autoencoder warm-up is not repeated
    assert checkpoint_steps(logdir)[-1] == 180
    steps = [row["step"] for row in metrics(logdir)]
    assert steps == sorted(steps) and steps[-1] == 180 and min(s for s in steps if s > 120) > 120


def test_resume_refuses_a_changed_model(tmp_path):
    logdir = tmp_path / "run"
    train(logdir, "toy_catch", 60)
    before = sorted((p.name, p.stat().st_size) for p in logdir.rglob("*"))
    cmd = [sys.executable, "-m", "mwm.train", "--env", "toy_catch", "--logdir", str(logdir), *FAST,
           "--rssm.deter", "48"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "rssm.deter" in result.stderr
    assert sorted((p.name, p.stat().st_size) for p in logdir.rglob("*")) == before


@pytest.mark.parametrize("env", ["atari_pong", "dmc_cartpole_swingup"])
def test_other_suites_train(tmp_path, env):
    logdir = tmp_path / env
    train(logdir, env, 120)
    check_run_outputs(logdir, 120)


@pytest.mark.parametrize("agent", ["dreamerv2", "curl", "siammae"])
def test_baseline_trains_and_resumes_on_toy_catch(tmp_path, agent):
    logdir = tmp_path / agent
    train(logdir, "toy_catch", 90, agent=agent)
    check_run_outputs(logdir, 90, agent)
    out = train(logdir, "toy_catch", 150, agent=agent)
    assert "resuming from" in out.stdout and "at step 90" in out.stdout
    assert checkpoint_steps(logdir)[-1] == 150 and metrics(logdir)[-1]["step"] == 150


@pytest.mark.parametrize("agent", ["dreamerv2", "curl", "siammae"])
def test_baseline_trains_on_atari(tmp_path, agent):
    logdir = tmp_path / agent
    train(logdir, "atari_pong", 90, agent=agent)
    check_run_outputs(logdir, 90, agent)


def test_output_piped_into_a_reader_that_stops_early_ends_without_a_traceback():
    """``python -m mwm.<entry> ... | head -1``: the pipe closes under the printer (10 MB here,
    more than any pipe buffer, so the writer is sure to meet the closed pipe)."""
    printer = "from mwm.cli import run_main; run_main(lambda: [print('x' * 999) for _ in range(10000)] and 0)"
    proc = subprocess.Popen([sys.executable, "-c", printer], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.readline()
    proc.stdout.close()  # as head does after its first line
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_print_config_prints_the_resolved_config_and_touches_nothing(tmp_path, capsys):
    import yaml

    from mwm.train import main

    logdir = tmp_path / "never"
    assert main(["--env", "toy_catch", "--preset", "tiny", "--print-config", "--rssm.deter", "48",
                 "--logdir", str(logdir)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["rssm"]["deter"] == 48 and printed["run"]["preset"] == "tiny"
    assert printed["run"]["logdir"] == str(logdir) and printed["mae"]["mask_ratio"] == 0.75
    assert not logdir.exists()
