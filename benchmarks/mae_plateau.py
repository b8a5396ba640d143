"""When does the autoencoder leave its loss plateau? Its pixel loss alone, on a fixed replay.

On toy_catch with a 16 px object, the pixel loss of MWM's autoencoder (at the learning
benchmark's CPU size) reaches a plateau of about 0.32-0.38 early and sits there until,
at a seed-dependent update, it falls to about 0.1 within a few hundred updates (most
likely when it starts to render the object and the paddle, the only things that move).
In the learning benchmark's runs, the earlier the drop, the better the run's final
policy (docs/LEARNING.md, "The autoencoder's plateau orders MWM's seeds").
This script measures the drop without
the rest of the agent: for each variant (flags added to the agent's setting) and seed it
trains a fresh autoencoder for ``--updates`` representation-only updates on the episodes
of one replay folder (never written) and records the mean pixel loss of every
``--every`` updates. A variant's *exit* is the first block whose mean falls below
``--below``; ``None`` if it never does.

    python benchmarks/mae_plateau.py --replay runs/long16/toy_catch-o16-curl-seed0/replay \\
        --updates 2500 --every 100 --seeds 0 1 2 \\
        --variant "setting:" --variant "wide, lr 1e-3: --mae.stem_channels [16,32,64] --mae.width 64 \\
        --mae.depth 2 --mae.heads 4 --mae.dec_width 64 --mae.dec_heads 4 --mae.lr 1e-3"

About 0.1-0.2 s per update on one core at the CPU setting's size. Prints a progress line
per block and a table, writes JSON (``--out``) and a PNG of the curves (``--plot``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._figures import save_png  # noqa: E402
from benchmarks.learning import SETTINGS  # noqa: E402
from benchmarks.world_model import write_result  # noqa: E402
from benchmarks.world_model_offline import (  # noqa: E402
    add_replay_arguments, build_config, load_episodes, make_world_model_agent, replay_of)

TRAINED_REPRESENTATIONS = ("mwm", "siammae")  # agents whose representation has its own objective


def pixel_loss_key(metrics: Dict[str, float]) -> str:
    """The name of the representation's pixel-loss metric in one update's metrics."""
    keys = sorted(key for key in metrics if key.endswith("/pixel_loss"))
    if not keys:
        raise RuntimeError(f"the representation update reported no pixel loss (metrics: {sorted(metrics)})")
    return keys[0]


def block_means(losses: Sequence[float], every: int) -> List[float]:
    """The mean of each full block of ``every`` consecutive losses."""
    blocks = len(losses) // every
    return [float(np.mean(losses[i * every:(i + 1) * every])) for i in range(blocks)]


def exit_update(curve: Sequence[float], every: int, below: float):
    """The update count at the end of the first block whose mean is below ``below``; None if none is."""
    return next(((i + 1) * every for i, value in enumerate(curve) if value < below), None)


def loss_curve(cfg, seed: int, episodes: Sequence[Dict], args, label: str) -> List[float]:
    """A fresh agent's representation, trained alone on ``episodes``: block means of its pixel loss."""
    agent = make_world_model_agent(cfg, seed)
    losses: List[float] = []
    key = None
    try:
        with replay_of(episodes, seed) as replay:
            for update in range(1, args.updates + 1):
                metrics = agent.representation_update(replay)
                key = key or pixel_loss_key(metrics)
                losses.append(float(metrics[key]))
                if update % args.every == 0:
                    recent = np.mean(losses[-args.every:])
                    print(f"  {label} seed {seed}: {update}/{args.updates} updates, pixel loss {recent:.4f}", flush=True)
    finally:
        agent.close()
    return block_means(losses, args.every)


def summary(curves: Dict[int, List[float]], every: int, below: float) -> Dict:
    """Per variant: each seed's exit and final block, and how many seeds left the plateau."""
    exits = {seed: exit_update(curve, every, below) for seed, curve in curves.items()}
    return {"exits": exits, "final": {seed: curve[-1] for seed, curve in curves.items()},
            "left": sum(e is not None for e in exits.values()), "seeds": len(curves)}


def print_table(result: Dict) -> None:
    print(f"\nrepresentation-only updates on {result['replay']}: pixel loss, mean of every {result['every']}; "
          f"exit: first block below {result['below']}")
    print(f"{'variant':<24} | {'left the plateau':<16} | {'exit update per seed':<28} | final loss per seed")
    for v in result["variants"]:
        s = v["summary"]
        exits = ", ".join(f"{seed}:{'-' if e is None else e}" for seed, e in s["exits"].items())
        final = ", ".join(f"{value:.3f}" for value in s["final"].values())
        left = f"{s['left']}/{s['seeds']} seeds"
        print(f"{v['name']:<24} | {left:<16} | {exits:<28} | {final}")


def plot(result: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    every = result["every"]
    for index, v in enumerate(result["variants"]):
        colour = f"C{index}"
        for n, (seed, curve) in enumerate(v["curves"].items()):
            steps = [(i + 1) * every for i in range(len(curve))]
            ax.plot(steps, curve, color=colour, lw=1.2, alpha=0.8, label=v["name"] if n == 0 else None)
    ax.axhline(result["below"], color="grey", ls="--", lw=0.8, label=f"exit threshold {result['below']}")
    ax.set_xlabel("representation updates")
    ax.set_ylabel(f"pixel loss (mean of {every} updates)")
    ax.set_title("the autoencoder's pixel loss: one line per seed")
    ax.set_ylim(0, min(1.0, max(max(c) for v in result["variants"] for c in v["curves"].values()) * 1.05))
    ax.legend(fontsize=8)
    save_png(fig, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_replay_arguments(p, TRAINED_REPRESENTATIONS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="network initialisation and sampling")
    p.add_argument("--updates", type=int, default=2500, help="representation updates per variant and seed")
    p.add_argument("--every", type=int, default=100, help="updates per block (one point of the curve)")
    p.add_argument("--below", type=float, default=0.25,
                   help="a block below this pixel loss has left the plateau (toy_catch, 16 px: the plateau "
                        "sits at 0.32-0.38, a trained autoencoder at about 0.1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default="mae_plateau.json")
    p.add_argument("--plot", help="PNG path (default: --out with .png), or 'none'")
    args = p.parse_args(argv)
    args.variants = args.variants or [("setting", [])]
    if args.every < 1 or args.updates < args.every:
        p.error("--every must be at least 1 and --updates at least --every")
    if args.agent not in SETTINGS[args.setting]:
        p.error(f"setting {args.setting} has no {args.agent}")
    args.plot = args.plot or str(Path(args.out).with_suffix(".png"))
    return args


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    episodes = [episode for _, episode in load_episodes(args.replay)]
    print(f"{len(episodes)} episodes from {args.replay}")
    result = {"replay": str(args.replay), "agent": args.agent, "setting": args.setting, "updates": args.updates,
              "every": args.every, "below": args.below, "seeds": args.seeds, "variants": []}
    for name, flags in args.variants:
        cfg = build_config(args.agent, args.setting, args.env, flags)
        start = time.time()
        curves = {seed: loss_curve(cfg, seed, episodes, args, name) for seed in args.seeds}
        result["variants"].append({"name": name, "flags": flags, "curves": curves,
                                   "seconds_per_update": (time.time() - start) / (args.updates * len(args.seeds)),
                                   "summary": summary(curves, args.every, args.below)})
    print_table(result)
    write_result(result, args.out, plot, args.plot)
    return 0


if __name__ == "__main__":
    from mwm import cli

    cli.run_main(lambda: main())
