"""Where the probes' frames come from: an env under a random or trained policy, or the
replay of an existing training run.

Every source returns episodes as dicts of (T, ...) numpy arrays holding ``image``,
``reward`` and the env's extras (``ram`` for Atari; ``object_box``, ``object_pos``,
``paddle_pos`` for toy_catch), which :func:`mwm.probes.annotations.labels_for` turns
into labels.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

import gymnasium as gym
import numpy as np
import torch

from mwm.errors import UserError

Episode = Dict[str, np.ndarray]
Policy = Callable[[Mapping[str, np.ndarray], bool], object]  # (obs, is_first) -> env action


class RandomPolicy:
    """Uniform random actions from the env's action space, from its own seeded generator."""

    def __init__(self, space: gym.Space, seed: int):
        self.space = space
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: Mapping[str, np.ndarray], is_first: bool):
        if isinstance(self.space, gym.spaces.Discrete):
            return int(self.rng.integers(self.space.n))
        return self.rng.uniform(-1.0, 1.0, size=self.space.shape).astype(np.float32)


class AgentPolicy:
    """The eval-mode policy of a trained run, read from ``<run>/config.yaml`` and its newest
    checkpoint in ``<run>/checkpoints``."""

    def __init__(self, run_dir: str, env: gym.Env, device: torch.device, env_name: str = ""):
        from agents import make_agent
        from mwm import config as config_lib
        from mwm.checkpoint import load_latest

        from mwm.limits import frame_shape

        path = Path(run_dir).expanduser()
        if not (path / "config.yaml").is_file():
            raise UserError(f"probe.policy '{run_dir}' is not a run directory (no config.yaml): "
                            "pass the --logdir of a mwm.train run, or leave probe.policy empty for random actions")
        cfg = run_config(path, "probe.policy", run_dir)
        check_source_env(cfg.run.env, env_name, "probe.policy", run_dir)
        want = tuple(env.observation_space["image"].shape)
        if frame_shape(cfg) != want:
            raise UserError(f"probe.policy '{run_dir}' was trained on images of shape {frame_shape(cfg)}, but the "
                            f"probe's env renders {want}: use the run's env settings (e.g. --env.size) or another run")
        try:
            self.agent = make_agent(cfg, env.observation_space, env.action_space, device)
        except (ValueError, TypeError) as error:
            raise UserError(f"probe.policy '{run_dir}': its config cannot build an agent ({error}): "
                            "pass another run") from None
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            state, _ = load_latest(str(path / "checkpoints"),
                                   check=lambda state: self.agent.load_state_dict(state["agent"]))
        if state is None:
            raise UserError(f"probe.policy '{run_dir}' has no intact checkpoint of its agent in checkpoints/: "
                            "train it first, or leave probe.policy empty for random actions")
        self.agent.eval()
        self.device = device
        self.discrete = isinstance(env.action_space, gym.spaces.Discrete)
        self.state = None

    @torch.no_grad()
    def __call__(self, obs: Mapping[str, np.ndarray], is_first: bool):
        batch = {k: torch.as_tensor(np.asarray(v)[None]).to(self.device) for k, v in obs.items()}  # (1, ...)
        batch["is_first"] = torch.tensor([is_first], device=self.device)
        action, self.state = self.agent.policy(batch, None if is_first else self.state, "eval")
        action = action[0].float().cpu().numpy()  # (A,)
        return int(action.argmax()) if self.discrete else np.clip(action, -1.0, 1.0)


def agent_action(space: gym.Space, action) -> np.ndarray:
    """An env action as the agents store it: one-hot (A,) for discrete spaces, else (A,) floats."""
    if isinstance(space, gym.spaces.Discrete):
        return np.eye(int(space.n), dtype=np.float32)[int(action)]
    return np.asarray(action, np.float32).reshape(-1)


def run_episode(env: gym.Env, policy: Policy, max_steps: int) -> Episode:
    """One episode of at most ``max_steps`` agent steps (plus the reset frame), laid out as
    replay stores it: each step's ``action`` is the one that led to it (zeros at the reset
    frame), with ``is_first`` and ``is_terminal`` flags."""
    obs, _ = env.reset()
    no_action = np.zeros_like(agent_action(env.action_space, env.action_space.sample()))
    steps: List[Dict[str, np.ndarray]] = [
        dict(obs, reward=np.float32(0.0), action=no_action, is_first=True, is_terminal=False)]
    for _ in range(max_steps):
        action = policy(obs, len(steps) == 1)
        obs, reward, terminated, truncated, _ = env.step(action)
        steps.append(dict(obs, reward=np.float32(reward), action=agent_action(env.action_space, action),
                          is_first=False, is_terminal=bool(terminated)))
        if terminated or truncated:
            break
    return {key: np.stack([step[key] for step in steps]) for key in steps[0]}


def collect_episodes(env_name: str, env_kwargs: Mapping[str, object], episodes: int, max_steps: int, seed: int,
                     policy_dir: str = "", device: Optional[torch.device] = None) -> List[Episode]:
    """``episodes`` episodes of ``env_name`` under a random policy, or the trained policy of
    the run in ``policy_dir``."""
    import envs

    env = envs.make(env_name, seed=seed, **env_kwargs)
    try:
        if policy_dir:
            policy: Policy = AgentPolicy(policy_dir, env, device or torch.device("cpu"), env_name)
        else:
            policy = RandomPolicy(env.action_space, seed)
        return [run_episode(env, policy, max_steps) for _ in range(episodes)]
    finally:
        env.close()


def replay_folder(path: str) -> Path:
    """The episode folder of a run directory (``<run>/replay``) or the folder itself."""
    folder = Path(path).expanduser()
    if (folder / "replay").is_dir():
        folder = folder / "replay"
    if not any(folder.glob("*.npz")) and (folder / "rank0").is_dir():  # a torchrun run: rank 0's shard
        folder = folder / "rank0"
    if not folder.is_dir() or not any(folder.glob("*.npz")):
        raise UserError(f"probe.replay '{path}' holds no episode files (*.npz): pass a run directory "
                        "of mwm.train or its replay/ folder")
    return folder


def run_config(run_dir: Path, key: str, given: str):
    """The config.yaml of the run a probe source names; a damaged or foreign one is a UserError."""
    from mwm import config as config_lib

    try:
        return config_lib.load(run_dir / "config.yaml")
    except UserError as error:
        raise UserError(f"{key} '{given}': its config.yaml is not a mwm.train config ({error}): "
                        "pass the --logdir of a mwm.train run") from None
    except Exception as error:  # not YAML, unreadable, ...
        raise UserError(f"{key} '{given}': its config.yaml is unreadable ({type(error).__name__}): "
                        "pass the --logdir of a mwm.train run") from None


def check_source_env(source_env: str, env_name: str, key: str, given: str) -> None:
    """A probe source recorded on another env than ``--env`` is refused."""
    if env_name and source_env != env_name:
        raise UserError(f"{key} '{given}' holds a run of {source_env}, not {env_name}: pass --env {source_env}, "
                        f"or a run of {env_name}")


# Extras that mark a suite's frames (labels are read from them): suite -> keys it must have.
SUITE_EXTRAS = {"toy": ("object_box",), "atari": ("ram",), "dmc": ()}


def check_episodes(episodes: List[Episode], env_name: str, image_shape, key: str, given: str) -> None:
    """Every episode must hold frames of ``env_name``'s suite and the probe's image shape."""
    suite = env_name.split("_", 1)[0]
    need = set(SUITE_EXTRAS.get(suite, ()))
    foreign = {k for keys in SUITE_EXTRAS.values() for k in keys} - need
    for episode in episodes:
        shape = tuple(np.shape(episode.get("image"))[1:])
        if image_shape is not None and shape != tuple(image_shape):
            raise UserError(f"{key} '{given}' holds frames of shape {shape}, but {env_name} with these settings "
                            f"renders {tuple(image_shape)}: pass the env settings the run used (e.g. --env.size), "
                            "or another source")
        if not need <= set(episode) or foreign & set(episode):
            raise UserError(f"{key} '{given}' does not hold {env_name} frames (its episodes carry "
                            f"{sorted(set(episode) & (need | foreign)) or 'no'} suite extras): pass a run of "
                            f"{env_name}, or the --env it was recorded on")


def replay_episodes(path: str, episodes: int, env_name: str = "", image_shape=None) -> List[Episode]:
    """The newest ``episodes`` readable episode files of a run's replay, oldest first.

    Only those files are read (a training run's replay can be far larger than RAM);
    unreadable files are skipped with a warning, as :meth:`replay.Replay.load` does.
    With ``env_name``, a run directory recorded on another env (its config.yaml says so)
    and episodes of another suite or image shape are refused.
    """
    from replay.episodes import EpisodeFileError, list_episode_files, load_episode

    folder = replay_folder(path)
    run_dir = folder.parent.parent if folder.parent.name == "replay" else folder.parent  # replay/rank<k>/
    if env_name and (run_dir / "config.yaml").is_file() and "replay" in (folder.name, folder.parent.name):
        check_source_env(run_config(run_dir, "probe.replay", path).run.env, env_name, "probe.replay", path)
    found: List[Episode] = []
    for file in reversed(list_episode_files(str(folder))):  # newest first
        if len(found) == episodes:
            break
        try:
            found.append(load_episode(file.path, expected_length=file.length))
        except EpisodeFileError as error:
            warnings.warn(f"skipping episode file {file.path}: {error}", stacklevel=2)
            continue
        if env_name:
            check_episodes(found[-1:], env_name, image_shape, "probe.replay", path)
    if len(found) < episodes:
        raise UserError(f"probe.replay '{path}' holds {len(found)} readable episodes but the probe needs "
                        f"{episodes} (probe.train_episodes + probe.eval_episodes): lower them or train longer")
    return found[::-1]
