"""Evaluate a trained run: ``python -m mwm.eval --logdir runs/toy_catch-mwm-seed0``.

Loads the run's ``config.yaml`` and a checkpoint (the newest intact one, or
``--checkpoint STEP``), plays ``--episodes`` episodes with the agent's evaluation policy
on env seeds that training never uses, prints the mean return with a 95% bootstrap
interval and the episode lengths, and writes ``eval.json`` (atomically) into the run
directory or to ``--out``. ``--video PATH`` films the episodes: an MP4 through OpenCV
when an encoder is present, else an animated GIF (``PATH`` ending in ``.gif`` asks for a
GIF directly), the running return written above each frame.

Safe next to a training process: nothing is locked and nothing in the run directory is
written except ``eval.json`` (checkpoints are replaced atomically by training, so a read
sees a whole file; one deleted by rotation mid-read is retried).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mwm import cli
from mwm.errors import UserError

# Training envs use seed + i and training's evaluation env seed + 10_000.
EVAL_SEED_OFFSET = 100_000
CONFIDENCE = 0.95
MIN_EPISODES_FOR_CI = 3  # no interval from fewer episodes: the values are shown instead
VIDEO_FPS = 15
VIDEO_MIN_SIDE = 256  # frames are scaled up (nearest neighbour) to at least this height
CAPTION_HEIGHT = 22

EPILOG = """examples:
  python -m mwm.eval --logdir runs/toy_catch-mwm-seed0
  python -m mwm.eval --logdir runs/pong --episodes 20 --video pong.mp4
  python -m mwm.eval --logdir runs/pong --checkpoint 100000 --device cpu --out pong-100k.json

Episodes use env seeds training never uses (run.seed + 100000 + --seed). Nothing in
the run directory changes except eval.json, so this is safe while the run trains."""


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = cli._Parser(prog="python -m mwm.eval", description="Evaluate a trained run and optionally film it.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logdir", required=True, help="run directory of a mwm.train run")
    parser.add_argument("--checkpoint", type=int, help="step of the checkpoint to load (default: the newest)")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes (default 10)")
    parser.add_argument("--video", help="write the episodes as a video: PATH.mp4 (GIF if no encoder) or PATH.gif")
    parser.add_argument("--device", default="auto", help="auto (default: cuda if present), cpu, cuda, cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed, added to the env seed offset (default 0)")
    parser.add_argument("--out", help="where to write the results (default <logdir>/eval.json)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    if args.video and Path(args.video).suffix.lower() not in (".mp4", ".gif"):
        raise UserError(f"--video '{args.video}' must end in .mp4 or .gif (e.g. --video eval.mp4)")
    return args


# ----------------------------------------------------------------------------- loading


def load_run_config(path: Path):
    """The resolved config a run was trained with."""
    from mwm import config as config_lib

    if not path.is_dir():
        raise UserError(f"no run directory '{path}': pass the --logdir of a mwm.train run")
    saved = path / "config.yaml"
    if not saved.is_file():
        raise UserError(f"'{path}' is not a run directory (no config.yaml): pass the --logdir of a mwm.train run")
    try:
        return config_lib.load(saved)
    except UserError as error:
        raise UserError(f"{saved} does not match the config schema ({error}): evaluate it with the mwm "
                        "version that trained it") from None
    except Exception as error:  # not YAML, unreadable
        raise UserError(f"{saved} is unreadable ({type(error).__name__}): restore it from a backup") from None


def load_checkpoint(folder: Path, step: Optional[int], device) -> Tuple[dict, Path]:
    """``(state, path)`` of checkpoint ``step``, or of the newest intact one when ``step`` is None."""
    import torch

    from mwm.checkpoint import list_checkpoints, load_latest

    milestones = dict(list_checkpoints(str(folder / "milestones")))  # run.milestone_every keeps these
    available = sorted({s for s, _ in list_checkpoints(str(folder))} | set(milestones))
    if step is None:
        for _ in range(3):  # training may delete the newest-but-one while we read it
            try:
                state, path = load_latest(str(folder), map_location=device)
            except FileNotFoundError:
                continue
            if state is None:
                raise UserError(f"'{folder.parent}' has no intact checkpoint in checkpoints/: train it first "
                                f"(python -m mwm.train --logdir {folder.parent} ...)")
            return state, Path(path)
        raise UserError(f"checkpoints in '{folder}' kept changing while being read: try again")
    path = folder / f"checkpoint-{step}.pt"
    if not path.is_file() and step in milestones:
        path = Path(milestones[step])
    if step not in available:
        listed = ", ".join(str(s) for s in available) or "none"
        raise UserError(f"no checkpoint at step {step} in '{folder}' (available: {listed}): "
                        "pass one of those, or drop --checkpoint for the newest")
    try:
        return torch.load(path, map_location=device, weights_only=True), path
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} was deleted while being read (training rotates old ones): "
                        "pass a newer --checkpoint, or drop it for the newest") from None
    except Exception as error:
        raise UserError(f"checkpoint {path} is damaged ({type(error).__name__}): pass another --checkpoint") from None


# ----------------------------------------------------------------------------- video


def caption_frame(image: np.ndarray, text: str) -> np.ndarray:
    """An observation (H, W, C) scaled up (nearest) to at least VIDEO_MIN_SIDE rows, RGB, with
    ``text`` on a dark strip above it; height and width even (video codecs need that)."""
    import cv2

    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)  # (H, W, 3)
    scale = max(1, math.ceil(VIDEO_MIN_SIDE / image.shape[0]))
    image = cv2.resize(image, (image.shape[1] * scale, image.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    height, width = image.shape[0] + CAPTION_HEIGHT, image.shape[1]
    frame = np.zeros((height + height % 2, width + width % 2, 3), np.uint8)
    frame[CAPTION_HEIGHT:CAPTION_HEIGHT + image.shape[0], :image.shape[1]] = image
    cv2.putText(frame, text, (4, CAPTION_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                cv2.LINE_AA)
    return frame


class VideoFile:
    """Frames (H, W, 3) RGB to ``path``: MP4 through OpenCV, streamed; an animated GIF when the
    path ends in .gif or no MP4 encoder opens (then ``path`` with a .gif suffix). The file
    appears under its final name only when complete."""

    def __init__(self, path: Path, fps: int = VIDEO_FPS):
        self.path = path
        self.fps = fps
        self.frames = 0
        self.note = ""
        self._gif: Optional[List[np.ndarray]] = [] if path.suffix.lower() == ".gif" else None
        self._writer = None
        self._tmp: Optional[str] = None

    def add(self, frame: np.ndarray) -> None:
        if self._gif is None and self._writer is None:
            self._open_mp4(frame.shape[1], frame.shape[0])
        if self._gif is not None:
            self._gif.append(frame)
        else:
            self._writer.write(frame[..., ::-1].copy())  # OpenCV takes BGR
        self.frames += 1

    def _open_mp4(self, width: int, height: int) -> None:
        import cv2

        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".tmp.mp4", dir=folder)
            os.close(fd)
        except OSError as error:
            from mwm.atomic import describe_os_error

            raise UserError(describe_os_error(error, str(self.path))) from None
        writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
        if writer.isOpened():
            self._writer = writer
            return
        writer.release()
        self._remove_tmp()
        self._gif = []
        self.path = self.path.with_suffix(".gif")
        self.note = "no MP4 encoder in this OpenCV build, wrote a GIF instead"

    def close(self) -> Optional[Path]:
        """Finish the file; returns its path (None when no frame was added)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            os.replace(self._tmp, self.path)
            self._tmp = None
            return self.path
        if self._gif:
            from PIL import Image

            from mwm.atomic import atomic_write_bytes

            pictures = [Image.fromarray(frame) for frame in self._gif]
            buffer = io.BytesIO()
            pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:],
                             duration=1000 // self.fps, loop=0)
            atomic_write_bytes(str(self.path), buffer.getvalue())
            self._gif = None
            return self.path
        return None

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        if self._tmp is not None:
            try:
                os.remove(self._tmp)
            except OSError:
                pass
            self._tmp = None


# ----------------------------------------------------------------------------- playing


def play(agent, env, episodes: int, video: Optional[VideoFile] = None) -> Tuple[List[float], List[int]]:
    """Returns and lengths (agent steps) of ``episodes`` episodes of ``agent``'s eval policy in the
    one-env ``env``; every frame goes to ``video`` with the running return."""
    import torch

    from mwm.collect import to_env_actions, to_tensors

    returns: List[float] = []
    lengths: List[int] = []
    obs, state = env.reset(), None
    total, length = 0.0, 0
    while len(returns) < episodes:
        if obs["is_first"][0]:
            total, length = 0.0, 0
        else:
            total += float(obs["reward"][0])
            length += 1
        if video is not None:
            video.add(caption_frame(obs["image"][0], f"episode {len(returns) + 1}/{episodes}  step {length}  "
                                                     f"return {total:+.1f}"))
        if obs["is_last"][0]:
            returns.append(total)
            lengths.append(length)
            print(f"episode {len(returns)}/{episodes}: return {total:+.2f}, {length} steps", flush=True)
            if len(returns) == episodes:
                break
        with torch.no_grad():
            action, state = agent.policy(to_tensors(obs, agent.device), state, "eval")
        obs = env.step(to_env_actions(action.float().cpu().numpy(), env.discrete))
    return returns, lengths


def summarise(returns: Sequence[float], lengths: Sequence[int], seed: int = 0) -> Dict:
    """Mean return with its bootstrap interval (from MIN_EPISODES_FOR_CI episodes on) and lengths."""
    from mwm.probes.stats import bootstrap_ci

    mean = float(np.mean(returns))
    low, high = (bootstrap_ci(returns, CONFIDENCE, seed=seed) if len(returns) >= MIN_EPISODES_FOR_CI
                 else (None, None))
    return {"mean_return": mean, "ci_low": low, "ci_high": high, "confidence": CONFIDENCE,
            "std_return": float(np.std(returns)), "returns": [float(r) for r in returns],
            "mean_length": float(np.mean(lengths)), "lengths": [int(n) for n in lengths]}


def describe(summary: Dict) -> str:
    """``return +1.20 [+0.40, +2.00] (95% bootstrap CI, 5 episodes)`` and the lengths, two lines."""
    n = len(summary["returns"])
    if summary["ci_low"] is None:
        values = ", ".join(f"{r:+.2f}" for r in summary["returns"])
        first = f"return {summary['mean_return']:+.2f} (n={n}, too few episodes for an interval: {values})"
    else:
        first = (f"return {summary['mean_return']:+.2f} [{summary['ci_low']:+.2f}, {summary['ci_high']:+.2f}] "
                 f"({100 * summary['confidence']:.0f}% bootstrap CI of the mean, {n} episodes)")
    lengths = summary["lengths"]
    second = f"length {summary['mean_length']:.1f} steps (min {min(lengths)}, max {max(lengths)})"
    return first + "\n" + second


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from agents import make_agent
    from envs.vector import VectorEnv
    from mwm.atomic import atomic_write_text
    from mwm.run_dir import env_kwargs
    from mwm.runtime import resolve_device, seed_everything

    path = Path(args.logdir).expanduser()
    cfg = load_run_config(path)
    device = resolve_device(args.device)
    cfg.run.device = str(device)
    state, checkpoint = load_checkpoint(path / "checkpoints", args.checkpoint, device)
    out = Path(args.out).expanduser() if args.out else path / "eval.json"
    seed_everything(args.seed)
    env_seed = cfg.run.seed + EVAL_SEED_OFFSET + args.seed
    env = VectorEnv(cfg.run.env, 1, seed=env_seed, parallel=False, **env_kwargs(cfg))
    agent = video = None
    try:
        agent = make_agent(cfg, env.obs_space, env.act_space, device)
        agent.load_state_dict(state["agent"])
        agent.eval()
        step = int(state.get("counters", {}).get("step", -1))
        print(f"{cfg.run.agent} on {cfg.run.env} | checkpoint {checkpoint} (step {step}) | {args.episodes} "
              f"episodes, env seed {env_seed} | device {device}", flush=True)
        video = VideoFile(Path(args.video).expanduser()) if args.video else None
        returns, lengths = play(agent, env, args.episodes, video)
        video_path = video.close() if video is not None else None
    except BaseException:
        if video is not None:
            video.abort()
        raise
    finally:
        if agent is not None:
            agent.close()
        env.close()
    summary = summarise(returns, lengths, seed=args.seed)
    result = {"logdir": str(path), "env": cfg.run.env, "agent": cfg.run.agent, "checkpoint": str(checkpoint),
              "step": step, "episodes": args.episodes, "env_seed": env_seed, "device": str(device),
              "video": str(video_path) if video_path else None, **summary}
    atomic_write_text(str(out), json.dumps(result, indent=2) + "\n")
    print(describe(summary))
    print(f"wrote {out}" + (f" | video {video_path} ({video.frames} frames)" if video_path else "")
          + (f" ({video.note})" if video is not None and video.note else ""))
    return 0


if __name__ == "__main__":
    cli.run_main(main)
