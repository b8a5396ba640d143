"""World-model diagnostics of trained runs: open-loop prediction on held-out episodes.

For each run directory (any Dreamer-family agent: mwm, dreamerv2, siammae) this loads
the newest checkpoint, plays ``--episodes`` fresh episodes with the run's own
evaluation policy on env seeds no training run uses, cuts ``--sequences`` windows of
5 + 15 steps from them, and lets the world model read 5 steps and predict the next
15 under the recorded actions (``mwm/diagnostics.py`` defines every figure):

- reward: correlation of predicted and true rewards, and precision / recall of reward
  events (|r| >= 0.5, matched with their sign), over all 15 open-loop steps;
- the reconstruction error by horizon step (tokens for MWM and SiamMAE, pixels for
  DreamerV2) against the error on observed steps, and pixel MSE after decoding;
- KL(posterior || prior), the entropies of the latents, and the share of the inputs'
  variance that frames move (``input_signal``).

    python benchmarks/world_model.py runs/bench-learning/toy_catch-o16-mwm-seed0 ...
    python benchmarks/world_model.py --glob 'runs/bench-learning/*-seed*'

Prints a table, writes JSON (``--out``) and a PNG of the errors and reward
correlation by horizon step (``--plot``). The learning benchmark
(``benchmarks/learning.py``) calls :func:`diagnose_run` on its final policies.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._figures import save_png  # noqa: E402
from mwm.atomic import atomic_write_text  # noqa: E402

DREAMER_FAMILY = ("mwm", "dreamerv2", "siammae")  # the agents with a world model to diagnose
EPISODE_SEED = 9000  # + run seed: env seeds of the diagnostic episodes (unlike training's and eval's)
MAX_EPISODE_STEPS = 100_000  # the env's own time limit ends episodes first


def diagnose_run(run_dir: str, episodes: List[Dict[str, np.ndarray]], sequences: int = 256,
                 seed: int = 0) -> Dict[str, object]:
    """Open-loop diagnostics (:func:`mwm.diagnostics.open_loop`) of the run's newest checkpoint
    on ``sequences`` windows of ``episodes``; a result dict with ``agent`` and ``run``."""
    import torch

    import envs
    from agents.world_model_agent import WorldModelAgent
    from mwm import config as config_lib
    from mwm import diagnostics
    from mwm.probes.sources import AgentPolicy
    from mwm.run_dir import env_kwargs

    cfg = config_lib.load(Path(run_dir) / "config.yaml")
    env = envs.make(cfg.run.env, seed=seed, **env_kwargs(cfg))
    try:
        agent = AgentPolicy(run_dir, env, torch.device("cpu")).agent
    finally:
        env.close()
    if not isinstance(agent, WorldModelAgent):
        raise ValueError(f"{run_dir} is a {cfg.run.agent} run, which has no world model to diagnose")
    batch = diagnostics.cut_windows(episodes, diagnostics.CONTEXT + diagnostics.HORIZON, sequences,
                                    np.random.default_rng(seed))
    batch = {key: torch.as_tensor(batch[key]) for key in diagnostics.SEQUENCE_KEYS}
    torch.manual_seed(seed)
    result = diagnostics.open_loop(agent, batch)
    return {"run": str(run_dir), "agent": cfg.run.agent, "env": cfg.run.env, "seed": int(cfg.run.seed), **result}


def policy_episodes(run_dir: str, count: int, seed: int) -> List[Dict[str, np.ndarray]]:
    """``count`` episodes of the run's evaluation policy on env seed ``seed``."""
    from mwm import config as config_lib
    from mwm.probes.sources import collect_episodes
    from mwm.run_dir import env_kwargs

    cfg = config_lib.load(Path(run_dir) / "config.yaml")
    return collect_episodes(cfg.run.env, env_kwargs(cfg), count, MAX_EPISODE_STEPS, seed, policy_dir=run_dir)


def fmt(value) -> str:
    return "    -" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:6.3f}"


def print_table(results: List[Dict[str, object]]) -> None:
    print(f"\n{'run':<44} {'agent':<9} {'r corr':>6} {'prec':>6} {'recall':>6} {'err obs':>8} "
          f"{'err h1':>8} {'err h15':>8} {'px h15':>6} {'kl':>6} {'post H':>6} {'signal':>6}")
    for r in results:
        errors = r["recon_error_by_step"]
        pixels = r["pixel_mse_by_step"]
        print(f"{Path(r['run']).name[-44:]:<44} {r['agent']:<9} {fmt(r['reward_corr'])} {fmt(r['reward_precision'])} "
              f"{fmt(r['reward_recall'])} {r['recon_error_observed']:8.3g} {errors[0]:8.3g} {errors[-1]:8.3g} "
              f"{fmt(pixels[-1] if pixels else None)} {r['kl']:6.2f} {r['post_entropy']:6.2f} {r['input_signal']:6.3f}")


def plot(results: List[Dict[str, object]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for r in results:
        label = f"{r['agent']} s{r['seed']}"
        steps = np.arange(1, len(r["recon_error_by_step"]) + 1)
        axes[0].plot(steps, np.asarray(r["recon_error_by_step"]) / max(r["recon_error_observed"], 1e-12),
                     marker="o", markersize=2, label=label)
        if r["pixel_mse_by_step"]:
            axes[1].plot(steps, r["pixel_mse_by_step"], marker="o", markersize=2, label=label)
        axes[2].plot(steps, r["reward_corr_by_step"], marker="o", markersize=2, label=label)
    axes[0].set(title="reconstruction error / error on observed steps\n(lower is better)", xlabel="open-loop step",
                yscale="log")
    axes[1].set(title="pixel MSE after decoding, [0, 1] units\n(lower is better)", xlabel="open-loop step")
    axes[2].set(title="reward correlation per step\n(higher is better)", xlabel="open-loop step", ylim=(-0.2, 1.0))
    axes[2].axhline(0.0, color="grey", linewidth=0.8)
    axes[2].legend(fontsize=7, loc="lower left")
    save_png(fig, path)


def to_json(value):
    """NaN becomes null so that the JSON is strict."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def write_result(result, out: str, plot_fn, plot_path: str) -> None:
    """``result`` as strict JSON at ``out`` (atomically), then its figure unless ``plot_path`` is "none"."""
    atomic_write_text(out, json.dumps(to_json(result), indent=2))
    print(f"json: {out}")
    if plot_path != "none":
        plot_fn(result, plot_path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="run directories of mwm.train (mwm, dreamerv2 or siammae)")
    p.add_argument("--glob", help="a pattern of run directories, e.g. 'runs/bench-learning/*-seed*'")
    p.add_argument("--episodes", type=int, default=20, help="held-out episodes per run")
    p.add_argument("--sequences", type=int, default=256, help="windows of 20 steps scored per run")
    p.add_argument("--out", default="world_model.json")
    p.add_argument("--plot", default="world_model.png", help="PNG path, or 'none'")
    args = p.parse_args(argv)
    args.runs = list(args.runs) + (sorted(glob.glob(args.glob)) if args.glob else [])
    if not args.runs:
        p.error("give run directories or --glob")
    missing = [run for run in args.runs if not (Path(run) / "config.yaml").is_file()]
    if missing:
        p.error(f"not mwm.train run directories (no config.yaml): {', '.join(missing)}")
    if min(args.episodes, args.sequences) < 1:
        p.error("--episodes and --sequences must be at least 1")
    return args


def main(argv=None) -> int:
    from mwm import config as config_lib

    args = parse_args(argv)
    results = []
    for run in args.runs:
        cfg = config_lib.load(Path(run) / "config.yaml")
        if cfg.run.agent not in DREAMER_FAMILY:
            print(f"{run}: a {cfg.run.agent} run has no world model; skipped")
            continue
        print(f"{run}: {args.episodes} held-out episodes ...", flush=True)
        episodes = policy_episodes(run, args.episodes, EPISODE_SEED + int(cfg.run.seed))
        results.append(diagnose_run(run, episodes, args.sequences, seed=int(cfg.run.seed)))
    if not results:
        print("no Dreamer-family run to diagnose", file=sys.stderr)
        return 2
    print_table(results)
    write_result(results, args.out, plot, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
