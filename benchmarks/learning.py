"""Learning evidence: does the agent beat a random policy? (A benchmark, not a test.)

Trains an agent with ``python -m mwm.train`` for each seed, then compares its
evaluation returns with a uniformly random policy's on the same env. The default is
MWM with the tiny preset on toy_catch with a large (8 px) object, sized to finish on
2 CPU cores in well under an hour:

    python benchmarks/learning.py                                  # 3 seeds, toy_catch
    python benchmarks/learning.py --seeds 0 1 --steps 6000 --agent dreamerv2
    python benchmarks/learning.py --env atari_pong --preset default --steps 100000   # GPU

Prints a table and writes JSON (``--out``); ``--plot`` adds a PNG of eval return over
steps.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mwm.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="toy_catch")
    p.add_argument("--agent", default="mwm")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=5000, help="agent steps per seed")
    p.add_argument("--object-size", type=int, default=8, help="toy_catch object side in pixels")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--random-episodes", type=int, default=50)
    p.add_argument("--logdir", default="runs/bench-learning")
    p.add_argument("--out", default="runs/bench-learning/learning.json")
    p.add_argument("--plot", default="runs/bench-learning/learning.png")
    p.add_argument("--train-every", type=int, default=5, help="agent steps between updates (MWM: 5)")
    p.add_argument("--prefill", type=int, default=500)
    p.add_argument("--pretrain", type=int, default=100, help="autoencoder-only updates after prefill")
    p.add_argument("overrides", nargs="*", help="extra flags for mwm.train, after --, e.g. -- --mae.mask_ratio 0.9")
    return p.parse_args(argv)


def random_returns(env_name: str, episodes: int, seed: int, overrides: dict) -> list:
    """Returns of a uniformly random policy, through the same env constructor."""
    import envs

    env = envs.make(env_name, seed=seed, **overrides)
    rng = np.random.default_rng(seed)
    returns = []
    for _ in range(episodes):
        env.reset()
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample() if not hasattr(
                env.action_space, "n") else int(rng.integers(env.action_space.n)))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def train_seed(args, seed: int) -> dict:
    logdir = Path(args.logdir) / f"{args.env}-{args.agent}-seed{seed}"
    cmd = [sys.executable, "-m", "mwm.train", "--env", args.env, "--agent", args.agent, "--preset", args.preset,
           "--seed", str(seed), "--steps", str(args.steps), "--logdir", str(logdir),
           "--run.eval_every", str(args.eval_every), "--run.eval_episodes", str(args.eval_episodes),
           "--run.train_every", str(args.train_every), "--run.prefill", str(args.prefill),
           "--run.pretrain", str(args.pretrain), "--env.time_limit", "0",  # full episodes, as the random baseline
           *(["--env.object_size", str(args.object_size)] if args.env == "toy_catch" else []), *args.overrides]
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    evals = [(row["step"], row["eval/return"]) for row in rows if row.get("eval/return") is not None]
    return {"seed": seed, "logdir": str(logdir), "minutes": (time.time() - start) / 60, "evals": evals,
            "final_eval": evals[-1][1] if evals else None}


def main(argv=None) -> int:
    args = parse_args(argv)
    env_overrides = {"object_size": args.object_size} if args.env == "toy_catch" else {}
    runs = [train_seed(args, seed) for seed in args.seeds]
    rand = random_returns(args.env, args.random_episodes, seed=1234, overrides=env_overrides)
    finals = [r["final_eval"] for r in runs if r["final_eval"] is not None]
    result = {
        "env": args.env, "agent": args.agent, "preset": args.preset, "steps": args.steps,
        "object_size": args.object_size if args.env == "toy_catch" else None,
        "random_mean": float(np.mean(rand)), "random_std": float(np.std(rand)), "random_episodes": len(rand),
        "agent_final_mean": float(np.mean(finals)) if finals else None,
        "agent_final_std": float(np.std(finals)) if finals else None,
        "runs": runs,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}))
    print(f"\n{'seed':>4} | {'final eval return':>17} | {'minutes':>7} | eval returns over steps")
    for r in runs:
        trace = ", ".join(f"{s}:{v:+.1f}" for s, v in r["evals"])
        print(f"{r['seed']:>4} | {r['final_eval'] if r['final_eval'] is not None else float('nan'):>17.2f} | "
              f"{r['minutes']:>7.1f} | {trace}")
    print(f"random policy: {result['random_mean']:+.2f} +- {result['random_std']:.2f} over {len(rand)} episodes")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for r in runs:
            if r["evals"]:
                ax.plot(*zip(*r["evals"]), marker="o", label=f"seed {r['seed']}")
        ax.axhline(result["random_mean"], color="grey", linestyle="--", label="random policy")
        ax.set_xlabel("agent steps")
        ax.set_ylabel("eval return")
        ax.set_title(f"{args.agent} on {args.env} ({args.preset})")
        ax.legend()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        atomic_write_bytes(args.plot, buffer.getvalue())
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
