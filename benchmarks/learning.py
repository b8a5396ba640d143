"""Learning evidence: MWM against its baselines and a random policy, over seeds.

Trains every agent of ``--agents`` (default mwm, dreamerv2, curl) for every seed with
``python -m mwm.train`` on the same env, budget and evaluation protocol, then plays each
seed's final policy for ``--final-episodes`` fresh episodes (env seeds no training run
used). A seed's score is the mean return of its final policy; an agent's figure is the
mean of its seed scores with a 95% percentile-bootstrap interval over those seed means
(no interval from fewer than 3 seeds). The random policy is scored the same way, one
group of episodes per seed. For the Dreamer-family agents the final world model is
also diagnosed on the final policy's episodes (``benchmarks/world_model.py``): the
correlation of open-loop reward predictions with the truth over 15 steps after 5
observed ones, and more.

Each agent has its own CPU setting (``SETTINGS``): the size at which it can learn on 2
CPU cores, not one agent's preset forced on the others. On toy_catch (``--object-size``
16, 8, 4, 2 for the small-object sweep; ``--drift`` for sideways motion):

    python benchmarks/learning.py                                   # 16 px: mwm, dreamerv2, curl x seeds 0 1 2
    python benchmarks/learning.py --object-size 4 --logdir runs/bench-learning-4px
    python benchmarks/learning.py --agents mwm --seeds 0 1 2 3 4
    python benchmarks/learning.py --setting paper --env atari_pong --steps 100000   # GPU

Runs go to ``<logdir>/<env>-o<size>-<agent>-seed<seed>`` (console output beside it in
``<run>.train.log``); a run that finished is not
trained again (it resumes at its last step and stops), so tables can be rebuilt and
extended; one stopped early (Ctrl-C) is an error, not a result, until the same command
resumes it. Prints a table, writes JSON (``--out``) and a PNG of evaluation return over
agent steps with the final scores (``--plot``). Extra ``mwm.train`` flags for every
agent go after ``--``. ``benchmarks/learning_sweep.py`` gathers the result files of
several sizes (and of agents or seeds trained by separate commands) into one table and figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._figures import save_png  # noqa: E402
from benchmarks.world_model import DREAMER_FAMILY, diagnose_run, to_json  # noqa: E402
from mwm.atomic import atomic_write_text  # noqa: E402
from mwm.errors import UserError  # noqa: E402
from mwm.probes.stats import MIN_INTERVAL_VALUES, bootstrap_ci  # noqa: E402

MAX_EPISODE_STEPS = 100_000  # the env's own time limit ends episodes first
RANDOM_SEED = 1234  # + group: env and action seed of the random policy's episodes
CONFIDENCE, RESAMPLES = 0.95, 10000  # bootstrap intervals over seed means
FINAL_SEED = 5000  # + run seed: env seed of the final policy's episodes (unlike any training env)

# The Dreamer family's CPU size: the tiny preset widened where learning needs it: a
# 64-unit RSSM with 8x8 latents, 2 x 64 heads and actor-critic, a 15-step imagination
# horizon and 16 x 16 world-model batches (the tiny preset's 4 x 8 batch held about one
# reward, and the reward head never learned). One update every 3 agent steps. The
# actor's entropy scale is 3e-3 for all three (MWM's 1e-4 let the policy collapse
# within 4k steps on an 8 px object; agents/mwm/README.md).
DREAMER_CPU = [
    "--rssm.deter", "64", "--rssm.hidden", "64", "--rssm.stoch", "8", "--rssm.classes", "8",
    "--wm.head_units", "64", "--wm.head_layers", "2", "--ac.units", "64", "--ac.layers", "2",
    "--ac.horizon", "15", "--ac.entropy", "3e-3", "--ac.slow_critic_every", "50",
    "--replay.batch", "16", "--replay.length", "16", "--run.train_every", "3",
]
# Named settings: agent -> (preset, mwm.train flags).
SETTINGS = {
    "cpu": {
        # 1000 autoencoder-only updates after prefill (official MWM: 5000); with 100 the
        # world model started on tokens that were still changing fast and collapsed; 5000 cost
        # 1.8x the time for no gain at 16,000 steps (+1.76 against +1.91, seeds 0-2); an
        # autoencoder rate of 1e-3 alone gained nothing either (+1.84; docs/LEARNING.md, the
        # autoencoder's plateau). The
        # world model reads the raw tokens, as in the official code: token standardisation
        # (mwm/token_norm.py) made no difference in a three-seed ablation at the same prefill
        # (-0.58 [-2.13, +2.40] with it, -0.27 [-2.80, +3.60] without; docs/LEARNING.md).
        # Two changes for the paddle's two broken links, not separated: the autoencoder at
        # lr 1e-3 (official 3e-4) leaves its loss plateau, where its tokens hardly show the
        # paddle, on every seed; the decoder gives each token slot its own map of the state
        # (wm.dec_state slots; MWM: one state token), so that it can draw the paddle. At
        # 16,000 steps, seeds 0-4: +3.48 [+1.45, +4.80] against +1.67 [-0.99, +4.32] without
        # (docs/LEARNING.md, "The slots decoder in the learning benchmark"). The third link:
        # the one seed left behind had an encoder whose mean-pooled embedding dropped the
        # paddle (offset R^2 0.22 against 0.76-0.97); the slots pool (wm.flat_pool slots, each
        # output token its own map into the embedding) kept it on every seed probed (0.97-0.98)
        # and raised the open-loop reward correlation from 0.37-0.40 to 0.54-0.60 (seeds 0-2); at
        # 16,000 steps, seeds 0-4: +4.91 [+4.79, +4.99] (docs/LEARNING.md, "The encoder's third link").
        "mwm": ("tiny", [*DREAMER_CPU, "--mae.batch", "16", "--mae.length", "8", "--run.pretrain", "1000",
                         "--mae.lr", "1e-3", "--wm.dec_state", "slots", "--wm.flat_pool", "slots"]),
        "siammae": ("tiny", [*DREAMER_CPU, "--siammae.batch", "64", "--run.pretrain", "1000"]),
        # DreamerV2's CNN at 16 channels (tiny: 8); it pre-trains one update (its config).
        "dreamerv2": ("tiny", [*DREAMER_CPU, "--wm.cnn_depth", "16", "--run.pretrain", "1"]),
        # CURL at data-efficient Rainbow's sizes (the small preset keeps CURL's own networks:
        # channels 32, 64, hidden 256, 51 atoms, batch 32), one update per agent step, no
        # pre-training. Its smoke-test size (tiny_curl) pinned the paddle to one side.
        "curl": ("small", ["--run.pretrain", "0"]),
    },
    "paper": {agent: ("default", []) for agent in ("mwm", "dreamerv2", "curl", "siammae")},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="toy_catch")
    p.add_argument("--agents", nargs="+", default=["mwm", "dreamerv2", "curl"],
                   help="agents to train and compare (mwm, dreamerv2, curl, siammae)")
    p.add_argument("--setting", default="cpu", choices=sorted(SETTINGS), help="cpu (default) or paper (a GPU)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    p.add_argument("--steps", type=int, default=8000, help="agent steps per run")
    p.add_argument("--object-size", type=int, default=16, help="toy_catch object side in pixels")
    p.add_argument("--drift", type=float, default=0.0, help="toy_catch sideways speed of the object, px per step")
    p.add_argument("--prefill", type=int, help="random-policy steps before training, the same for every agent "
                                              "(default: each agent's own without a size preset; toy_catch 1000)")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--final-episodes", type=int, default=30, help="episodes of each seed's final policy")
    p.add_argument("--random-episodes", type=int, default=30, help="random-policy episodes per seed group")
    p.add_argument("--diagnostic-sequences", type=int, default=256,
                   help="world-model windows (5 observed + 15 predicted steps) scored per Dreamer-family run")
    p.add_argument("--logdir", default="runs/bench-learning")
    p.add_argument("--out", help="JSON result (default <logdir>/learning.json)")
    p.add_argument("--plot", help="PNG of eval return over steps (default <logdir>/learning.png; 'none' for no plot)")
    p.add_argument("--show", metavar="JSON",
                   help="train nothing: print the table (and a Markdown table) of a saved result, e.g. "
                        "docs/results/learning-toy_catch-16px.json, or of a one-setting merge that "
                        "learning_sweep.py saved; with --plot, draw its figure too")
    p.add_argument("overrides", nargs="*", help="extra flags for mwm.train, after --, e.g. -- --mae.mask_ratio 0.9")
    args = p.parse_args(argv)
    if min(args.jobs, args.threads, args.final_episodes, args.random_episodes, args.steps) < 1:
        p.error("--jobs, --threads, --steps, --final-episodes and --random-episodes must be at least 1")
    unknown = sorted(set(args.agents) - set(SETTINGS[args.setting]))
    if unknown:
        p.error(f"unknown agents {unknown}: use {sorted(SETTINGS[args.setting])}")
    args.out = args.out or str(Path(args.logdir) / "learning.json")
    if not args.show:  # a shown result is drawn only where --plot says
        args.plot = args.plot or str(Path(args.logdir) / "learning.png")
    return args


def is_toy(args) -> bool:
    return args.env == "toy_catch"


def run_dir(args, agent: str, seed: int) -> Path:
    size = f"-o{args.object_size}" + (f"-d{args.drift:g}" if args.drift else "") if is_toy(args) else ""
    return Path(args.logdir) / f"{args.env}{size}-{agent}-seed{seed}"


def merge_flags(*groups: list) -> list:
    """``--key value`` pairs of several groups, a later group's value replacing an earlier
    one's (so that ``--`` overrides win over a setting's flags without repeating a key)."""
    merged: dict = {}
    for flags in groups:
        if len(flags) % 2:
            raise SystemExit(f"mwm.train flags must come in '--key value' pairs, got {' '.join(flags)}")
        for key, value in zip(flags[::2], flags[1::2]):
            merged.pop(key, None)
            merged[key] = value
    return [item for pair in merged.items() for item in pair]


def prefill(args, agent: str) -> int:
    """Random-policy steps before training: ``--prefill``, else the agent's own on this env at paper
    size. Always passed on, because a size preset may shorten it (``tiny``: 100 steps), and the
    agents of one comparison must start from the same amount of data."""
    if args.prefill is not None:
        return args.prefill
    from mwm import config

    return int(config.build(args.env, agent, "default").run.prefill)


def train_command(args, agent: str, seed: int, logdir: Path) -> list:
    """The ``mwm.train`` command line of one run."""
    preset, setting_flags = SETTINGS[args.setting][agent]
    toy = (["--env.object_size", str(args.object_size), "--env.drift", str(args.drift)] if is_toy(args) else [])
    protocol = ["--run.eval_every", str(args.eval_every), "--run.eval_episodes", str(args.eval_episodes),
                "--run.prefill", str(prefill(args, agent)),
                "--env.time_limit", "0",  # full episodes, as the random baseline
                "--run.log_every", "250", "--run.checkpoint_every", "2000", "--run.report_every", "2000", *toy]
    return [sys.executable, "-m", "mwm.train", "--env", args.env, "--agent", agent, "--preset", preset,
            "--seed", str(seed), "--steps", str(args.steps), "--logdir", str(logdir),
            *merge_flags(protocol, setting_flags, args.overrides)]


RUN_KEYS = ("--seed", "--logdir")  # the flags that tell one seed's run from another's


def run_flags(cmd: list) -> list:
    """The ``mwm.train`` flags of a run that every seed of its agent shares: the whole command
    after ``mwm.train`` but ``--seed`` and ``--logdir``. A result file keeps them, so that it
    says what each agent ran with even after ``SETTINGS`` changes."""
    args = cmd[cmd.index("mwm.train") + 1:]
    return [item for key, value in zip(args[::2], args[1::2]) if key not in RUN_KEYS for item in (key, value)]


class RunFailed(Exception):
    """A training run crashed (not a user error): one line naming its log, exit status 1."""


def read_metrics(path: Path) -> list:
    """The records of a ``metrics.jsonl``; a line a crash cut short (or any unparseable one) is skipped."""
    rows = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def run_log(logdir: Path) -> Path:
    """A run's console log: next to its run directory (mwm.train refuses a non-empty folder without a run)."""
    return logdir.parent / f"{logdir.name}.train.log"


DONE_LINE = re.compile(r"^done: .* in (\d+):(\d\d):(\d\d)\b", re.MULTILINE)  # mwm.train's summary line


def training_minutes(log_path: Path):
    """Minutes a run trained, summed over the sessions its console log records (a resumed
    run's sessions add up; a finished run reopened adds about 0); None without any."""
    found = DONE_LINE.findall(Path(log_path).read_text(errors="replace")) if Path(log_path).exists() else []
    if not found:
        return None
    return sum(int(h) * 60 + int(m) + int(sec) / 60 for h, m, sec in found)


def train_run(args, agent: str, seed: int) -> dict:
    """Train (or finish, or just reopen) one run; its console output goes to <run>.train.log."""
    logdir = run_dir(args, agent, seed)
    log_path = run_log(logdir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = train_command(args, agent, seed, logdir)
    print(f"{agent} seed {seed}: training, log in {log_path}", flush=True)
    start = time.time()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    with open(log_path, "ab") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        log_start = log.tell()
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        with open(log_path, "rb") as log:
            log.seek(log_start)
            lines = log.read().decode(errors="replace").splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        if code == 2 and errors:  # mwm.train refused: its one line says what to do
            raise UserError(f"{agent} seed {seed}: {errors[-1][len('error: '):]}")
        last = next((line.strip() for line in reversed(lines) if line.strip()), "no output")
        raise RunFailed(f"{agent} seed {seed}: mwm.train failed with exit status {code} (last line: {last[:200]}): "
                        f"see the full log in {log_path}")
    rows = read_metrics(logdir / "metrics.jsonl")
    reached = max((int(row["step"]) for row in rows), default=0)
    if reached < args.steps:  # mwm.train exits 0 when a signal stops it: its policy is not the final one
        raise UserError(f"{agent} seed {seed}: training stopped at step {reached} of {args.steps} "
                        f"(stopped by a signal?); run the same command again to resume it")
    evals = sorted({row["step"]: row["eval/return"] for row in rows if row.get("eval/return") is not None}.items())
    speeds = [row["speed/agent_steps_per_s"] for row in rows if row.get("speed/agent_steps_per_s")]
    minutes = training_minutes(log_path)  # a reused run's training time, not this call's
    if minutes is None:
        minutes = (time.time() - start) / 60
    print(f"{agent} seed {seed}: done in {minutes:.1f} min", flush=True)
    from mwm import config as config_lib

    prefilled = int(config_lib.load(logdir / "config.yaml").run.prefill)  # what the run did, reused or not
    return {"agent": agent, "seed": seed, "logdir": str(logdir), "evals": evals, "minutes": minutes,
            "agent_steps_per_s": float(speeds[-1]) if speeds else None, "prefill": prefilled,
            "flags": run_flags(cmd)}


def episodes(env_name: str, env_kwargs: dict, count: int, seed: int, policy_dir: str = "") -> list:
    """``count`` full episodes: the run's final policy (eval mode) or, without ``policy_dir``,
    a uniformly random policy; both through the same env constructor."""
    import torch

    from mwm.probes.sources import collect_episodes

    torch.manual_seed(seed)  # the policy samples its latent states: seed them too
    return collect_episodes(env_name, env_kwargs, count, MAX_EPISODE_STEPS, seed, policy_dir)


def interval(values: list) -> list:
    """[low, high] of the 95% bootstrap interval of the mean; None below 3 values."""
    low, high = bootstrap_ci(values, CONFIDENCE, resamples=RESAMPLES)
    return None if math.isnan(low) else [low, high]


def group(name: str, seed_means: list) -> dict:
    return {"name": name, "seed_means": seed_means, "mean": float(np.mean(seed_means)), "n": len(seed_means),
            "ci95": interval(seed_means)}


def common(runs: list, key: str):
    """The value of ``key`` every one of ``runs`` shares (``prefill``: the random-policy steps
    read from each run's config; ``flags``: its mwm.train flags); None where a run has no
    record or the runs differ."""
    values = {json.dumps(run.get(key)) for run in runs}
    return json.loads(values.pop()) if len(values) == 1 else None


def summarise(args, runs: list, random_means: list) -> dict:
    """The result JSON: per-run figures, and per agent the mean of seed scores with its interval."""
    agents = {}
    for agent in args.agents:
        mine = [run for run in runs if run["agent"] == agent]
        summary = group(agent, [run["final_mean"] for run in mine])
        corr = [run["world_model"]["reward_corr"] for run in mine if run.get("world_model")]
        if corr:
            summary["reward_corr"] = group(agent, corr)
        speeds = [run["agent_steps_per_s"] for run in mine if run["agent_steps_per_s"]]
        summary["agent_steps_per_s"] = float(np.mean(speeds)) if speeds else None
        summary["minutes"] = float(np.mean([run["minutes"] for run in mine]))
        summary["prefill"] = common(mine, "prefill")
        summary["flags"] = common(mine, "flags")
        agents[agent] = summary
    random = group("random", random_means)
    for summary in agents.values():
        summary["beats_random"] = (summary["ci95"] is not None and random["ci95"] is not None
                                   and summary["ci95"][0] > random["ci95"][1])
    return {
        "env": args.env, "setting": args.setting, "steps": args.steps, "seeds": args.seeds,
        "object_size": args.object_size if is_toy(args) else None, "drift": args.drift if is_toy(args) else None,
        "final_episodes": args.final_episodes, "random_episodes_per_group": args.random_episodes,
        "overrides": args.overrides, "agents": agents, "random": random, "runs": runs,
        "min_seeds_for_interval": MIN_INTERVAL_VALUES,
    }


def fmt_group(g: dict) -> str:
    if g["ci95"] is None:
        return f"{g['mean']:+.2f} (n={g['n']}: " + ", ".join(f"{v:+.2f}" for v in g["seed_means"]) + ")"
    return f"{g['mean']:+.2f} [{g['ci95'][0]:+.2f}, {g['ci95'][1]:+.2f}]"


def comparisons(result: dict) -> list:
    """Plain sentences: each agent against random, and MWM against each baseline."""
    lines = []
    prefills = {name: g.get("prefill") for name, g in result["agents"].items()}
    if len(set(prefills.values())) > 1:
        lines.append("warning: the agents did not start from the same random-policy prefill ("
                     + ", ".join(f"{name} {value if value is not None else 'unrecorded or mixed'}"
                                 for name, value in prefills.items()) + "): not one protocol")
    random = result["random"]
    for name, g in result["agents"].items():
        if g["ci95"] is None or random["ci95"] is None:
            lines.append(f"{name}: fewer than {MIN_INTERVAL_VALUES} seeds, no interval; compared by values only")
        elif g["beats_random"]:
            lines.append(f"{name} beats the random policy (the intervals do not overlap)")
        else:
            lines.append(f"{name} does NOT clearly beat the random policy (the intervals overlap or it is worse)")
    mwm = result["agents"].get("mwm")
    for name, g in result["agents"].items():
        if mwm is None or name == "mwm":
            continue
        if g["mean"] > mwm["mean"]:
            overlap = (g["ci95"] is None or mwm["ci95"] is None or g["ci95"][0] <= mwm["ci95"][1])
            lines.append(f"{name} scores higher than mwm ({g['mean']:+.2f} vs {mwm['mean']:+.2f})"
                         + ("; the intervals overlap" if overlap else ", and the intervals do not overlap"))
        else:
            lines.append(f"mwm scores at least as high as {name} ({mwm['mean']:+.2f} vs {g['mean']:+.2f})")
    return lines


def print_table(result: dict) -> None:
    size = f", {result['object_size']} px object" if result["object_size"] else ""
    prefills = {g.get("prefill") for g in result["agents"].values()}
    size += f", prefill {prefills.pop()}" if len(prefills) == 1 and None not in prefills else ""
    print(f"\n{result['env']}{size}, setting {result['setting']}, {result['steps']} agent steps; final policy: "
          f"{result['final_episodes']} episodes per seed; mean of seed means [95% bootstrap CI over seeds]")
    print(f"{'agent':<10} | {'final return':<34} | {'reward corr (h1-15)':<30} | {'steps/s':>7} | {'min/run':>7}")
    for name, g in result["agents"].items():
        corr = fmt_group(g["reward_corr"]) if g.get("reward_corr") else "-"
        speed = f"{g['agent_steps_per_s']:.1f}" if g["agent_steps_per_s"] else "-"
        print(f"{name:<10} | {fmt_group(g):<34} | {corr:<30} | {speed:>7} | {g['minutes']:>7.1f}")
    print(f"{'random':<10} | {fmt_group(result['random']):<34} |")
    print("\nper run: final mean, last evaluations")
    for run in result["runs"]:
        trace = ", ".join(f"{step / 1000:g}k:{value:+.1f}" for step, value in run["evals"])
        print(f"  {run['agent']:<9} seed {run['seed']}: {run['final_mean']:+.2f} | {trace}")
    print()
    for line in comparisons(result):
        print(line)


def markdown_table(result: dict) -> str:
    """The README / docs table of a result: per agent the mean of seed means with its
    interval, the seed means, the open-loop reward correlation and the speed."""
    def cell(g: dict) -> str:
        if g is None:
            return "-"
        if g["ci95"] is None:
            return f"{g['mean']:+.2f} (n={g['n']}, no interval)"
        return f"**{g['mean']:+.2f}** [{g['ci95'][0]:+.2f}, {g['ci95'][1]:+.2f}]"

    lines = ["| agent | final return, mean of seeds [95% CI] | seed means | reward corr., 15 open-loop steps "
             "| agent steps/s | min per run |", "|---|---|---|---|---|---|"]
    for name, g in result["agents"].items():
        corr = g.get("reward_corr")
        corr_text = "-" if not corr else (f"{corr['mean']:.2f}" + (f" [{corr['ci95'][0]:.2f}, {corr['ci95'][1]:.2f}]"
                                                                   if corr["ci95"] else ""))
        speed = f"{g['agent_steps_per_s']:.1f}" if g["agent_steps_per_s"] else "-"
        lines.append(f"| {name} | {cell(g)} | {', '.join(f'{v:+.2f}' for v in g['seed_means'])} | {corr_text} "
                     f"| {speed} | {g['minutes']:.0f} |")
    random = result["random"]
    lines.append(f"| random | {cell(random)} | {', '.join(f'{v:+.2f}' for v in random['seed_means'])} | - | - | - |")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    colours = dict(zip(result["agents"], plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for name in result["agents"]:
        traces = [run["evals"] for run in result["runs"] if run["agent"] == name and run["evals"]]
        for trace in traces:
            curves.plot(*zip(*trace), color=colours[name], alpha=0.3, linewidth=0.8)
        steps = sorted({step for trace in traces for step, _ in trace})
        mean = [np.mean([dict(trace)[s] for trace in traces if s in dict(trace)]) for s in steps]
        curves.plot(steps, mean, color=colours[name], marker="o", markersize=3, label=f"{name} (mean of seeds)")
    random = result["random"]
    low, high = random["ci95"] or (min(random["seed_means"]), max(random["seed_means"]))
    curves.axhspan(low, high, color="grey", alpha=0.3, label="random policy")
    curves.set(xlabel="agent steps", ylabel="eval return (higher is better)",
               title=f"{result['env']} {result['object_size'] or ''} px, {result['steps']:,} steps: eval return")
    curves.legend(fontsize=8)
    names = [*result["agents"], "random"]
    groups = [*result["agents"].values(), random]
    for i, g in enumerate(groups):
        colour = colours.get(names[i], "grey")
        bars.bar(i, g["mean"], color=colour, alpha=0.5)
        bars.scatter([i] * len(g["seed_means"]), g["seed_means"], color=colour, s=12, zorder=3)
        if g["ci95"]:
            bars.errorbar(i, g["mean"], yerr=[[g["mean"] - g["ci95"][0]], [g["ci95"][1] - g["mean"]]],
                          color="black", capsize=4)
    bars.set_xticks(range(len(names)), names)
    bars.axhline(0.0, color="grey", linewidth=0.8)
    bars.set(ylabel="final-policy return", title="final policy: seed means (dots), 95% CI")
    save_png(fig, path)


def read_json(path) -> object:
    """A saved JSON file, or one clear error."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the learning result {path} ({error}): pass the JSON that "
                        "benchmarks/learning.py's --out wrote") from None


def is_sweep(loaded) -> bool:
    """Whether ``loaded`` is a sweep benchmarks/learning_sweep.py saved (results of several settings)."""
    return isinstance(loaded, dict) and "settings" in loaded and isinstance(loaded.get("results"), list)


def results_in(loaded, path) -> list:
    """The learning results a file loaded from ``path`` holds: a sweep's, or the one result of
    this script's --out; one clear error where it holds none."""
    results = loaded["results"] if is_sweep(loaded) else [loaded]
    if not results:
        raise UserError(f"{path} holds no learning result: pass the JSON that the --out of benchmarks/learning.py "
                        "or learning_sweep.py wrote")
    return results


def check_result(result, path) -> dict:
    """``result`` if it is a result of this script (one setting, its agents and random baseline),
    else one clear error naming ``path``, the file it came from."""
    if not (isinstance(result, dict) and "agents" in result and "random" in result):
        raise UserError(f"{path} is not a result of benchmarks/learning.py: pass the JSON its --out wrote")
    return result


def read_result(path) -> dict:
    """A result this script saved (its --out), or one setting merged by learning_sweep.py, or one
    clear error; a sweep of several settings is shown by that script."""
    results = results_in(read_json(path), path)
    if len(results) > 1:
        raise UserError(f"{path} is a sweep of several settings: show it with python benchmarks/learning_sweep.py {path}")
    return check_result(results[0], path)


def main(argv=None) -> int:
    from mwm import config as config_lib
    from mwm.run_dir import env_kwargs

    args = parse_args(argv)
    if args.show:
        result = read_result(args.show)
        print_table(result)
        print("\n" + markdown_table(result))
        if args.plot and args.plot != "none":
            plot(result, args.plot)
        return 0
    order = [(agent, seed) for seed in args.seeds for agent in args.agents]  # every agent's first seeds first
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda key: train_run(args, *key), order))
    kwargs = env_kwargs(config_lib.load(Path(runs[0]["logdir"]) / "config.yaml"))
    for run in runs:
        played = episodes(args.env, kwargs, args.final_episodes, FINAL_SEED + run["seed"], run["logdir"])
        run["final_returns"] = [float(ep["reward"].sum()) for ep in played]
        run["final_mean"] = float(np.mean(run["final_returns"]))
        if run["agent"] in DREAMER_FAMILY:
            result = diagnose_run(run["logdir"], played, args.diagnostic_sequences, seed=run["seed"])
            run["world_model"] = {key: value for key, value in result.items() if key not in ("run", "agent", "env")}
    random_means = [float(np.mean([ep["reward"].sum() for ep in episodes(args.env, kwargs, args.random_episodes,
                                                                          RANDOM_SEED + i)]))
                    for i in range(len(args.seeds))]
    result = summarise(args, runs, random_means)
    atomic_write_text(args.out, json.dumps(to_json(result), indent=2))
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
