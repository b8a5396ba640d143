"""The run directory: config, checkpoints, replay; checks that protect an existing run.

Everything a user can get wrong is checked *before* anything is written, so a bad flag
never touches an existing run directory:

    <logdir>/config.yaml        the resolved config (written once, on the first start)
    <logdir>/checkpoints/       checkpoint-<step>.pt, the newest two kept
    <logdir>/replay/            one .npz per finished episode
    <logdir>/metrics.jsonl      one JSON object per log write
    <logdir>/events.*           TensorBoard
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Sequence

from omegaconf import DictConfig, OmegaConf

from mwm import config as config_lib
from mwm.errors import UserError
from mwm.runtime import resolve_device

# Keys that may change when a run is resumed; any other difference is refused.
RESUMABLE_KEYS = (
    "run.steps", "run.device", "run.logdir", "run.envs", "run.parallel", "run.eval_every",
    "run.eval_episodes", "run.log_every", "run.report_every", "run.checkpoint_every",
    "run.max_nonfinite", "replay.prefetch", "speed.precision", "speed.fused_optim", "speed.pin_memory",
)

# Which env.* keys each suite's constructor takes.
SUITE_ENV_KEYS = {
    "atari": ("size", "action_repeat", "grayscale", "sticky", "noops", "life_done", "time_limit"),
    "dmc": ("size", "action_repeat", "camera", "fast_render", "time_limit"),
    "toy": ("object_size", "time_limit"),  # toy_catch renders 64x64, one frame per step
}


def env_kwargs(cfg: DictConfig) -> Dict:
    """The env.* values that apply to the run's suite, as ``envs.make`` keywords."""
    suite = config_lib.suite_of(cfg.run.env)
    out = {}
    for key in SUITE_ENV_KEYS[suite]:
        value = cfg.env[key]
        if key == "time_limit" and value == 0:
            continue  # the suite's own limit
        if key == "camera" and value < 0:
            continue
        out[key] = tuple(value) if key == "size" else value
    return out


def _flatten(node, prefix="") -> Dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_writable(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UserError(f"logdir '{path}' is a file, not a directory: pass another --logdir")
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"logdir '{path}' is not writable ({probe} refuses writes): pass a --logdir you can write to")


def _check_env(cfg: DictConfig) -> None:
    """Build the env once: unknown names and missing rendering libraries fail here."""
    import envs

    env = envs.make(cfg.run.env, seed=cfg.run.seed, **env_kwargs(cfg))
    env.close()


class RunDir:
    """A prepared run directory with its config and device."""

    def __init__(self, path: Path, cfg: DictConfig, device, resumed: bool):
        self.path = path
        self.cfg = cfg
        self.device = device
        self.resumed = resumed

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def env_kwargs(self) -> Dict:
        return env_kwargs(self.cfg)

    def restore(self, agent) -> Dict:
        """Load the newest valid checkpoint into ``agent``; returns the counters."""
        from mwm.checkpoint import load_latest, set_rng_state

        counters = {"step": 0, "updates": 0, "episodes": 0, "pretrained": False}
        state, path = load_latest(self.checkpoints)
        if state is None:
            return counters
        agent.load_state_dict(state["agent"])
        counters.update(state["counters"])
        set_rng_state(state["rng"])
        print(f"resuming from {path} at step {counters['step']}")
        return counters

    def save(self, agent, counters: Dict) -> None:
        from mwm.checkpoint import rng_state, save_checkpoint

        state = {"agent": agent.state_dict(), "counters": dict(counters), "rng": rng_state()}
        save_checkpoint(str(self.checkpoints), state, step=counters["step"])


def prepare_run(env: str, agent: str, preset: str, overrides: Sequence[str], resume: bool = False,
                check_env: bool = True) -> RunDir:
    """Validate everything, then create (or reopen) the run directory."""
    cfg = config_lib.build(env, agent, preset, overrides)
    if not cfg.run.logdir:
        cfg.run.logdir = f"runs/{env}-{agent}-seed{cfg.run.seed}"
    path = Path(cfg.run.logdir).expanduser()
    _check_writable(path)
    device = resolve_device(cfg.run.device)
    saved = path / "config.yaml"
    has_checkpoint = (path / "checkpoints").is_dir() and any((path / "checkpoints").glob("checkpoint-*.pt"))
    if resume and not has_checkpoint:
        raise UserError(f"--resume: no checkpoint in '{path / 'checkpoints'}': drop --resume to start a new run")
    if saved.exists():
        old = _flatten(OmegaConf.to_container(config_lib.load(saved)))
        new = _flatten(OmegaConf.to_container(cfg))
        for key in sorted(set(old) | set(new)):
            if key not in RESUMABLE_KEYS and old.get(key) != new.get(key):
                raise UserError(f"logdir '{path}' holds a run with {key}={old.get(key)!r}, not {new.get(key)!r}: "
                                "use a new --logdir, or the same settings to resume")
    if check_env:
        _check_env(cfg)
    path.mkdir(parents=True, exist_ok=True)
    if not saved.exists():
        config_lib.save(cfg, saved)
    return RunDir(path, cfg, device, resumed=has_checkpoint)
