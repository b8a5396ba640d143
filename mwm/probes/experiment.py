"""One probe experiment: frames -> representation training -> held-out scores, per seed.

    frames   collect (random or trained policy) or read a run's replay; label them;
             split by episode into training and held-out sets (once, shared by seeds)
    train    the method's own objective for ``probe.updates`` updates on training windows
    score    reconstructions of held-out frames with no token removed (what a world
             model reads) and at the training mask ratio (inpainting); linear probes
             from frozen features to the labelled variables
    report   per-seed rows, their mean and bootstrap interval, tables and figures

:func:`run_probe` is what ``python -m mwm.probe`` and ``benchmarks/small_objects.py``
call. It, :func:`load_frames` and :func:`check_probe_config` read the config; the
training and scoring functions take explicit arguments.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mwm.errors import UserError
from mwm.probes.annotations import labels_for, object_size
from mwm.probes.frames import FrameSet, from_episodes, sample_windows, split_episodes, spread
from mwm.probes.linear import run_probes
from mwm.probes.methods import MASKED_METHODS, ProbeMethod, make_method, mask_ratio_of
from mwm.probes.metrics import reconstruction_metrics

CHUNK = 256  # frames per forward pass when scoring
LABEL_WIDTH = 110  # pixels of row names left of the reconstruction grid
RECONSTRUCTION_KEYS = ("frame_mse", "box_mse", "visible", "object_frames", "inpaint_frame_mse", "inpaint_box_mse",
                       "inpaint_visible")


def check_probe_config(p) -> None:
    """Value checks of the ``probe`` block; each names its key."""
    def check(cond: bool, key: str, message: str) -> None:
        if not cond:
            raise UserError(f"bad value for config key 'probe.{key}': {message}")

    for key in ("train_episodes", "eval_episodes", "episode_steps", "seeds", "probe_steps", "log_every"):
        check(p[key] > 0, key, f"must be positive, got {p[key]}")
    for key in ("updates", "eval_frames", "probe_frames", "box_margin", "ring", "figure_frames"):
        check(p[key] >= 0, key, f"must be >= 0, got {p[key]}")
    check(0.0 < p.visible_threshold < 1.0, "visible_threshold", f"must be in (0, 1), got {p.visible_threshold}")
    check(0.0 < p.confidence < 1.0, "confidence", f"must be in (0, 1), got {p.confidence}")
    check(len(p.probe_l2) > 0 and all(v > 0 for v in p.probe_l2), "probe_l2",
          f"must be a non-empty list of positive penalties, got {list(p.probe_l2)}")
    check(not (p.replay and p.policy), "policy", "frames come from probe.replay or from a policy, not both")


# ----------------------------------------------------------------------------- frames


def load_frames(cfg, device: torch.device) -> Tuple[FrameSet, FrameSet]:
    """Training and held-out frames with labels, from ``probe.replay`` or a fresh collection."""
    from mwm.limits import frame_shape
    from mwm.probes.sources import collect_episodes, replay_episodes
    from mwm.run_dir import env_kwargs

    p, total = cfg.probe, cfg.probe.train_episodes + cfg.probe.eval_episodes
    if p.replay:  # checked against --env and the image shape it renders
        episodes = replay_episodes(p.replay, total, cfg.run.env, frame_shape(cfg))
    else:
        episodes = collect_episodes(cfg.run.env, env_kwargs(cfg), total, p.episode_steps, cfg.run.seed,
                                    p.policy, device)
    labels = [labels_for(cfg.run.env, ep, p.box_margin) for ep in episodes]
    return split_episodes(from_episodes(episodes, labels), p.eval_episodes)


def previous_frames(frames: FrameSet, index: np.ndarray) -> np.ndarray:
    """Index of each frame's predecessor in its episode (itself for an episode's first frame)."""
    before = np.maximum(index - 1, 0)
    return np.where(frames.episode[before] == frames.episode[index], before, index)


# ----------------------------------------------------------------------------- training


def train_representation(method: ProbeMethod, optimiser, frames: FrameSet, updates: int, rng: np.random.Generator,
                         generator: torch.Generator, device: torch.device, logger=None, log_every: int = 100,
                         progress=None) -> Dict[str, float]:
    """``updates`` optimiser steps of the method's objective on windows of ``frames``;
    returns the last logged update's metrics as floats. ``progress``: a
    :class:`mwm.logger.Progress` told the update count and loss."""
    metrics: Dict[str, float] = {}
    loss_key = f"{optimiser.name}/loss"
    method.train()
    for update in range(1, updates + 1):
        sample = sample_windows(frames, method.batch, method.window, rng)
        batch = {key: torch.as_tensor(value).to(device) for key, value in sample.items()}  # (B, T, ...)
        loss, step_metrics = method.loss(batch, generator)
        step_metrics.update(optimiser.step(loss))
        method.after_step()
        if update % log_every == 0 or update == updates:
            metrics = {name: float(value) for name, value in step_metrics.items()}
            if logger is not None:
                logger.scalars(metrics, prefix="train")
                logger.write(update)
        if progress is not None:
            progress.update(update, **({"loss": metrics[loss_key]} if loss_key in metrics else {}))
    method.eval()
    return metrics


# ----------------------------------------------------------------------------- scoring


@torch.no_grad()
def features_of(method: ProbeMethod, images: np.ndarray, device: torch.device) -> torch.Tensor:
    """Frozen features (N, F) of uint8 images (N, H, W, C), on ``device``."""
    parts = [method.features(torch.as_tensor(images[i:i + CHUNK]).to(device)) for i in range(0, len(images), CHUNK)]
    return torch.cat(parts).float()


@torch.no_grad()
def reconstruct_frames(method: ProbeMethod, frames: FrameSet, index: np.ndarray, ratio: float,
                       generator: torch.Generator, device: torch.device) -> Optional[Dict[str, np.ndarray]]:
    """uint8 ``input``, ``masked`` and ``reconstruction`` (N, H, W, C) of the frames at
    ``index`` with ``ratio`` of the tokens removed; None without a decoder."""
    previous = previous_frames(frames, index)
    parts: List[Dict[str, torch.Tensor]] = []
    for i in range(0, len(index), CHUNK):
        images = torch.as_tensor(frames.images[index[i:i + CHUNK]]).to(device)
        before = torch.as_tensor(frames.images[previous[i:i + CHUNK]]).to(device)
        out = method.reconstruct(images, before, ratio, generator)
        if out is None:
            return None
        parts.append(out)
    return {key: torch.cat([part[key] for part in parts]).cpu().numpy() for key in ("input", "masked",
                                                                                    "reconstruction")}


def object_figure_frames(frames: FrameSet, index: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` frames of ``index`` for the figure: spread over those showing the
    object, topped up with others when too few do."""
    on = frames.labels.present[index]
    shown, hidden = index[on], index[~on]
    if len(shown) >= count:
        return shown[spread(len(shown), count)]
    return np.sort(np.concatenate([shown, hidden[spread(len(hidden), count - len(shown))]]))


@dataclass(frozen=True)
class Scoring:
    """How held-out frames are scored (the ``probe`` config keys of the same names)."""

    eval_frames: int  # held-out frames scored (0: all)
    probe_frames: int  # training frames the linear probes fit on (0: all)
    visible_threshold: float
    ring: int
    probe_l2: Tuple[float, ...]
    probe_steps: int
    figure_frames: int

    @staticmethod
    def from_config(p) -> "Scoring":
        return Scoring(p.eval_frames, p.probe_frames, p.visible_threshold, p.ring, tuple(p.probe_l2),
                       p.probe_steps, p.figure_frames)


def score(method: ProbeMethod, train: FrameSet, test: FrameSet, masked: bool, mask_ratio: float, p: Scoring,
          generator: torch.Generator, device: torch.device) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
    """Held-out metrics of a trained method and its figure rows.

    Reconstruction metrics at ratio 0 (``frame_mse``, ``box_mse``, ``visible``) and, for
    masked methods, at ``mask_ratio`` (``inpaint_*``); linear probes (``r2/*``, ``f1/*``)
    and their means ``object_r2`` (the object's own coordinates), ``probe_r2`` (every
    position) and ``probe_f1`` (every categorical variable).
    """
    test_index = spread(len(test), p.eval_frames)
    held_out = test.take(test_index)
    metrics: Dict[str, float] = {key: math.nan for key in RECONSTRUCTION_KEYS}  # stay NaN without a decoder
    recon = reconstruct_frames(method, test, test_index, 0.0, generator, device)
    if recon is not None:
        metrics.update(reconstruction_metrics(recon["reconstruction"], recon["input"], held_out.labels,
                                              p.visible_threshold, p.ring))
    if recon is not None and masked:
        inpaint = reconstruct_frames(method, test, test_index, mask_ratio, generator, device)
        scores = reconstruction_metrics(inpaint["reconstruction"], inpaint["input"], held_out.labels,
                                        p.visible_threshold, p.ring)
        metrics.update({f"inpaint_{k}": v for k, v in scores.items() if k != "object_frames"})
    train_index = spread(len(train), p.probe_frames)
    probes = run_probes(features_of(method, train.images[train_index], device), train.take(train_index).labels,
                        train.episode[train_index], features_of(method, held_out.images, device),
                        held_out.labels, list(p.probe_l2), p.probe_steps)
    metrics.update(probes)
    labels = train.labels
    metrics["object_r2"] = _mean([probes.get(f"r2/{name}", math.nan) for name in labels.object_targets])
    metrics["probe_r2"] = _mean([v for k, v in probes.items() if k.startswith("r2/")])
    metrics["probe_f1"] = _mean([v for k, v in probes.items() if k.startswith("f1/")])
    return metrics, figure_rows(method, test, test_index, masked, mask_ratio, p.figure_frames, generator, device)


def figure_rows(method: ProbeMethod, test: FrameSet, index: np.ndarray, masked: bool, mask_ratio: float,
                count: int, generator: torch.Generator, device: torch.device) -> Dict[str, np.ndarray]:
    """Rows of the reconstruction grid: ``input`` (object box outlined), then ``masked`` and
    its ``reconstruction`` at the training ratio (masked methods), then the
    ``reconstruction`` with no token removed; empty without a decoder or frames."""
    from mwm.probes.figures import draw_boxes

    chosen = object_figure_frames(test, index, count) if count else index[:0]
    if len(chosen) == 0:
        return {}
    full = reconstruct_frames(method, test, chosen, 0.0, generator, device)
    if full is None:
        return {}
    labels = test.labels
    rows = {"input": draw_boxes(full["input"], labels.boxes[chosen], labels.present[chosen])}
    if masked:
        part = reconstruct_frames(method, test, chosen, mask_ratio, generator, device)
        rows.update({"masked": part["masked"], f"reconstruction at {mask_ratio:g}": part["reconstruction"]})
    rows["reconstruction at 0"] = full["reconstruction"]
    return rows


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


# ----------------------------------------------------------------------------- seeds


def run_probe(cfg, device: torch.device, logdir: Path, frames: Optional[Tuple[FrameSet, FrameSet]] = None,
              tensorboard: bool = True, show_progress: bool = True) -> List[Dict]:
    """Train and score ``probe.method`` for ``probe.seeds`` seeds; one result row per seed.

    Writes, under ``logdir``: ``seed<k>/`` (TensorBoard and metrics.jsonl of the
    training loss and final scores) and ``figures/reconstructions-seed<k>.png``.
    ``frames`` (training, held-out) skips collection (the benchmark shares them);
    ``show_progress`` prints a progress line while each seed trains.
    """
    check_probe_config(cfg.probe)
    train, test = frames if frames is not None else load_frames(cfg, device)
    return [run_seed(cfg, seed, train, test, device, logdir, tensorboard, show_progress)
            for seed in range(cfg.run.seed, cfg.run.seed + cfg.probe.seeds)]


def run_seed(cfg, seed: int, train: FrameSet, test: FrameSet, device: torch.device, logdir: Path,
             tensorboard: bool, show_progress: bool) -> Dict:
    """One seed of :func:`run_probe`: build, train, score, log; returns its result row."""
    from mwm.logger import Logger, Progress
    from mwm.probes.figures import image_grid, save_png
    from mwm.runtime import seed_everything

    p, name = cfg.probe, cfg.probe.method
    masked = name in MASKED_METHODS
    ratio = mask_ratio_of(cfg, name)
    seed_everything(seed)
    rng, generator = np.random.default_rng(seed), torch.Generator(device).manual_seed(seed)
    method, optimiser = make_method(name, cfg, train.images.shape[1:], device)
    start = time.time()
    with Logger(str(logdir / f"seed{seed}"), use_tensorboard=tensorboard, console=False) as logger:
        last: Dict[str, float] = {}
        if optimiser is not None:
            progress = None
            if show_progress:
                print(f"seed {seed}: training {name} for {p.updates} updates", flush=True)
                progress = Progress(total=p.updates, keys=("loss",), unit="updates")
            last = train_representation(method, optimiser, train, p.updates, rng, generator, device, logger,
                                        p.log_every, progress)
            if progress is not None:
                progress.close()
        train_seconds = time.time() - start
        metrics, figure = score(method, train, test, masked, ratio, Scoring.from_config(p), generator, device)
        logger.scalars({k: v for k, v in metrics.items() if not math.isnan(v)}, prefix="probe")
        if figure:
            grid = image_grid(figure, label_width=LABEL_WIDTH)
            logger.image("probe/reconstructions", grid)
            save_png(str(logdir / "figures" / f"reconstructions-seed{seed}.png"), grid)
        logger.write(p.updates)
    return {
        "env": cfg.run.env, "method": name, "mask_type": cfg.mae.mask_type if masked else "",
        "mask_ratio": ratio if masked else math.nan, "object_size": object_size(test.labels),
        "object_name": test.labels.object_name, "large": test.labels.large, "seed": seed,
        "updates": p.updates if optimiser is not None else 0, "train_frames": len(train), "test_frames": len(test),
        "train_seconds": train_seconds,
        "final_loss": last.get(f"{optimiser.name}/loss", math.nan) if optimiser is not None else math.nan,
        **metrics}
