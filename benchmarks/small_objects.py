"""Small-object benchmark: where does each representation lose the small objects?

    python benchmarks/small_objects.py                  # CPU default: < 1 hour on 2 cores
    python benchmarks/small_objects.py --setting gpu    # paper sizes, for a GPU

Runs ``mwm.probe``'s experiment (train the representation alone, score held-out
frames) over data sets x methods x mask ratios x seeds and writes one report:

    <logdir>/summary.md, summary.csv   mean [bootstrap CI] over seeds per experiment
    <logdir>/results.csv               one row per seed
    <logdir>/figures/*-vs-size.png     toy_catch: metrics against object size (1..16 px)
    <logdir>/figures/*-vs-ratio.png    metrics against mask ratio
    <logdir>/figures/*-by-env.png      every data set and method
    <logdir>/<data set>/<run>/         each run's TensorBoard logs and reconstruction grids

Data sets: toy_catch at each object size, small-object Atari games (Pong, Breakout,
Freeway: objects of 1-3 px at 64x64) and a large-object game (Boxing). Any config key
is a flag and applies to every run (--probe.updates 200). What each setting measures
is in docs/PROBES.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mwm import cli  # noqa: E402
from mwm.errors import UserError  # noqa: E402
from mwm.probes.methods import METHODS  # noqa: E402
from mwm.probes.suite import Setting, datasets  # noqa: E402

SETTINGS: Dict[str, Setting] = {
    # 2 CPU cores, under an hour: tiny networks, 1000 updates, 2 seeds, ~1200 frames per
    # data set; the mask-ratio sweep for MWM on toy_catch at 4 px only.
    "cpu": Setting(
        preset="tiny",
        overrides=("probe.updates=1000", "probe.seeds=2", "probe.train_episodes=8", "probe.eval_episodes=4",
                   "probe.episode_steps=100", "env.time_limit=0", "probe.eval_frames=300",
                   "probe.probe_frames=800", "probe.log_every=100"),
        sizes=(1, 2, 4, 8, 16),
        games=("pong", "breakout", "boxing"),
        sweep_methods=("mwm",),
        sweep_datasets=("toy_catch-s4",),
    ),
    # A GPU at the papers' sizes: MWM's autoencoder (1024-frame batches) for 5000
    # updates (MWM's pre-training length), 3 seeds, every masked method swept everywhere.
    "gpu": Setting(
        preset="default",
        overrides=("probe.seeds=3",),
        sizes=(1, 2, 4, 8, 16),
        games=("pong", "breakout", "freeway", "boxing", "tennis"),
    ),
}


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(prog="python benchmarks/small_objects.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="cpu", choices=sorted(SETTINGS), help="cpu (default) or gpu")
    parser.add_argument("--logdir", help="output folder (default runs/small_objects-<setting>)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--workers", type=int,
                        help="parallel data sets (default: 2 on a CPU, 1 on a GPU; 0: all in this process)")
    parser.add_argument("--sizes", type=int, nargs="*", help="toy_catch object sizes (pixels, 1..16); none: skip")
    parser.add_argument("--games", nargs="*", help="Atari games, e.g. pong breakout boxing; none: skip")
    parser.add_argument("--methods", nargs="+", help=f"subset of {' '.join(METHODS)}")
    parser.add_argument("--ratios", type=float, nargs="+", help="mask ratios of the sweep")
    parser.add_argument("--seed", type=int, default=0, help="first seed (seeds are seed, seed + 1, ...)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rewrite the report from <logdir>/results.csv (e.g. of an interrupted run)")
    args, rest = parser.parse_known_args(argv)
    return args, cli.split_overrides(rest)


def choose(args) -> Setting:
    """The named setting with the command line's sizes, games, methods and ratios."""
    changes = {key: tuple(getattr(args, key)) for key in ("sizes", "games", "methods", "ratios")
               if getattr(args, key) is not None}
    unknown = [m for m in changes.get("methods", ()) if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method '{unknown[0]}'; choose from {', '.join(METHODS)}")
    return replace(SETTINGS[args.setting], **changes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from mwm import config as config_lib
    from mwm.probes.report import write_benchmark_report
    from mwm.probes.suite import run_suite
    from mwm.probes.tables import write_csv
    from mwm.run_dir import _check_writable
    from mwm.runtime import resolve_device

    args, overrides = parse_args(argv)
    setting = choose(args)
    overrides = [f"run.seed={args.seed}", *overrides]
    logdir = Path(args.logdir or f"runs/small_objects-{args.setting}").expanduser()
    _check_writable(logdir)
    confidence = config_lib.build("toy_catch", "mwm", setting.preset, [*setting.overrides, *overrides]).probe.confidence
    if args.report_only:
        return rewrite_report(logdir, confidence)
    device = resolve_device(args.device)
    workers = args.workers if args.workers is not None else (1 if device.type == "cuda" else 2)
    if workers < 0:
        raise UserError(f"--workers must be >= 0, got {workers}")
    threads = max(1, (os.cpu_count() or 1) // workers) if device.type == "cpu" and workers else 0
    todo = datasets(setting)
    for data in todo:  # every name and override is checked before anything runs
        config_lib.build(data.env, "mwm", setting.preset, [*setting.overrides, *data.overrides, *overrides])
    logdir.mkdir(parents=True, exist_ok=True)
    print(f"small-object benchmark ({args.setting}): {len(todo)} data sets, methods {' '.join(setting.methods)}, "
          f"device {device}, {workers} workers, logdir {logdir}", flush=True)
    start = time.time()
    rows = run_suite(setting, overrides, logdir, str(device), workers, threads,
                     on_result=lambda done: write_csv(str(logdir / "results.csv"), done))
    rows.sort(key=lambda r: (r["dataset"], r["method"], _number(r["mask_ratio"]), r["seed"]))
    command = " ".join(sys.argv[1:] if argv is None else argv)
    notes = (f"Setting `{args.setting}`: {setting.preset} preset, {' '.join(setting.overrides)}; "
             f"{time.time() - start:.0f} s on {device} with {workers} workers. "
             f"Command: `python benchmarks/small_objects.py {command}`")
    summary = write_benchmark_report(logdir, rows, confidence, "Small-object benchmark", notes)
    print((logdir / "summary.md").read_text())
    print(f"{len(summary)} experiments, {len(rows)} runs in {time.time() - start:.0f}s; report in {logdir}")
    return 0


def rewrite_report(logdir: Path, confidence: float) -> int:
    """The report of the rows already in ``<logdir>/results.csv``."""
    from mwm.probes.report import write_benchmark_report
    from mwm.probes.tables import read_csv

    path = logdir / "results.csv"
    if not path.is_file():
        raise UserError(f"--report-only: no {path}; run the benchmark first (without --report-only)")
    rows = read_csv(str(path))
    summary = write_benchmark_report(logdir, rows, confidence, "Small-object benchmark",
                                     f"Rewritten from {path} ({len(rows)} runs).")
    print((logdir / "summary.md").read_text())
    print(f"{len(summary)} experiments, {len(rows)} runs; report in {logdir}")
    return 0


def _number(value) -> float:
    return -1.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


if __name__ == "__main__":
    cli.run_main(main)
