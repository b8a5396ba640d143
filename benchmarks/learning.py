"""Learning evidence: does the agent beat a random policy? (A benchmark, not a test.)

Trains an agent with ``python -m mwm.train`` for each seed, then compares its
evaluation returns with a uniformly random policy's on the same env. The default is
MWM on toy_catch with a large (16 px) object in the ``cpu`` setting: the tiny preset
widened where learning needs it (below), 12k agent steps, two seeds at a time on 2 CPU
cores, about 40 minutes. Each seed's final policy then plays ``--final-episodes``
episodes and a random policy ``--random-episodes``; the agent "beats random" when the
95% bootstrap intervals of the two means do not overlap.

    python benchmarks/learning.py                                  # seeds 0 1, toy_catch
    python benchmarks/learning.py --seeds 0 1 2 --jobs 1           # one seed at a time
    python benchmarks/learning.py --agent dreamerv2 --steps 10000
    python benchmarks/learning.py --setting paper --env atari_pong --steps 100000   # GPU

Measured (2 CPU cores, seeds 0 and 1): final policies +1.54 [+1.14, +1.94] over 100
episodes against random -0.66 [-1.06, -0.26]; the README has the table and the curve.

Seeds whose run directory already holds a finished run are not trained again (the
run resumes at its last step and stops), so the table can be rebuilt from old runs.
Prints a table and writes JSON (``--out``) and a PNG of eval return over steps
(``--plot``). Extra ``mwm.train`` flags go after ``--``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mwm.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402
from mwm.errors import UserError  # noqa: E402
from mwm.probes.stats import bootstrap_ci  # noqa: E402

MAX_EPISODE_STEPS = 100_000  # the env's own time limit ends episodes first
RANDOM_SEED = 1234  # env and action seed of the random policy's episodes
CONFIDENCE, RESAMPLES = 0.95, 10000  # bootstrap intervals of the mean returns
FINAL_SEED = 5000  # + run seed: env seed of the final policy's episodes (unlike any training env)

# Named settings: (preset, mwm.train flags). `cpu` widens the tiny preset where
# learning needs it: a 64-unit RSSM with 8x8 latents, 2 x 64 heads, a 15-step
# imagination horizon, 16 x 16 world-model batches (the tiny preset's 4 x 8 batch held
# about one reward, and the reward head never learned) and 16 x 8 MAE batches. The KL
# scale is DreamerV2's 1.0 rather than the toy suite's 0.1 (official MWM), which pushes
# the small RSSM to predict its latents rather than re-read them every step. With the
# 1000 autoencoder-only updates below, the rest is the tiny preset and the toy suite's
# and mwm_toy block's values.
SETTINGS = {
    "cpu": ("tiny", [
        "--rssm.deter", "64", "--rssm.hidden", "64", "--rssm.stoch", "8", "--rssm.classes", "8",
        "--wm.head_units", "64", "--wm.head_layers", "2", "--ac.units", "64", "--ac.layers", "2",
        "--ac.horizon", "15", "--ac.entropy", "3e-3", "--ac.slow_critic_every", "50",
        "--replay.batch", "16", "--replay.length", "16", "--mae.batch", "16", "--mae.length", "8",
        "--wm.kl_scale", "1.0",
        "--run.log_every", "250", "--run.checkpoint_every", "2000", "--run.report_every", "5000",
    ]),
    "paper": ("default", []),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="toy_catch")
    p.add_argument("--agent", default="mwm")
    p.add_argument("--setting", default="cpu", choices=sorted(SETTINGS), help="cpu (default) or paper (a GPU)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--jobs", type=int, default=2, help="seeds trained at the same time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    p.add_argument("--steps", type=int, default=12000, help="agent steps per seed")
    p.add_argument("--object-size", type=int, default=16, help="toy_catch object side in pixels")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--last-evals", type=int, default=5,
                   help="the agent's score is the mean of its last this many evaluations")
    p.add_argument("--final-episodes", type=int, default=50, help="episodes of each seed's final policy")
    p.add_argument("--random-episodes", type=int, default=100)
    p.add_argument("--logdir", default="runs/bench-learning")
    p.add_argument("--out", help="JSON result (default <logdir>/learning.json)")
    p.add_argument("--plot", help="PNG of eval return over steps (default <logdir>/learning.png; 'none' for no plot)")
    p.add_argument("--train-every", type=int, default=3, help="agent steps between updates (MWM: 5)")
    p.add_argument("--prefill", type=int, default=1000, help="random-policy steps before training (toy suite: 1000)")
    p.add_argument("--pretrain", type=int, default=1000,
                   help="autoencoder-only updates after prefill (official MWM: 5000); with 100 the world model "
                        "started on tokens that were still changing fast and its posterior collapsed")
    p.add_argument("overrides", nargs="*", help="extra flags for mwm.train, after --, e.g. -- --mae.mask_ratio 0.9")
    args = p.parse_args(argv)
    if min(args.jobs, args.threads, args.last_evals, args.final_episodes, args.random_episodes) < 1:
        p.error("--jobs, --threads, --last-evals, --final-episodes and --random-episodes must be at least 1")
    args.out = args.out or str(Path(args.logdir) / "learning.json")
    args.plot = args.plot or str(Path(args.logdir) / "learning.png")
    return args


def train_command(args, seed: int, logdir: Path) -> list:
    """The ``mwm.train`` command line of one seed; flags after ``--`` replace the setting's
    flags of the same key (mwm.train refuses a key given twice)."""
    preset, setting_flags = SETTINGS[args.setting]
    flags = ["--seed", str(seed), "--steps", str(args.steps), "--logdir", str(logdir),
             "--run.eval_every", str(args.eval_every), "--run.eval_episodes", str(args.eval_episodes),
             "--run.train_every", str(args.train_every), "--run.prefill", str(args.prefill),
             "--run.pretrain", str(args.pretrain), "--env.time_limit", "0",  # full episodes, as the random baseline
             *(["--env.object_size", str(args.object_size)] if args.env == "toy_catch" else []),
             *setting_flags]
    return [sys.executable, "-m", "mwm.train", "--env", args.env, "--agent", args.agent, "--preset", preset,
            *without_keys(flags, args.overrides), *args.overrides]


def without_keys(flags: list, extra: list) -> list:
    """``flags`` (pairs ``--key value``) less the pairs whose config key ``extra`` sets again."""
    from mwm.cli import SHORTCUTS, split_overrides
    from mwm.errors import UserError

    try:
        keys = {item.split("=", 1)[0] for item in split_overrides(extra)}
    except UserError:
        return flags  # mwm.train reports the bad flag
    keys |= {SHORTCUTS[item[2:]] for item in extra if item[2:] in SHORTCUTS}
    out = []
    for name, value in zip(flags[::2], flags[1::2]):
        if SHORTCUTS.get(name[2:], name[2:]) not in keys:
            out += [name, value]
    return out


def run_log(logdir: Path) -> Path:
    """A seed's console log: next to its run directory (mwm.train refuses a non-empty folder without a run)."""
    return logdir.parent / f"{logdir.name}.train.log"


def train_seed(args, seed: int) -> dict:
    """Train (or finish, or just reopen) one seed's run; its console output goes to <run>.train.log."""
    logdir = Path(args.logdir) / f"{args.env}-{args.agent}-seed{seed}"
    log_path = run_log(logdir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = train_command(args, seed, logdir)
    print(f"seed {seed}: training, log in {log_path}\n$ {' '.join(cmd)}", flush=True)
    start = time.time()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    with open(log_path, "ab") as log:
        log_start = log.tell()
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        with open(log_path, "rb") as log:
            log.seek(log_start)
            lines = log.read().decode(errors="replace").splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        if code == 2 and errors:  # mwm.train refused: its one line says what to do
            raise UserError(f"seed {seed}: {errors[-1][len('error: '):]}")
        last = next((line.strip() for line in reversed(lines) if line.strip()), "no output")
        raise RunFailed(f"seed {seed}: mwm.train failed with exit status {code} (last line: {last[:200]}): "
                        f"see the full log in {log_path}")
    rows = read_metrics(logdir / "metrics.jsonl")
    evals = sorted({row["step"]: row["eval/return"] for row in rows if row.get("eval/return") is not None}.items())
    print(f"seed {seed}: done in {(time.time() - start) / 60:.1f} min", flush=True)
    return {"seed": seed, "logdir": str(logdir), "minutes": (time.time() - start) / 60, "evals": evals}


def episode_returns(env_name: str, env_kwargs: dict, episodes: int, seed: int, policy_dir: str = "") -> list:
    """Returns of ``episodes`` full episodes: the run's final policy (eval mode) or, without
    ``policy_dir``, a uniformly random policy; both through the same env constructor."""
    import torch

    from mwm.probes.sources import collect_episodes

    torch.manual_seed(seed)  # the policy samples its latent states: seed them too
    eps = collect_episodes(env_name, env_kwargs, episodes, MAX_EPISODE_STEPS, seed, policy_dir)
    return [float(ep["reward"].sum()) for ep in eps]


def summarise(args, runs: list, random: list) -> dict:
    """The result JSON: per-seed figures, pooled final-policy returns against the random policy's."""
    for run in runs:
        run["last_evals_mean"] = float(np.mean([v for _, v in run["evals"][-args.last_evals:]])) if run["evals"] else None
    pooled = [ret for run in runs for ret in run["final_returns"]]
    agent_mean, rand_mean = float(np.mean(pooled)), float(np.mean(random))
    agent_low, agent_high = bootstrap_ci(pooled, CONFIDENCE, resamples=RESAMPLES)
    rand_low, rand_high = bootstrap_ci(random, CONFIDENCE, resamples=RESAMPLES)
    return {
        "env": args.env, "agent": args.agent, "setting": args.setting, "preset": SETTINGS[args.setting][0],
        "steps": args.steps, "object_size": args.object_size if args.env == "toy_catch" else None,
        "overrides": args.overrides,
        "agent_mean": agent_mean, "agent_ci95": [agent_low, agent_high], "agent_episodes": len(pooled),
        "random_mean": rand_mean, "random_ci95": [rand_low, rand_high], "random_episodes": len(random),
        "beats_random": agent_low > rand_high,
        "runs": runs,
    }


def print_table(result: dict) -> None:
    print(f"\n{result['agent']} on {result['env']}, setting {result['setting']}, {result['steps']} agent steps")
    print(f"{'seed':>4} | {'final policy return':>19} | {'last evals':>10} | {'minutes':>7} | eval return over steps")
    for run in result["runs"]:
        final = np.asarray(run["final_returns"])
        trace = ", ".join(f"{step / 1000:g}k:{value:+.1f}" for step, value in run["evals"])
        last = run["last_evals_mean"]
        print(f"{run['seed']:>4} | {final.mean():>+11.2f} +- {final.std():4.2f} | "
              f"{last if last is not None else float('nan'):>+10.2f} | {run['minutes']:>7.1f} | {trace}")
    low, high = result["agent_ci95"]
    print(f"agent : {result['agent_mean']:+.2f} [{low:+.2f}, {high:+.2f}] (95% CI) over {result['agent_episodes']} episodes")
    low, high = result["random_ci95"]
    print(f"random: {result['random_mean']:+.2f} [{low:+.2f}, {high:+.2f}] (95% CI) over {result['random_episodes']} episodes")
    print("the agent beats the random policy" if result["beats_random"] else
          "the agent does NOT clearly beat the random policy (the intervals overlap or it is worse)")


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in result["runs"]:
        if run["evals"]:
            ax.plot(*zip(*run["evals"]), marker="o", markersize=3, label=f"seed {run['seed']}")
    low, high = result["random_ci95"]
    ax.axhspan(low, high, color="grey", alpha=0.3, label="random policy (95% CI)")
    ax.set_xlabel("agent steps")
    ax.set_ylabel(f"eval return (mean of {result['runs'][0].get('eval_episodes', 'n')} episodes)")
    ax.set_title(f"{result['agent']} on {result['env']} ({result['setting']} setting)")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    print(f"plot: {path}")


class RunFailed(Exception):
    """A training run crashed (not a user error): one line naming its log, exit status 1."""


def read_metrics(path: Path) -> list:
    """The records of a metrics.jsonl; a line a crash cut short (or any unparseable one) is skipped."""
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def main(argv=None) -> int:
    from mwm import config as config_lib
    from mwm.run_dir import env_kwargs

    args = parse_args(argv)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda seed: train_seed(args, seed), args.seeds))
    kwargs = env_kwargs(config_lib.load(Path(runs[0]["logdir"]) / "config.yaml"))
    for run in runs:
        run["eval_episodes"] = args.eval_episodes
        run["final_returns"] = episode_returns(args.env, kwargs, args.final_episodes, FINAL_SEED + run["seed"],
                                               policy_dir=run["logdir"])
    random = episode_returns(args.env, kwargs, args.random_episodes, RANDOM_SEED)
    result = summarise(args, runs, random)
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print_table(result)
    print(f"json: {args.out}")
    if args.plot != "none":
        plot(result, args.plot)
    return 0


def run_main(argv=None) -> None:
    """``main`` as a command: a refused run is one line and exit status 2, a crashed one one line and 1."""
    from mwm import cli

    def failed_run() -> int:
        try:
            return main(argv)
        except RunFailed as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    cli.run_main(failed_run)


if __name__ == "__main__":
    run_main()
