"""Shared by the robustness tests: tiny training runs, run-directory snapshots and checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent

# Smaller than tiny: 9-step toy_catch episodes, a few updates, a checkpoint every 10 steps.
TINY_RUN = ["--env", "toy_catch", "--preset", "tiny", "--run.envs", "1", "--run.parallel", "false",
            "--env.time_limit", "8", "--run.pretrain", "2", "--run.train_every", "5",
            "--run.checkpoint_every", "10", "--run.log_every", "10", "--run.report_every", "0"]


def override(flags: Sequence[str], *pairs: str) -> List[str]:
    """``flags`` (pairs ``--flag value``) with the values of ``pairs`` put in place of theirs,
    or appended: the command line refuses a flag given twice with different values."""
    out = list(flags)
    for name, value in zip(pairs[::2], pairs[1::2]):
        if name in out[::2]:
            out[out[::2].index(name) * 2 + 1] = value
        else:
            out += [name, value]
    return out


def child_env(**extra: str) -> Dict[str, str]:
    """Environment for a child ``python -m mwm.train``: unbuffered, one thread, no fault unless asked."""
    env = {k: v for k, v in os.environ.items() if k != "MWM_KILL_AT"}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


def train_command(logdir: Path, *flags: str) -> List[str]:
    return [sys.executable, "-m", "mwm.train", "--logdir", str(logdir), *flags]


def run_train(logdir: Path, *flags: str, kill_at: Optional[str] = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m mwm.train`` to its end (or to the SIGKILL that ``kill_at`` injects)."""
    env = child_env(**({"MWM_KILL_AT": kill_at} if kill_at else {}))
    return subprocess.run(train_command(logdir, *flags), capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout, check=False)


def main_exit_code(argv: Sequence[str]) -> int:
    """``python -m mwm.train ARGV`` in this process (its signal handlers too: use the
    ``restore_signals`` fixture); its exit status."""
    import pytest

    from mwm import cli
    from mwm import train as train_mod

    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(lambda: train_mod.main(list(argv)))
    return exit_info.value.code


def run_and_signal(logdir: Path, *flags: str, sig: int, delay: float, after: str = "resuming from",
                   timeout: float = 300) -> subprocess.CompletedProcess:
    """Start a run, wait for the stdout line containing ``after``, wait ``delay`` s, send ``sig``.

    Returns the finished process with its whole output. The run may end on its own
    first: once it has printed its ``done:`` line (or exited) no signal is sent, since one
    landing while the interpreter shuts down would kill a run that already finished.
    """
    import threading
    import time

    proc = subprocess.Popen(train_command(logdir, *flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=child_env())
    stderr: List[str] = []
    stdout: List[str] = []
    seen_after = threading.Event()

    def read_stdout() -> None:
        for line in proc.stdout:
            stdout.append(line)
            if after in line:
                seen_after.set()

    readers = [threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True),
               threading.Thread(target=read_stdout, daemon=True)]
    for reader in readers:
        reader.start()
    if seen_after.wait(timeout=timeout):
        time.sleep(delay)
        if proc.poll() is None and not any(line.startswith("done: ") for line in stdout):
            proc.send_signal(sig)
    proc.wait(timeout=timeout)
    for reader in readers:
        reader.join(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(stdout), "".join(stderr))


def describe(result: subprocess.CompletedProcess) -> str:
    """Command, exit status and output tails, for assertion messages."""
    return (f"{' '.join(map(str, result.args))}\nexit {result.returncode}\n--- stdout\n{result.stdout[-2500:]}"
            f"\n--- stderr\n{result.stderr[-2500:]}")


def snapshot(path: Path) -> Dict[str, tuple]:
    """Every file and folder under ``path`` (itself included) with size and mtime in ns."""
    if not path.exists():
        return {}
    entries = {".": ("dir", path.stat().st_mtime_ns)}
    for item in sorted(path.rglob("*")):
        info = item.stat()
        kind = "dir" if item.is_dir() else "file"
        entries[str(item.relative_to(path))] = (kind, info.st_size if kind == "file" else 0, info.st_mtime_ns)
    return entries


def checkpoint_files(logdir: Path) -> Dict[int, Path]:
    """step -> path of every checkpoint file in ``logdir/checkpoints``."""
    from mwm.checkpoint import list_checkpoints

    return {step: Path(path) for step, path in list_checkpoints(str(logdir / "checkpoints"))}


def temp_files(folder: Path) -> List[str]:
    """Hidden temp files of interrupted atomic writes."""
    return sorted(p.name for p in folder.glob(".*.tmp")) if folder.is_dir() else []


def load_counters(path: Path) -> Dict:
    """The counters of a checkpoint plus the update counts of its optimisers."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    counters = dict(state["counters"])
    counters["optimizer_updates"] = {name: int(opt["updates"])
                                     for name, opt in state["agent"]["optimizers"].items()}
    return counters


def metrics_rows(logdir: Path) -> List[Dict]:
    path = logdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def killed(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == -signal.SIGKILL


def error_lines(text: str) -> List[str]:
    return [line for line in text.splitlines() if line.strip()]


def one_error_line(text: str, needles: Sequence[str]) -> str:
    """The single stderr line of a refused command; asserts it names every needle."""
    lines = error_lines(text)
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{text}"
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
    return line


def write_toy_replay(folder: Path, episodes: int) -> list:
    """Random-policy toy_catch episodes (16 px object, 2 drops, 35 steps each) saved as a
    replay folder of mwm.train; returns the episodes."""
    from mwm.probes.sources import collect_episodes
    from replay.episodes import save_episode

    folder.mkdir()
    played = collect_episodes("toy_catch", {"object_size": 16, "drops": 2}, episodes, 1000, seed=3)
    for index, episode in enumerate(played):
        save_episode(str(folder), {**episode, "is_last": episode["is_terminal"]}, index)
    return played
