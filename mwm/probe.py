"""Probe what a representation sees: ``python -m mwm.probe --env toy_catch --preset tiny``.

Trains only the representation (no world model, no policy) on frames whose object
positions are known, then scores on held-out episodes how well it reconstructs the
whole frame and the small object, and how linearly its frozen features encode the
object's position and other state variables. See docs/PROBES.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from mwm import cli
from mwm.errors import UserError

EPILOG = """examples:
  python -m mwm.probe --env toy_catch --preset tiny --logdir runs/p          # seconds, CPU
  python -m mwm.probe --env atari_pong --method mae --preset small           # pixel-patch MAE
  python -m mwm.probe --env toy_catch --env.object_size 2 --mae.mask_ratio 0.9 --mae.mask_type tube
  python -m mwm.probe --env atari_pong --probe.replay runs/atari_pong-mwm-seed0   # frames of a run
  python -m mwm.probe --env atari_pong --probe.policy runs/atari_pong-mwm-seed0   # its policy acts

methods: mwm, mae, simmim, siammae, dreamerv2, curl, random. Every config key is a flag
(configs/defaults.yaml, the probe: block): --probe.updates 2000, --probe.seeds 5.
Outputs in --logdir: results.csv (one row per seed), summary.csv and summary.md (mean and
bootstrap interval over seeds), figures/*.png, seed<k>/ (TensorBoard)."""


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = cli.make_parser("python -m mwm.probe", "Train a representation alone and probe what it keeps.", EPILOG)
    parser.add_argument("--method", default="mwm",
                        help="mwm (default), mae, simmim, siammae, dreamerv2, curl or random")
    args, overrides = cli.parse(parser, argv)  # refuses --probe.method: --method sets it
    return args, [f"probe.method={args.method}"] + overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
    from mwm import config as config_lib
    from mwm.probes.methods import method_agent
    from mwm.probes.report import write_probe_report
    from mwm.run_dir import _check_writable
    from mwm.runtime import resolve_device

    args, overrides = parse_args(argv)
    cfg = config_lib.build(args.env, method_agent(args.method), args.preset, overrides)
    if not cfg.run.logdir:
        cfg.run.logdir = f"runs/probe-{args.env}-{args.method}-seed{cfg.run.seed}"
    logdir = Path(cfg.run.logdir).expanduser()
    _check_writable(logdir)
    device = resolve_device(cfg.run.device)
    from mwm.probes.experiment import check_probe_config, load_frames, run_probe

    check_probe_config(cfg.probe)
    from mwm.limits import check_batch_memory

    check_batch_memory(cfg)  # a batch larger than the machine's memory: refused before any work
    # Frames come from MWM's env settings whatever the method (CURL's Atari block would
    # switch to 84x84 grey), so every method is probed on the same kind of data.
    data_cfg = config_lib.build(args.env, "mwm", args.preset, overrides)
    if (logdir / "checkpoints").exists() or (logdir / "replay").exists():
        raise UserError(f"logdir '{logdir}' holds a training run: pass another --logdir for the probe "
                        f"(--probe.replay {logdir} reads that run's frames)")
    if logdir.is_dir() and not (logdir / "config.yaml").is_file() and any(logdir.iterdir()):
        raise UserError(f"logdir '{logdir}' is not empty and holds no probe run: pass a new or empty --logdir")
    frames = load_frames(data_cfg, device)  # bad envs, replays and policies fail here, before any write
    logdir.mkdir(parents=True, exist_ok=True)
    config_lib.save(cfg, logdir / "config.yaml")
    print(f"probe {args.method} on {args.env} | device {device} | {cfg.run.preset} preset | logdir {logdir} | "
          f"{cfg.probe.seeds} seeds x {cfg.probe.updates} updates")
    rows = run_probe(cfg, device, logdir, frames)
    table = write_probe_report(logdir, rows, cfg.probe.confidence, title=f"Probe: {args.method} on {args.env}")
    print(table, end="")
    print(f"done | results in {logdir}/summary.md, {logdir}/results.csv, {logdir}/figures/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
