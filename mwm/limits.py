"""Limits checked at start-up, before they bite: memory, env workers, replay sizes.

A run that cannot work should stop in its first second with one line, not after
hours (replay too small to hold a sequence) or when the kernel kills it (a batch that
needs more memory than the machine has). The estimates are lower bounds: a refusal
means the run surely does not fit; passing does not promise that it does.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from mwm.errors import UserError

# A worker process (python, numpy, gymnasium and one env) takes at least this much memory.
WORKER_BYTES = 80 * 2**20
# More env workers than this many per CPU core are refused; more than WARN_PER_CORE warned about.
MAX_WORKERS_PER_CORE = 16
WARN_WORKERS_PER_CORE = 2

SUITE_TIME_LIMITS = {"atari": 27000, "dmc": 1000, "toy": 1000}


def available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation (MemAvailable on Linux); None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def frame_shape(cfg) -> tuple:
    """(H, W, C) of the images the run's env renders with its config."""
    h, w = cfg.env.size
    channels = 1 if cfg.run.env.startswith("atari_") and cfg.env.grayscale else 3
    if cfg.run.env.startswith("toy_"):
        h, w, channels = 64, 64, 3  # toy_catch renders 64x64 RGB whatever env.size says
    return int(h), int(w), channels


def frame_bytes(cfg) -> int:
    """Bytes of one observation as uint8 (H * W * C)."""
    h, w, c = frame_shape(cfg)
    return h * w * c


def batch_frames(cfg) -> int:
    """Frames of the largest batch one update samples (world model, autoencoder, CURL, SiamMAE)."""
    agent = cfg.run.agent
    if agent == "curl":
        return int(cfg.curl.batch) * (int(cfg.curl.history) + 1) * 2
    frames = [int(cfg.replay.batch) * int(cfg.replay.length)]
    if agent == "mwm":
        frames.append(int(cfg.mae.batch) * int(cfg.mae.length))
    if agent == "siammae":
        frames.append(int(cfg.siammae.batch) * 2)
    return max(frames)


def sequence_lengths(cfg) -> dict:
    """The sequence lengths replay must be able to sample for this agent: config key -> steps."""
    agent = cfg.run.agent
    if agent == "curl":
        return {}
    lengths = {"replay.length": int(cfg.replay.length)}
    if agent == "mwm":
        lengths["mae.length"] = int(cfg.mae.length)
    if agent == "siammae":
        lengths["siammae.gap_max"] = int(cfg.siammae.gap_max) + 1
    return lengths


def longest_episode(cfg) -> Optional[int]:
    """Most steps an episode can hold (reset frame included) when env.time_limit sets it, else None.

    DMC counts its limit in control steps, action_repeat of them per agent step.
    """
    limit = int(cfg.env.time_limit)
    if limit <= 0:
        return None
    if cfg.run.env.startswith("dmc_"):
        limit = -(-limit // int(cfg.env.action_repeat))
    return limit + 1


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_config(cfg, memory: Optional[int] = None, cores: Optional[int] = None) -> None:
    """Refuse settings that cannot work on this machine; called before anything is written."""
    r = cfg.run
    memory = available_memory() if memory is None else memory
    cores = cpu_count() if cores is None else cores
    # Replay must hold one whole episode and one sampled sequence, or nothing ever trains.
    limit = longest_episode(cfg)
    for key, length in sequence_lengths(cfg).items():
        if length > cfg.replay.capacity:
            raise UserError(f"replay.capacity {cfg.replay.capacity} is smaller than the {length}-step sequences "
                            f"that {key} asks for, so nothing would ever train: raise --replay.capacity "
                            f"(e.g. {max(length * 100, 10000)}) or lower --{key}")
        if limit is not None and length > limit:
            raise UserError(f"{key} asks for {length}-step sequences but env.time_limit {cfg.env.time_limit} ends "
                            f"episodes after {limit} steps (the reset frame included), so nothing would ever train: "
                            f"lower --{key} or raise --env.time_limit")
    if limit is not None and cfg.replay.capacity < limit:
        raise UserError(f"replay.capacity {cfg.replay.capacity} cannot hold one episode of env.time_limit "
                        f"{cfg.env.time_limit} ({limit} steps; an episode larger than the capacity leaves replay at "
                        f"once): raise --replay.capacity to at least {limit}")
    if r.eval_every and r.eval_episodes < 1:
        raise UserError(f"run.eval_episodes is {r.eval_episodes} but run.eval_every is {r.eval_every}: "
                        "set --run.eval_episodes 1 or more, or --run.eval_every 0 to turn evaluation off")
    # Env workers: one process each.
    workers = r.envs if r.parallel and r.envs > 1 else 0
    if workers > MAX_WORKERS_PER_CORE * cores:
        raise UserError(f"run.envs {r.envs} starts {workers} worker processes on {cores} CPU cores, far more than "
                        f"can run (at most {MAX_WORKERS_PER_CORE * cores} here): use --run.envs {cores} or so")
    if workers > WARN_WORKERS_PER_CORE * cores:
        print(f"warning: run.envs {r.envs} worker processes on {cores} CPU cores: they will mostly wait for a core; "
              f"--run.envs {cores} is usually as fast", file=sys.stderr)
    check_batch_memory(cfg, memory, workers)


def check_batch_memory(cfg, memory: Optional[int] = None, workers: int = 0) -> None:
    """Refuse a batch (plus ``workers`` env processes) that needs more memory than is available."""
    memory = available_memory() if memory is None else memory
    if memory is None:
        return
    need_workers = workers * WORKER_BYTES
    # A sampled batch: uint8 frames plus their float32 copy (activations come on top).
    need_batch = batch_frames(cfg) * frame_bytes(cfg) * 5
    if need_workers + need_batch > memory:
        parts = []
        if need_batch > memory / 4:
            parts.append(f"a batch of {batch_frames(cfg)} frames takes at least {_gib(need_batch)}")
        if need_workers > memory / 4:
            parts.append(f"{workers} env workers take at least {_gib(need_workers)}")
        detail = "; ".join(parts) or f"batch and env workers take at least {_gib(need_batch + need_workers)}"
        raise UserError(f"this run needs more memory than the machine has available ({detail}; "
                        f"{_gib(memory)} available): lower --replay.batch / --replay.length (or mae.batch, "
                        "curl.batch, siammae.batch) or --run.envs")


def check_model(cfg, agent, device, memory: Optional[int] = None) -> None:
    """Refuse when the agent's weights, gradients and optimiser moments alone exceed the device's memory."""
    import torch

    param_bytes = sum(p.numel() * p.element_size() for p in agent.parameters())
    need = param_bytes * 4 + batch_frames(cfg) * frame_bytes(cfg) * 4  # weights, grads, 2 Adam moments; batch
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory if memory is None else memory
        where = f"{device}"
    else:
        memory = available_memory() if memory is None else memory
        where = "this machine"
    if memory is not None and need > memory:
        raise UserError(f"the {cfg.run.agent} agent ({param_bytes // 4 / 1e6:.0f}M parameters) and one batch need at "
                        f"least {_gib(need)} but {where} has {_gib(memory)}: use a smaller --preset or lower "
                        "--replay.batch")
