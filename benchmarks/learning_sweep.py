"""The small-object sweep of the learning benchmark: final return against object size.

``benchmarks/learning.py`` scores agents at one toy_catch setting per command (object
size, drift). This script gathers its result files across settings into one table and
one figure:

    python benchmarks/learning.py --object-size 8 --logdir runs/bench-8px    # one size per command
    python benchmarks/learning_sweep.py runs/bench-learning/learning.json runs/bench-*px/*.json \\
        --out sweep.json --plot sweep.png
    python benchmarks/learning_sweep.py sweep.json        # a saved sweep: its table again
    python benchmarks/learning_sweep.py sweep.json runs/bench-drift1/dreamerv2.json --replace --out sweep.json

Every file must share one protocol (env, setting, steps, final episodes, extra flags,
the random-policy prefill every agent started from, as each run's config records it,
and each agent's mwm.train flags, where the file records them); the settings are the
object size and the drift. Files of the same setting are merged, so agents trained by
separate commands into one logdir (``--agents curl --out curl.json``, ``--agents mwm --out
mwm.json``) make one column, and so do seeds of one agent trained by separate commands
(``--seeds 0 1 2 3``, later ``--seeds 4``). Merging recomputes each agent's figure from its
runs' final means (the mean of seed means with its 95% bootstrap interval, none from fewer
than 3 seeds), exactly as one command over all the agents would. One seed of an agent found
twice at one setting, or two files of one setting whose random-policy baselines disagree
(other episodes or env; a command of fewer seeds holds the first groups of one of more, and
the longer is kept), is refused: their runs are not comparable. With ``--replace`` an agent
found again at a setting keeps the runs of the file named last, so one command updates a
saved sweep with a re-trained column (the example above), one whose mwm.train flags differ
once it replaces the old at every setting; a file all of whose agents are replaced drops
out, its random-policy baseline with it.

Prints a table per agent and setting (Markdown too, for the docs) of final return and,
for the Dreamer family, of their world models' open-loop reward correlation; writes the
merged results as JSON (``--out``) and a PNG of both against object size (``--plot``),
one column of panels per drift speed, the random policy as a grey band.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import learning  # noqa: E402
from benchmarks._figures import save_png  # noqa: E402
from mwm.atomic import atomic_write_text  # noqa: E402
from mwm.errors import UserError  # noqa: E402

# What every file of a sweep shares (its protocol), and what tells its settings apart.
PROTOCOL_KEYS = ("env", "setting", "steps", "final_episodes", "overrides")
SETTING_KEYS = (*PROTOCOL_KEYS, "object_size", "drift")
SETTING_FLAGS = ("--env.object_size", "--env.drift")  # the mwm.train flags a sweep varies


def setting_of(result: dict) -> tuple:
    return tuple(json.dumps(result.get(key)) for key in SETTING_KEYS)


def label(result: dict) -> str:
    """A setting's column name: '8 px', '16 px, drift 1'."""
    text = f"{result['object_size']} px" if result.get("object_size") else result["env"]
    return text + (f", drift {result['drift']:g}" if result.get("drift") else "")


def check_prefill(result: dict, path: str, first: dict, first_path: str) -> None:
    """Every agent of a sweep started from the same random-policy prefill (a size preset may
    shorten an agent's own: learning.prefill), as recorded in the result (None: not recorded)."""
    def steps(g: dict) -> str:
        return "an unrecorded number of" if g.get("prefill") is None else str(g["prefill"])

    want_agent, want = next(iter(first["agents"].items()))
    for agent, g in result["agents"].items():
        if g.get("prefill") is None or g.get("prefill") != want.get("prefill"):
            raise UserError(f"{agent} in {path} started after {steps(g)} random-policy steps, {want_agent} in "
                            f"{first_path} after {steps(want)}: a sweep compares agents under one protocol; "
                            "re-train with the same --prefill")


def check_flags(result: dict, path: str, seen: dict) -> None:
    """An agent runs with the same mwm.train flags at every setting of a sweep, but for the
    object size and drift: a setting's flags may change between commands (``learning.SETTINGS``
    once standardised MWM's tokens). ``seen`` maps agent -> (flags, path) of the files read so
    far; files without the record (written before it existed) are not compared."""
    for agent, g in result["agents"].items():
        if g.get("flags") is None:
            continue
        flags = {key: value for key, value in zip(g["flags"][::2], g["flags"][1::2]) if key not in SETTING_FLAGS}
        if agent not in seen:
            seen[agent] = (flags, path)
            continue
        want, want_path = seen[agent]
        differ = sorted(key for key in flags.keys() | want.keys() if flags.get(key) != want.get(key))
        if differ:
            raise UserError(f"{agent} ran with other mwm.train flags in {path} than in {want_path} ({', '.join(differ)}): "
                            "a sweep compares one setting of each agent; re-train with the same flags")


def random_baseline(results: list, names: list) -> list:
    """The random-policy seed means of one setting's files. A command seeds its random groups
    by position (``learning.RANDOM_SEED`` + i), so a file of fewer seeds holds the first groups
    of one of more: the longest is kept; files whose groups disagree are refused."""
    longest = max((result["random"]["seed_means"] for result in results), key=len)
    for result, name in zip(results, names):
        mine = result["random"]["seed_means"]
        if not np.allclose(mine, longest[:len(mine)]):
            raise UserError(f"{names[0]} and {name} ({label(results[0])}) have different random-policy baselines "
                            "(other episodes or env): train both with the same --random-episodes")
    return longest


def merge(results: list, names: list) -> dict:
    """One learning result from several files of the same setting (``names`` for errors):
    the union of their runs, every agent's figure recomputed from its runs. An agent may come
    from several files (seeds trained by separate commands), never with one seed twice."""
    first = results[0]
    runs, agents, seen = [], [], {}
    for result, name in zip(results, names):
        for agent in result["agents"]:
            seeds = {run["seed"] for run in result["runs"] if run["agent"] == agent}
            taken, where = seen.get(agent, (set(), None))
            if taken & seeds:
                raise UserError(f"{agent} at {label(first)} is in both {where} and {name} (seed "
                                f"{', '.join(map(str, sorted(taken & seeds)))}): pass one of them, or --replace "
                                "to keep the one named last")
            if agent not in seen:
                agents.append(agent)
            seen[agent] = (taken | seeds, name)
        runs += result["runs"]
    args = SimpleNamespace(agents=agents, seeds=sorted({run["seed"] for run in runs}),
                           random_episodes=first["random_episodes_per_group"],
                           **{key: first[key] for key in SETTING_KEYS})
    return learning.summarise(args, runs, random_baseline(results, names))


def without(result: dict, agents: set) -> dict:
    """``result`` less ``agents``: their entries and their runs."""
    return {**result, "agents": {a: g for a, g in result["agents"].items() if a not in agents},
            "runs": [run for run in result["runs"] if run["agent"] not in agents]}


def replace_earlier(group: list, result: dict) -> list:
    """The files read so far at one setting, less the agents ``result`` brings again (a
    re-trained column replaces the old one); a file left with no agent is dropped, its
    random-policy baseline with it."""
    kept = [(without(old, set(result["agents"])), path) for old, path in group]
    return [(old, path) for old, path in kept if old["agents"]]


def sweep(paths: list, replace: bool = False) -> dict:
    """Merged results by setting, ordered by drift, then from the largest object to the
    smallest. A file is a result of ``learning.py`` or a sweep this script saved. With
    ``replace``, an agent found again at a setting keeps the runs of the file read last."""
    by_setting: dict = {}
    for path in paths:
        for result in learning.results_in(learning.read_json(path), path):
            learning.check_result(result, path)
            group = by_setting.setdefault(setting_of(result), [])
            if replace:
                group[:] = replace_earlier(group, result)
            group.append((result, str(path)))
    # checked on what is kept: a replaced column's runs no longer count
    kept = [(result, path) for group in by_setting.values() for result, path in group]
    first, first_path = kept[0]
    flags_seen: dict = {}
    for result, path in kept:
        for key in PROTOCOL_KEYS:
            if result.get(key) != first.get(key):
                raise UserError(f"{first_path} and {path} differ in {key} ({first.get(key)} vs "
                                f"{result.get(key)}): a sweep compares object sizes and drift under one "
                                "protocol; pass files of one")
        check_prefill(result, path, first, first_path)
        check_flags(result, path, flags_seen)
    merged = [merge([r for r, _ in group], [n for _, n in group]) for group in by_setting.values()]
    merged.sort(key=lambda r: (r.get("drift") or 0.0, -(r.get("object_size") or 0)))
    return {"settings": [label(r) for r in merged], "results": merged}


def agent_names(swept: dict) -> list:
    names: list = []
    for result in swept["results"]:
        names += [name for name in result["agents"] if name not in names]
    return names


def cell(group: dict) -> str:
    """'+2.73 [+1.80, +4.07]' (with ' >rnd' where ``learning.summarise`` found the interval
    above the random policy's), the values alone below 3 seeds, '-' where not run."""
    if group is None:
        return "-"
    return learning.fmt_group(group) + (" >rnd" if group.get("beats_random") else "")


# What a table or a figure panel shows of each agent at each setting: its final return
# (the benchmark's score), or the open-loop reward correlation of its world model (the
# Dreamer family's diagnostics: 5 observed steps, 15 predicted), where the agent has one.
METRICS = {"return": lambda group: group, "reward_corr": lambda group: group.get("reward_corr")}


def has_metric(swept: dict, metric: str) -> bool:
    return any(METRICS[metric](g) for r in swept["results"] for g in r["agents"].values())


def rows(swept: dict, metric: str = "return") -> list:
    """[agent, cell per setting] for every agent that has ``metric``, then (for the return)
    the random policy."""
    pick, table = METRICS[metric], []
    for name in agent_names(swept):
        groups = [r["agents"].get(name) for r in swept["results"]]
        if any(g and pick(g) for g in groups):
            table.append([name] + [cell(pick(g) if g else None) for g in groups])
    if metric == "return":
        table.append(["random"] + [cell(r["random"]) for r in swept["results"]])
    return table


def markdown(swept: dict, metric: str = "return") -> str:
    lines = ["| agent | " + " | ".join(swept["settings"]) + " |",
             "|---|" + "---|" * len(swept["settings"])]
    lines += ["| " + " | ".join(row) + " |" for row in rows(swept, metric)]
    return "\n".join(lines)


def print_table(swept: dict) -> None:
    """The final returns, then the world models' open-loop reward correlation."""
    first = swept["results"][0]
    print(f"\n{first['env']}, setting {first['setting']}, {first['steps']} agent steps; final policy: "
          f"{first['final_episodes']} episodes per seed; mean of seed means [95% bootstrap CI over seeds]; "
          "'>rnd': the interval lies above the random policy's")
    titles = {"return": "final return", "reward_corr": "world model: open-loop reward correlation (15 steps)"}
    for metric, title in titles.items():
        if not has_metric(swept, metric):
            continue
        table = rows(swept, metric)
        width = max(34, *(len(c) for row in table for c in row[1:]))
        print(f"\n{title}\n{'agent':<10} | " + " | ".join(f"{s:<{width}}" for s in swept["settings"]))
        for row in table:
            print(f"{row[0]:<10} | " + " | ".join(f"{c:<{width}}" for c in row[1:]))


def panel(ax, mine: list, colours: dict, metric: str) -> None:
    """One panel: ``metric`` of each agent against object size (largest left), the mean of
    seed means with its 95% interval and the seed means as dots."""
    pick = METRICS[metric]
    sizes = [r["object_size"] for r in mine]
    for index, (name, colour) in enumerate(colours.items()):
        shift = 2 ** (0.05 * (index - (len(colours) - 1) / 2))  # agents side by side at one size
        points = [(r["object_size"] * shift, pick(r["agents"][name])) for r in mine if name in r["agents"]]
        points = [(x, g) for x, g in points if g]
        if not points:
            continue
        xs, groups = zip(*points)
        ax.plot(xs, [g["mean"] for g in groups], color=colour, marker="o", label=name)
        for x, g in points:
            ax.scatter([x] * g["n"], g["seed_means"], color=colour, s=10, alpha=0.5, zorder=3)
            if g["ci95"]:
                ax.errorbar(x, g["mean"], yerr=[[g["mean"] - g["ci95"][0]], [g["ci95"][1] - g["mean"]]],
                            color=colour, capsize=4)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(sizes)), [str(s) for s in sorted(set(sizes))])
    ax.set_xlim(max(sizes) * 1.4, min(sizes) / 1.4)  # large objects on the left
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.legend(fontsize=8)


def figure(swept: dict):
    """Final return against object size (largest left), one panel per drift speed, the random
    policy in grey; below, where the sweep has world-model diagnostics, the open-loop reward
    correlation of the Dreamer-family agents on the same axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drifts = sorted({r.get("drift") or 0.0 for r in swept["results"]})
    metrics = [m for m in METRICS if has_metric(swept, m)]
    fig, axes = plt.subplots(len(metrics), len(drifts), figsize=(5.5 * len(drifts), 4 * len(metrics)),
                             squeeze=False, sharey="row")
    colours = dict(zip(agent_names(swept), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for column, drift in enumerate(drifts):
        mine = [r for r in swept["results"] if (r.get("drift") or 0.0) == drift]
        sizes = [r["object_size"] for r in mine]
        randoms = [r["random"] for r in mine]
        lows = [g["ci95"][0] if g["ci95"] else min(g["seed_means"]) for g in randoms]
        highs = [g["ci95"][1] if g["ci95"] else max(g["seed_means"]) for g in randoms]
        ax = axes[0][column]
        if len(sizes) > 1:
            ax.fill_between(sizes, lows, highs, color="grey", alpha=0.3, label="random policy")
        else:
            ax.axhspan(lows[0], highs[0], color="grey", alpha=0.3, label="random policy")
        title = f"{mine[0]['env']}, {mine[0]['steps']} steps" + (f", drift {drift:g}" if drift else "")
        for row, metric in enumerate(metrics):
            panel(axes[row][column], mine, colours, metric)
            axes[row][column].set(xlabel="object size (px, smaller to the right)")
        ax.set(ylabel="final-policy return (higher is better)", title=title)
        if "reward_corr" in metrics:
            axes[1][column].set(ylabel="world model: open-loop reward corr.", title=title + ", world models")
    fig.tight_layout()
    return fig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="JSON files written by benchmarks/learning.py (its --out)")
    p.add_argument("--out", help="merged sweep as JSON")
    p.add_argument("--plot", help="PNG of final return against object size (none by default; 'none' as in "
                                  "learning.py)")
    p.add_argument("--replace", action="store_true",
                   help="an agent found again at a setting keeps the runs of the file named last "
                        "(update a saved sweep with a re-trained column) instead of being refused")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    swept = sweep(args.results, replace=args.replace)
    print_table(swept)
    for metric in METRICS:
        if has_metric(swept, metric):
            print("\n" + markdown(swept, metric))
    if args.out:
        atomic_write_text(args.out, json.dumps(learning.to_json(swept), indent=2))
        print(f"json: {args.out}")
    if args.plot and args.plot != "none":
        save_png(figure(swept), args.plot)
    return 0


if __name__ == "__main__":
    from mwm import cli

    cli.run_main(lambda: main())
