"""Long runs: does resident memory level off? (A benchmark, not a test; it runs outside CI.)

Runs the real training loop (``mwm.train.train``) on the tiny preset for many thousands
of updates and samples the process's resident set size (RSS) every ``--every``
updates. A leak (logged values kept, replay growing past its capacity, autograd graphs
held alive by metrics) shows as RSS growing with the update count; a healthy run levels
off once the replay reaches its capacity. The verdict is the least-squares slope of
RSS over the second half of the run, in MiB per 1000 updates.

    python benchmarks/long_run.py                         # 5000 updates on toy_catch
    python benchmarks/long_run.py --updates 20000 --every 200
    python benchmarks/long_run.py --updates 3000 --agent dreamerv2 -- --run.log_every 20

The replay capacity is kept small (``--capacity`` steps, default 1000 = about 12 MiB of
64x64x3 frames) so that it fills early and the second half measures leaks only.
Prints a table and one JSON object, writes the JSON to ``--out`` and a PNG plot of RSS
over updates to ``--plot``; exits 1 when the slope exceeds ``--max-slope``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mwm.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", type=int, default=5000, help="scheduled updates to run")
    p.add_argument("--every", type=int, default=100, help="updates between RSS samples")
    p.add_argument("--env", default="toy_catch")
    p.add_argument("--agent", default="mwm")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--train-steps", type=int, default=2, help="updates per env step (run.train_steps)")
    p.add_argument("--capacity", type=int, default=1000, help="replay steps kept in RAM")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: no spin-waiting against other processes on a shared CPU)")
    p.add_argument("--max-slope", type=float, default=1.0,
                   help="MiB per 1000 updates over the second half above which the run counts as leaking")
    p.add_argument("--logdir", help="run directory to keep (default: a temporary one, deleted at the end)")
    p.add_argument("--out", default="runs/bench-long-run/long_run.json")
    p.add_argument("--plot", default="runs/bench-long-run/long_run.png")
    p.add_argument("overrides", nargs="*", help="extra mwm.train flags after --, e.g. -- --run.log_every 50")
    args = p.parse_args(argv)
    if args.updates < 2 * args.every or args.every < 1:
        p.error("--updates must be at least twice --every (and --every >= 1)")
    return args


def read_rss_mib() -> float:
    """This process's resident set size in MiB (psutil when installed, else /proc/self/status)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return psutil.Process().memory_info().rss / 2**20
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0  # kB -> MiB
    raise RuntimeError("no VmRSS in /proc/self/status: install psutil")


class RssSampler:
    """Records (update, seconds since start, RSS MiB) every ``every`` calls of :meth:`tick`."""

    def __init__(self, every: int, read: Callable[[], float] = read_rss_mib):
        self.every = every
        self.read = read
        self.updates = 0
        self.start = time.time()
        self.samples: List[Dict[str, float]] = []

    def tick(self) -> None:
        self.updates += 1
        if self.updates % self.every == 0:
            sample = {"update": self.updates, "seconds": round(time.time() - self.start, 2),
                      "rss_mib": round(self.read(), 2)}
            self.samples.append(sample)
            print(f"  update {sample['update']:>7}  {sample['seconds']:>8.0f}s  RSS {sample['rss_mib']:8.1f} MiB",
                  flush=True)


def watch_updates(make_agent: Callable, sampler: RssSampler) -> Callable:
    """Wrap an agent factory so that each ``agent.update`` call ticks ``sampler``."""

    def make_and_watch(*args, **kwargs):
        agent = make_agent(*args, **kwargs)
        update = agent.update

        def counted_update(replay):
            metrics = update(replay)
            sampler.tick()
            return metrics

        agent.update = counted_update
        return agent

    return make_and_watch


def slope_per_1000(samples: List[Dict[str, float]]) -> float:
    """Least-squares slope of RSS over updates, in MiB per 1000 updates."""
    x = np.array([s["update"] for s in samples], dtype=np.float64)
    y = np.array([s["rss_mib"] for s in samples], dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        return 0.0
    return float(np.polyfit(x, y, 1)[0] * 1000.0)


def summarize(samples: List[Dict[str, float]], updates: int, max_slope: float) -> Dict:
    """Figures of the run: RSS at start, middle, end, peak and the second-half slope."""
    second = [s for s in samples if s["update"] > updates / 2]
    slope = slope_per_1000(second)
    rss = [s["rss_mib"] for s in samples]
    return {
        "updates": updates,
        "samples": len(samples),
        "rss_first_mib": rss[0],
        "rss_middle_mib": second[0]["rss_mib"] if second else rss[-1],
        "rss_last_mib": rss[-1],
        "rss_peak_mib": max(rss),
        "second_half_growth_mib": round(second[-1]["rss_mib"] - second[0]["rss_mib"], 2) if second else 0.0,
        "second_half_slope_mib_per_1000_updates": round(slope, 3),
        "max_slope": max_slope,
        "levels_off": bool(slope <= max_slope),
        "seconds": samples[-1]["seconds"],
    }


def train_overrides(args: argparse.Namespace, logdir: str) -> List[str]:
    """Flags for a run of ``args.updates`` scheduled updates: one env step per ``train_steps`` updates."""
    prefill = 200
    steps = prefill + -(-args.updates // args.train_steps)  # ceil
    return [f"run.logdir={logdir}", f"run.steps={steps}", f"run.prefill={prefill}", "run.pretrain=10",
            "run.train_every=1", f"run.train_steps={args.train_steps}", "run.envs=1", "run.parallel=false",
            "run.log_every=50", "run.report_every=1000", "run.checkpoint_every=1000",
            f"replay.capacity={args.capacity}"]


def run_training(args: argparse.Namespace, logdir: str, sampler: RssSampler) -> None:
    """The real loop of ``python -m mwm.train``, with ``agent.update`` counted."""
    import agents
    from mwm import cli
    from mwm.run_dir import prepare_run
    from mwm.train import StopFlag, train

    extra = cli.split_overrides(args.overrides)
    run = prepare_run(args.env, args.agent, args.preset, train_overrides(args, logdir) + extra)
    original = agents.make_agent
    agents.make_agent = watch_updates(original, sampler)
    try:
        train(run, StopFlag())
    finally:
        agents.make_agent = original
        run.close()


def table(samples: List[Dict[str, float]]) -> str:
    lines = [f"{'update':>8} {'seconds':>9} {'RSS MiB':>9}"]
    lines += [f"{s['update']:>8} {s['seconds']:>9.0f} {s['rss_mib']:>9.1f}" for s in samples]
    return "\n".join(lines)


def plot(samples: List[Dict[str, float]], summary: Dict, path: str) -> Optional[str]:
    """PNG of RSS over updates with the second-half fit; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    x = np.array([s["update"] for s in samples])
    y = np.array([s["rss_mib"] for s in samples])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, y, marker=".", label="RSS")
    half = x > summary["updates"] / 2
    if half.sum() >= 2:
        fit = np.polyfit(x[half], y[half], 1)
        ax.plot(x[half], np.polyval(fit, x[half]), "--",
                label=f"second half: {summary['second_half_slope_mib_per_1000_updates']:+.2f} MiB / 1000 updates")
    ax.set_xlabel("updates")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title("long run: resident memory over updates")
    ax.legend()
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    logdir = args.logdir or tempfile.mkdtemp(prefix="mwm-long-run-")
    sampler = RssSampler(args.every)
    print(f"long run: {args.updates} updates of {args.agent} ({args.preset}) on {args.env}, "
          f"RSS every {args.every} updates, logdir {logdir}", flush=True)
    try:
        run_training(args, logdir, sampler)
    finally:
        if not args.logdir:
            shutil.rmtree(logdir, ignore_errors=True)
    if len(sampler.samples) < 2:
        print("too few samples: the run ended early", file=sys.stderr)
        return 1
    summary = summarize(sampler.samples, sampler.updates, args.max_slope)
    result = {"config": {k: v for k, v in vars(args).items() if k != "overrides"} | {"overrides": args.overrides},
              "summary": summary, "samples": sampler.samples}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))
    written = plot(sampler.samples, summary, args.plot)
    print(table(sampler.samples))
    print(json.dumps(summary))
    print(f"wrote {args.out}" + (f" and {written}" if written else " (no matplotlib: no plot)"))
    return 0 if summary["levels_off"] else 1


if __name__ == "__main__":
    sys.exit(main())
