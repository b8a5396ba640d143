"""Data-parallel scaling: updates/s and env steps/s with 1, 2, ... ranks (torch.distributed).

    python -m benchmarks.scaling --ranks 1 2 --out scaling.json          # CPU processes, gloo
    python -m benchmarks.scaling --ranks 1 2 4 8 --device cuda --preset default --agents mwm
                                                                           # one GPU per rank, NCCL

Two measurements, both weak scaling (the per-rank batch stays, the global batch grows
with the ranks):

- ``update``: N ranks (torch.multiprocessing, gloo on CPU, NCCL on GPUs) each time
  ``agent.update`` on its own replay of random episodes; gradients are averaged over
  ranks as in training. Reported: updates/s (every rank does each update together) and
  sequences/s (updates/s x global batch); efficiency = sequences/s at N / (N x
  sequences/s at 1).
- ``train``: ``torchrun --nproc_per_node N -m mwm.train`` (plain ``python -m mwm.train``
  for 1) on toy_catch for ``--train-steps`` agent steps; the run's last logged
  ``speed/env_steps_per_s`` (env steps of all ranks) and ``speed/updates_per_s``.
  Efficiency = env steps/s at N / (N x env steps/s at 1).

On CPU each rank runs ``--threads`` torch threads; N ranks need N x threads free cores
to scale. Results: a table on stdout, JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

if not __package__:  # run as ``python benchmarks/scaling.py``: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("update", "train")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="world sizes to measure")
    parser.add_argument("--agents", nargs="+", default=["mwm"], help="agents of the update section")
    parser.add_argument("--env", default="toy_catch")
    parser.add_argument("--preset", default="tiny", choices=("tiny", "small", "default"))
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, rank k on cuda:k)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--updates", type=int, default=20, help="timed updates per rank")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates first")
    parser.add_argument("--train-steps", type=int, default=400, help="agent steps of each training run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (CPU)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every world size this many times, interleaved; the median is reported")
    parser.add_argument("--out", help="write the results here as JSON")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- update section


def _update_rank(rank: int, size: int, port: int, args: argparse.Namespace, agent_name: str, out: str) -> None:
    torch.set_num_threads(args.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from agents.registry import make_agent
    from benchmarks._data import filled_replay, step_spec
    from benchmarks.throughput import spaces_of
    from mwm import config, distributed

    device = torch.device(args.device if args.device == "cpu" else f"cuda:{rank}")
    if size > 1:
        distributed.init(distributed.World(rank, size, rank), "gloo" if device.type == "cpu" else "cpu:gloo,cuda:nccl",
                         timeout=300)
    try:
        cfg = config.build(args.env, agent_name, args.preset, [f"run.device={device}", "replay.prefetch=0"])
        obs_space, act_space = spaces_of(cfg)
        torch.manual_seed(0)
        agent = make_agent(cfg, obs_space, act_space, device)
        distributed.share_state(agent, {"step": 0}, seed=0)
        with tempfile.TemporaryDirectory() as folder:
            replay = filled_replay(folder, step_spec(obs_space, act_space), hasattr(act_space, "n"), 2000, 100,
                                   seed=rank)
            for _ in range(args.warmup):
                agent.update(replay)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(args.updates):
                agent.update(replay)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            agent.close()
        if rank == 0:
            batch = cfg.curl.batch if agent_name == "curl" else cfg.replay.batch
            Path(out).write_text(json.dumps({"updates_per_s": args.updates / elapsed, "batch_per_rank": batch}))
    finally:
        distributed.close()


def time_updates(args: argparse.Namespace, agent_name: str, ranks: int) -> Dict[str, float]:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "result.json")
        mp.spawn(_update_rank, args=(ranks, port, args, agent_name, out), nprocs=ranks, join=True)
        result = json.loads(Path(out).read_text())
    result["sequences_per_s"] = result["updates_per_s"] * result["batch_per_rank"] * ranks
    return result


# ----------------------------------------------------------------------------- train section


def train_command(ranks: int, logdir: str, args: argparse.Namespace) -> List[str]:
    train = ["-m", "mwm.train", "--env", args.env, "--preset", args.preset, "--logdir", logdir,
             "--steps", str(args.train_steps), "--device", args.device, "--run.parallel", "false",
             "--run.log_every", str(args.train_steps), "--run.checkpoint_every", str(args.train_steps),
             "--run.eval_every", "0", "--run.report_every", "0", "--run.video_every", "0"]
    if ranks == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), *train]


def time_training(args: argparse.Namespace, ranks: int) -> Dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        logdir = str(Path(folder) / "run")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
        start = time.perf_counter()
        done = subprocess.run(train_command(ranks, logdir, args), cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"training with {ranks} rank(s) failed:\n{done.stderr[-3000:]}")
        last = [json.loads(line) for line in (Path(logdir) / "metrics.jsonl").read_text().splitlines()][-1]
    return {"env_steps_per_s": last["speed/env_steps_per_s"], "updates_per_s": last["speed/updates_per_s"],
            "wall_s": wall}


# ----------------------------------------------------------------------------- report


def measure(fn, args: argparse.Namespace) -> Dict[int, Dict[str, float]]:
    """``fn(n)`` for every world size, ``--rounds`` times interleaved (1, 2, 1, 2, ...) so that a change in
    the machine's load hits every size alike; the median of each number, and every round's values."""
    rounds: Dict[int, List[Dict[str, float]]] = {n: [] for n in args.ranks}
    for _ in range(args.rounds):
        for n in args.ranks:
            rounds[n].append(fn(n))
    out = {}
    for n, results in rounds.items():
        out[n] = {key: float(np.median([r[key] for r in results])) for key in results[0]}
        out[n]["rounds"] = results
    return out


def efficiency(results: Dict[int, Dict[str, float]], key: str) -> Dict[int, float]:
    """Throughput at N over N x throughput at 1 (1.0: perfect weak scaling)."""
    if 1 not in results:
        return {}
    return {n: results[n][key] / (n * results[1][key]) for n in results}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    report: Dict[str, Any] = {"args": vars(args), "cpu_count": os.cpu_count(),
                              "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if "update" in args.sections:
        for agent_name in args.agents:
            results = measure(lambda n: time_updates(args, agent_name, n), args)
            report[f"update/{agent_name}"] = {"results": results,
                                              "efficiency": efficiency(results, "sequences_per_s")}
            for n, result in results.items():
                print(f"update {agent_name:9s} {n} rank(s): {result['updates_per_s']:7.2f} updates/s "
                      f"{result['sequences_per_s']:8.1f} sequences/s  efficiency "
                      f"{report[f'update/{agent_name}']['efficiency'].get(n, float('nan')):.2f}")
    if "train" in args.sections:
        results = measure(lambda n: time_training(args, n), args)
        report["train"] = {"results": results, "efficiency": efficiency(results, "env_steps_per_s")}
        for n, result in results.items():
            print(f"train {args.env} {n} rank(s): {result['env_steps_per_s']:7.1f} env steps/s "
                  f"{result['updates_per_s']:6.2f} updates/s  efficiency "
                  f"{report['train']['efficiency'].get(n, float('nan')):.2f}  ({result['wall_s']:.0f} s wall)")
    report["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.out:
        from mwm.atomic import atomic_write_text

        atomic_write_text(args.out, json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
