"""Throughput benchmark: how fast each part of training runs, and what each speed switch buys.

    python -m benchmarks.throughput --preset small --out throughput.json   # or: python benchmarks/throughput.py
    python -m benchmarks.throughput --preset default --device cuda --out gpu.json
    python -m benchmarks.throughput --help

Sections (``--sections``):

- ``update``: for each agent and each speed variant (the plain fp32 eager path, each
  switch of the ``speed`` config alone, and all of them), the autoencoder update, the
  world-model update and the actor-critic update on fixed device batches, the full
  training step (``agent.update`` on a replay, sampling included) and the policy step;
  peak memory; on CUDA the fraction of the step the GPU is busy (torch.profiler).
- ``mae``: the MAE's encoder at its mask ratio against the SimMIM variant's encoder
  (all tokens), and the whole update of each, against the ratio of their FLOPs.
- ``replay``: sampling a 16 x 50 batch of 64 x 64 x 3 frames (and the MAE's 32 x 32),
  the prefetcher's wait, RAM against the raw uint8 size, and the device replay on CUDA.
- ``env``: agent steps per second of one env and of N worker processes; DMC with the
  fast render settings against the default ones.

Every timing is the median (with quartiles, min, max) of ``--repeats`` calls after
``--warmup`` untimed ones (more when a CUDA graph needs its warm-up and capture);
speed-ups are against ``eager_fp32`` measured in the same run. Results: a table on
stdout, and JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

if not __package__:  # run as ``python benchmarks/throughput.py``: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.registry import AGENT_NAMES  # noqa: E402
from benchmarks import _timing  # noqa: E402
from benchmarks._data import FixedBatches, filled_replay, step_spec  # noqa: E402

AGENTS = tuple(AGENT_NAMES)
SECTIONS = ("update", "mae", "replay", "env")
ENV_NAMES = ("atari_pong", "dmc_walker_walk", "toy_catch")
# The plain path every speed-up is measured against, and the variants: one switch each, then all.
BASELINE = {"precision": "fp32", "fused_optim": False, "pin_memory": False, "cuda_graph": False, "compile": "never",
            "replay_on_device": False}
VARIANTS = {
    "eager_fp32": {},
    "bf16": {"precision": "bf16"},
    "fused_optim": {"fused_optim": True},
    "pin_memory": {"pin_memory": True},
    "compile": {"compile": "always"},
    "cuda_graph": {"cuda_graph": True, "fused_optim": True},  # graphs need the graph-safe (fused) Adam
    "replay_on_device": {"replay_on_device": True},
    "all": None,  # the config's own speed block: everything that applies on the device
}
REPLAY_BATCHES = {"wm_16x50": (16, 50), "mae_32x32": (32, 32)}  # paper batch shapes
REPLAY_EPISODE = 500  # steps per synthetic episode (a DMC episode at action repeat 2)
IMAGE = (64, 64, 3)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m benchmarks.throughput --preset tiny --repeats 2            # smoke run (CI)\n"
               "  python -m benchmarks.throughput --preset small --out cpu.json       # CPU figures\n"
               "  python -m benchmarks.throughput --preset default --device cuda --out gpu.json")
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "default"),
                        help="network and batch sizes (default: small; 'default' is the papers')")
    parser.add_argument("--env", default="atari_pong", help="env whose config and spaces the agents use")
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), help=f"agents to time (default: {AGENTS})")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="speed variants of the update section (eager_fp32 is always run)")
    parser.add_argument("--cpu-compile", action="store_true",
                        help="also time the torch.compile variant on CPU (compiling takes minutes)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument("--busy-steps", type=int, default=5, help="training steps profiled for GPU busy time")
    parser.add_argument("--policy-envs", type=int, default=1, help="N of the batched policy step")
    parser.add_argument("--env-names", nargs="+", default=list(ENV_NAMES), help="envs of the env section")
    parser.add_argument("--env-steps", type=int, default=100, help="timed agent steps per env measurement")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the parallel env timing")
    parser.add_argument("--replay-steps", type=int, default=20000, help="steps held by the replay section's replay")
    parser.add_argument("--update-replay-steps", type=int, default=5000,
                        help="steps of random episodes the update section samples from")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    unknown = sorted(set(args.agents) - set(AGENTS))
    if unknown:
        parser.error(f"unknown agents {unknown}; choose from {', '.join(AGENTS)}")
    return args


# ----------------------------------------------------------------------------- set-up


def build_config(env: str, agent: str, preset: str, speed: Optional[Dict[str, Any]], *extra: str):
    """The run config of (env, agent, preset), with the ``speed`` block replaced where given
    (the baseline plus ``speed``; None keeps the config's own) and ``extra`` overrides."""
    from mwm import config

    overrides = [] if speed is None else [f"speed.{k}={v}" for k, v in {**BASELINE, **speed}.items()]
    return config.build(env, agent, preset, overrides + list(extra))


def spaces_of(cfg):
    """Observation and action spaces of the config's env (one env is made and closed)."""
    import envs
    from mwm.run_dir import env_kwargs

    env = envs.make(cfg.run.env, **env_kwargs(cfg))
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def variant_speed(cfg, overrides: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The ``speed`` block of a variant: the baseline plus its overrides, or the config's own (None)."""
    return dict(cfg.speed) if overrides is None else {**dict(cfg.speed), **BASELINE, **overrides}


def variant_plan(args, device: torch.device, cfg) -> List[tuple]:
    """(name, speed overrides, reason to skip or None) for each requested variant of ``cfg``."""
    from mwm.speed import speed_settings

    base = speed_settings(device, **variant_speed(cfg, {}))
    plan = []
    for name in ["eager_fp32"] + [v for v in args.variants if v != "eager_fp32"]:
        settings = speed_settings(device, **variant_speed(cfg, VARIANTS[name]))
        reason = None
        if name != "eager_fp32" and settings == base:
            reason = f"no effect on {device.type}"
        elif device.type == "cpu" and settings.compile and not args.cpu_compile:
            reason = "compiling on CPU takes minutes: add --cpu-compile"
        plan.append((name, VARIANTS[name], reason))
    return plan


# ----------------------------------------------------------------------------- update section


def is_world_model_agent(agent) -> bool:
    from agents.world_model_agent import WorldModelAgent

    return isinstance(agent, WorldModelAgent)


def has_representation(agent) -> bool:
    """Whether a Dreamer-family agent's representation trains beside its world model."""
    return agent.representation.trains


def time_components(agent, replay, device, args, warmup: int) -> Dict[str, Any]:
    """The autoencoder, world-model and actor-critic updates alone, on fixed device batches."""
    from agents.world_model_agent import WM_KEYS

    out: Dict[str, Any] = {}
    fixed = FixedBatches(replay, device)
    if has_representation(agent):
        out["autoencoder"] = _timing.summarize(_timing.time_calls(
            lambda: agent.representation_update(fixed), device, args.repeats, warmup))
    cfg = agent.cfg.replay
    batch = {k: v for k, v in next(fixed.dataset(cfg.batch, cfg.length)).items() if k in WM_KEYS}

    def world_model():
        return agent.run_step("world_model", agent.world_model_step, batch, (agent.wm_opt,))

    out["world_model"] = _timing.summarize(_timing.time_calls(world_model, device, args.repeats, warmup))
    ac_inputs = {"post": world_model()[1], "is_terminal": batch["is_terminal"]}
    out["actor_critic"] = _timing.summarize(_timing.time_calls(
        lambda: agent.run_step("actor_critic", agent.actor_critic_step, ac_inputs,
                               (agent.actor_opt, agent.critic_opt)), device, args.repeats, warmup))
    agent.close()
    return out


def time_policy(agent, obs_space, device, args, warmup: int) -> Dict[str, float]:
    """One batched policy step of ``--policy-envs`` envs, its actions read back to the host."""
    n = args.policy_envs
    image = torch.zeros((n, *obs_space["image"].shape), dtype=torch.uint8, device=device)
    obs = {"image": image, "is_first": torch.zeros(n, dtype=torch.bool, device=device),
           "reward": torch.zeros(n, device=device), "is_last": torch.zeros(n, dtype=torch.bool, device=device),
           "is_terminal": torch.zeros(n, dtype=torch.bool, device=device)}
    state = {"value": None}

    def step():
        action, state["value"] = agent.policy(obs, state["value"], "train")
        return action.cpu()  # the collector reads the actions on the host

    return _timing.summarize(_timing.time_calls(step, device, args.repeats, warmup))


def bench_variant(name: str, cfg, spaces, replay, device: torch.device, args) -> Dict[str, Any]:
    """Every timing of one agent under one speed variant."""
    from agents import make_agent
    from mwm.speed import WARMUP_CALLS

    obs_space, act_space = spaces
    torch.manual_seed(args.seed)
    _timing.reset_cuda_peak(device)
    start = time.perf_counter()
    agent = make_agent(cfg, obs_space, act_space, device)
    settings = getattr(agent, "speed", None)
    warmup = max(args.warmup, WARMUP_CALLS + 1) if settings is not None and settings.cuda_graph else args.warmup
    result: Dict[str, Any] = {"variant": name}
    if is_world_model_agent(agent) and not settings.replay_on_device:
        result.update(time_components(agent, replay, device, args, warmup))
    result["train_step"] = _timing.summarize(_timing.time_calls(lambda: agent.update(replay), device,
                                                                args.repeats, warmup))
    if device.type == "cuda" and args.busy_steps > 0:
        result["gpu"] = _timing.gpu_busy(lambda: agent.update(replay), device, args.busy_steps)
    result["policy"] = time_policy(agent, obs_space, device, args, warmup)
    close = getattr(agent, "close", None)
    if close is not None:
        close()
    result["updates_per_s"] = 1000.0 / result["train_step"]["median_ms"]
    result["cuda_peak_bytes"] = _timing.cuda_peak_bytes(device)
    result["peak_rss_bytes"] = _timing.peak_rss_bytes()
    result["seconds"] = time.perf_counter() - start
    return result


def add_speedups(rows: List[Dict[str, Any]]) -> None:
    """Each variant's speed-up over eager_fp32, part by part (measured in this run)."""
    base = next((r for r in rows if r["variant"] == "eager_fp32" and "train_step" in r), None)
    if base is None:
        return
    for row in rows:
        if "train_step" not in row:
            continue
        row["speedup"] = {part: base[part]["median_ms"] / row[part]["median_ms"]
                          for part in ("autoencoder", "world_model", "actor_critic", "train_step", "policy")
                          if part in row and part in base}


def bench_updates(args, device: torch.device) -> Dict[str, Any]:
    """The update section for every requested agent that imports and builds."""
    from agents.registry import agent_class

    results: Dict[str, Any] = {}
    for agent_name in args.agents:
        try:
            agent_class(agent_name)
        except Exception as error:  # an agent that does not import is reported, not fatal
            results[agent_name] = {"skipped": f"does not import ({type(error).__name__}: {error})"}
            continue
        cfg = build_config(args.env, agent_name, args.preset, None)
        spaces = spaces_of(cfg)
        spec = step_spec(*spaces)
        with tempfile.TemporaryDirectory() as folder:
            replay = filled_replay(folder, spec, hasattr(spaces[1], "n"), args.update_replay_steps,
                                   max(REPLAY_EPISODE, cfg.replay.length, cfg.mae.length), seed=args.seed)
            rows = []
            for name, overrides, reason in variant_plan(args, device, cfg):
                if reason is not None:
                    rows.append({"variant": name, "skipped": reason})
                    continue
                print(f"[update] {agent_name} / {name} ...", file=sys.stderr, flush=True)
                try:
                    cfg = build_config(args.env, agent_name, args.preset, overrides)
                    rows.append(bench_variant(name, cfg, spaces, replay, device, args))
                except Exception as error:  # keep the other measurements; say what failed
                    rows.append({"variant": name, "skipped": f"failed: {type(error).__name__}: {error}"})
            add_speedups(rows)
        results[agent_name] = {"variants": rows}
    return results


# ----------------------------------------------------------------------------- MAE section


def bench_mae(args, device: torch.device) -> Dict[str, Any]:
    """MAE (mask tokens dropped) against SimMIM (mask tokens encoded): time and FLOPs."""
    from mwm.speed import speed_settings

    out: Dict[str, Any] = {}
    plan = {name: (overrides, reason) for name, overrides, reason in
            variant_plan(args, device, build_config(args.env, "mwm", args.preset, None))}
    for name in ("eager_fp32", "all"):
        overrides, reason = plan.get(name, (VARIANTS[name], None))
        if reason is not None:
            out[name] = {"skipped": reason}
            continue
        cfg = build_config(args.env, "mwm", args.preset, overrides)
        settings = speed_settings(device, **cfg.speed)
        print(f"[mae] {name} ...", file=sys.stderr, flush=True)
        out[name] = {kind: mae_timings(build_config(args.env, "mwm", args.preset, overrides,
                                                    f"mae.simmim={simmim}"), settings, device, args)
                     for kind, simmim in (("mae", False), ("simmim", True))}
        mae, simmim = out[name]["mae"], out[name]["simmim"]
        for part in ("encoder", "update"):
            speedup = simmim[part]["median_ms"] / mae[part]["median_ms"]
            flop_ratio = simmim[f"{part}_flops"] / mae[f"{part}_flops"]
            out[name][f"{part}_speedup"] = speedup
            out[name][f"{part}_flop_ratio"] = flop_ratio
            out[name][f"{part}_efficiency"] = speedup / flop_ratio
    return out


def mae_timings(cfg, settings, device: torch.device, args) -> Dict[str, Any]:
    """Encoder forward+backward and a whole update of the config's MAE, with their FLOPs
    (counted on the eager model: compiled kernels do the same arithmetic)."""
    import contextlib

    from torch.utils.flop_counter import FlopCounterMode

    from mwm.config import construct
    from mwm.masking import make_masking
    from mwm.optim import Optimizer
    from mwm.representations.mae import build_mae
    from mwm.speed import compile_modules
    from mwm.vit import Transformer

    m = cfg.mae
    torch.manual_seed(args.seed)
    height, width = cfg.env.size
    channels = 1 if cfg.env.grayscale else 3
    model = build_mae(cfg, (height, width, channels)).to(device)
    opt = construct(Optimizer, m, name="mae", params=model.parameters(), fused=settings.fused_optim)
    frames = m.batch * m.length
    images = torch.randint(0, 256, (frames, height, width, channels), dtype=torch.uint8, device=device)
    rewards = torch.randn(frames, device=device)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if settings.bf16 else contextlib.nullcontext()

    def masking():
        return make_masking(m.mask_type, m.batch, m.length, model.num_tokens, m.mask_ratio, device)

    def encoder():
        with autocast():
            latents, _ = model.encode(images, masking())
        latents.float().mean().backward()
        model.zero_grad(set_to_none=True)

    def update():
        with autocast():
            loss, _ = model.loss(images, rewards, masking())
        opt.step(loss)

    result: Dict[str, Any] = {}
    for part, fn in (("encoder", encoder), ("update", update)):
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        result[f"{part}_flops"] = counter.get_total_flops()
    if settings.compile:
        compile_modules(model, (Transformer,), settings.compile_backend)
    for part, fn in (("encoder", encoder), ("update", update)):
        result[part] = _timing.summarize(_timing.time_calls(fn, device, args.repeats, args.warmup))
    return result


# ----------------------------------------------------------------------------- replay section


def bench_replay(args, device: torch.device) -> Dict[str, Any]:
    """Sampling speed and memory of the replay at 64 x 64 x 3."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import gymnasium as gym

    from benchmarks._data import replay_memory
    from replay.prefetch import DeviceEpisodes, DeviceSampler

    obs_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, IMAGE, np.uint8)})
    spec = step_spec(obs_space, gym.spaces.Discrete(6))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # a fresh heap
        memory = pool.submit(replay_memory, spec, args.replay_steps, REPLAY_EPISODE, args.seed).result()
    out: Dict[str, Any] = {"steps": memory["steps"], "image_mb": memory["image_bytes"] / 2**20,
                           "store_over_images": memory["store_bytes"] / memory["image_bytes"],
                           "rss_over_images": memory["rss_growth"] / memory["image_bytes"]}
    with tempfile.TemporaryDirectory() as folder:
        replay = filled_replay(folder, spec, True, args.replay_steps, REPLAY_EPISODE, seed=args.seed)
        for name, (batch, length) in REPLAY_BATCHES.items():
            out[f"sample_{name}"] = _timing.summarize(_timing.time_calls(
                lambda: replay.sample(batch, length), torch.device("cpu"), args.repeats, args.warmup))
            with replay.dataset(batch, length, prefetch=2, device=device) as data:  # the learner never waits
                out[f"prefetch_back_to_back_{name}"] = _timing.summarize(_timing.time_calls(
                    lambda: next(data), device, args.repeats, args.warmup))
        if device.type == "cuda":
            episodes = DeviceEpisodes(device)
            for name, (batch, length) in REPLAY_BATCHES.items():
                sampler = DeviceSampler(replay, episodes, batch, length)
                out[f"device_sample_{name}"] = _timing.summarize(_timing.time_calls(
                    lambda: next(sampler), device, args.repeats, args.warmup))
            out["device_over_images"] = episodes.nbytes / memory["image_bytes"]
    return out


# ----------------------------------------------------------------------------- env section


def time_env(name: str, num_envs: int, parallel: bool, steps: int, seed: int, **overrides) -> Dict[str, Any]:
    """Agent steps per second of ``num_envs`` envs stepped with random actions."""
    from envs.vector import VectorEnv

    with VectorEnv(name, num_envs, seed=seed, parallel=parallel, **overrides) as env:
        rng = np.random.default_rng(seed)
        env.reset()

        def step():
            if env.discrete:
                env.step(rng.integers(0, env.action_size, num_envs))
            else:
                env.step(rng.uniform(-1, 1, (num_envs, env.action_size)).astype(np.float32))

        stats = _timing.summarize(_timing.time_calls(step, torch.device("cpu"), steps, min(5, steps)))
    stats["agent_steps_per_s"] = num_envs * 1000.0 / stats["median_ms"]
    return stats


def bench_envs(args) -> Dict[str, Any]:
    """One env in-process against ``--workers`` worker processes; DMC fast against default rendering."""
    from mwm.run_dir import env_kwargs

    out: Dict[str, Any] = {}
    for name in args.env_names:
        print(f"[env] {name} ...", file=sys.stderr, flush=True)
        kwargs = env_kwargs(build_config(name, "mwm", "default", {}))
        row: Dict[str, Any] = {"single": time_env(name, 1, False, args.env_steps, args.seed, **kwargs)}
        if args.workers > 1:
            row["workers"] = time_env(name, args.workers, True, args.env_steps, args.seed, **kwargs)
            row["worker_count"] = args.workers
            row["worker_scaling"] = row["workers"]["agent_steps_per_s"] / row["single"]["agent_steps_per_s"]
        if name.startswith("dmc_"):
            slow = time_env(name, 1, False, args.env_steps, args.seed, **{**kwargs, "fast_render": False})
            row["default_render"] = slow
            row["fast_render_speedup"] = slow["median_ms"] / row["single"]["median_ms"]
        out[name] = row
    return out


# ----------------------------------------------------------------------------- report


def targets(results: Dict[str, Any], device: torch.device) -> List[Dict[str, Any]]:
    """The issue's targets next to what this run measured (None where not measured)."""
    rows = []

    def add(what: str, target: str, value: Optional[float]) -> None:
        rows.append({"target": what, "goal": target, "measured": value})

    updates = results.get("update", {})

    def variant(agent: str, name: str) -> Dict[str, Any]:
        return next((r for r in updates.get(agent, {}).get("variants", []) if r["variant"] == name), {})

    mwm_all = variant("mwm", "all")
    add("mwm train step: all switches vs fp32 eager (CUDA)", ">= 4x", mwm_all.get("speedup", {}).get("train_step"))
    add("mwm train step: GPU busy (CUDA)", ">= 0.8", mwm_all.get("gpu", {}).get("busy"))
    dv2 = variant("dreamerv2", "all") or variant("dreamerv2", "eager_fp32")
    add("dreamerv2 update ms (H100/H200)", "< 30", dv2.get("train_step", {}).get("median_ms"))
    mae = results.get("mae", {})
    mae_best = mae.get("all") if "encoder_speedup" in mae.get("all", {}) else mae.get("eager_fp32", {})
    add("MAE encoder (mask 0.75) vs SimMIM encoder", ">= 3x", (mae_best or {}).get("encoder_speedup"))
    add("MAE update speed-up / FLOP ratio", ">= 0.9", (mae_best or {}).get("update_efficiency"))
    replay = results.get("replay", {})
    add("replay sample 16x50x64x64x3 ms (CPU)", "< 5", replay.get("sample_wm_16x50", {}).get("median_ms"))
    add("replay RAM (RSS growth) / raw uint8 frames", "<= 1.05", replay.get("rss_over_images"))
    envs = results.get("envs", {})
    add("atari: workers vs one env", "~ N", envs.get("atari_pong", {}).get("worker_scaling"))
    add("dmc: fast vs default rendering", ">= 3x", envs.get("dmc_walker_walk", {}).get("fast_render_speedup"))
    if results.get("preset") == "small" and device.type == "cpu":
        add("small preset mwm updates/s (CPU)", "usable", variant("mwm", "eager_fp32").get("updates_per_s"))
    return rows


def report(results: Dict[str, Any]) -> str:
    """The readable tables."""
    parts = [f"machine: {json.dumps(results['machine'])}",
             f"command: {results['command']}"]
    rows = []
    for agent, entry in results.get("update", {}).items():
        if "skipped" in entry:
            rows.append({"agent": agent, "variant": "-", "note": entry["skipped"]})
            continue
        skipped: Dict[str, List[str]] = {}
        for row in entry["variants"]:
            if "skipped" in row:
                skipped.setdefault(row["skipped"], []).append(row["variant"])
                continue
            cells = {"agent": agent, "variant": row["variant"]}
            for part in ("autoencoder", "world_model", "actor_critic", "train_step", "policy"):
                if part in row:
                    cells[f"{part}_ms"] = row[part]["median_ms"]
            cells["step_spread"] = _timing.spread(row["train_step"])
            cells["x_eager"] = row.get("speedup", {}).get("train_step")
            cells["gpu_busy"] = row.get("gpu", {}).get("busy")
            cells["rss_mb"] = row["peak_rss_bytes"] / 2**20
            cells["cuda_mb"] = row["cuda_peak_bytes"] / 2**20 if row["cuda_peak_bytes"] else None
            rows.append(cells)
        rows += [{"agent": agent, "variant": ",".join(names), "note": f"skipped: {reason}"}
                 for reason, names in skipped.items()]
    if rows:
        parts.append("update section (median ms per call; x_eager = speed-up of the train step over eager_fp32)")
        parts.append(_timing.table(rows, ["agent", "variant", "autoencoder_ms", "world_model_ms", "actor_critic_ms",
                                          "train_step_ms", "policy_ms", "step_spread", "x_eager", "gpu_busy",
                                          "rss_mb", "cuda_mb", "note"]))
    mae_rows = []
    for name, entry in results.get("mae", {}).items():
        if "skipped" in entry:
            mae_rows.append({"variant": name, "note": entry["skipped"]})
            continue
        mae_rows.append({"variant": name, "mae_enc_ms": entry["mae"]["encoder"]["median_ms"],
                         "simmim_enc_ms": entry["simmim"]["encoder"]["median_ms"],
                         "enc_speedup": entry["encoder_speedup"], "enc_flop_ratio": entry["encoder_flop_ratio"],
                         "mae_update_ms": entry["mae"]["update"]["median_ms"],
                         "simmim_update_ms": entry["simmim"]["update"]["median_ms"],
                         "update_speedup": entry["update_speedup"], "update_flop_ratio": entry["update_flop_ratio"],
                         "efficiency": entry["update_efficiency"]})
    if mae_rows:
        parts.append("mae section: MAE (mask tokens dropped) vs SimMIM (mask tokens encoded)")
        parts.append(_timing.table(mae_rows, ["variant", "mae_enc_ms", "simmim_enc_ms", "enc_speedup",
                                              "enc_flop_ratio", "mae_update_ms", "simmim_update_ms",
                                              "update_speedup", "update_flop_ratio", "efficiency", "note"]))
    replay = results.get("replay")
    if replay:
        rrows = [{"measure": key, "median_ms": value["median_ms"], "spread": _timing.spread(value)}
                 for key, value in replay.items() if isinstance(value, dict)]
        rrows += [{"measure": key, "value": value} for key, value in replay.items() if not isinstance(value, dict)]
        parts.append("replay section (64x64x3 frames)")
        parts.append(_timing.table(rrows, ["measure", "median_ms", "spread", "value"]))
    env_rows = []
    for name, row in results.get("envs", {}).items():
        env_rows.append({"env": name, "one_env_steps_per_s": row["single"]["agent_steps_per_s"],
                         "workers": row.get("worker_count"),
                         "workers_steps_per_s": row.get("workers", {}).get("agent_steps_per_s"),
                         "scaling": row.get("worker_scaling"),
                         "default_render_steps_per_s": row.get("default_render", {}).get("agent_steps_per_s"),
                         "fast_render_speedup": row.get("fast_render_speedup")})
    if env_rows:
        parts.append("env section (agent steps per second, random actions)")
        parts.append(_timing.table(env_rows, ["env", "one_env_steps_per_s", "workers", "workers_steps_per_s",
                                              "scaling", "default_render_steps_per_s", "fast_render_speedup"]))
    parts.append("targets")
    parts.append(_timing.table(results["targets"], ["target", "goal", "measured"]))
    return "\n\n".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    from mwm.atomic import atomic_write_text
    from mwm.runtime import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    results: Dict[str, Any] = {
        "command": "python -m benchmarks.throughput " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": _timing.machine(), "device": str(device), "preset": args.preset, "env": args.env,
    }
    if "update" in args.sections:
        results["update"] = bench_updates(args, device)
    if "mae" in args.sections:
        results["mae"] = bench_mae(args, device)
    if "replay" in args.sections:
        results["replay"] = bench_replay(args, device)
    if "env" in args.sections:
        results["envs"] = bench_envs(args)
    results["machine"]["load_average_after"] = _timing.machine()["load_average"]
    results["targets"] = targets(results, device)
    print(report(results))
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=1, default=str))
        print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    from mwm import cli

    cli.run_main(lambda: main() and 0)
