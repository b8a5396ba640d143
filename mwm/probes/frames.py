"""A labelled set of frames grouped in episodes: the probes' data set.

Frames of one episode are contiguous and in time order, so fixed-length windows
(for tube masking and SiamMAE's frame pairs) are slices. Train and held-out sets are
split by whole episodes, never inside one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Sequence, Tuple

import numpy as np

from mwm.errors import UserError
from mwm.probes.annotations import Labels


@dataclass
class FrameSet:
    """N frames with their rewards, episode ids and :class:`Labels`."""

    images: np.ndarray  # (N, H, W, C) uint8
    reward: np.ndarray  # (N,) float32, received on entering each frame
    episode: np.ndarray  # (N,) int64, equal within an episode, episodes contiguous
    labels: Labels

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def episode_ids(self) -> np.ndarray:
        """The distinct episode ids in order of appearance."""
        ids, first = np.unique(self.episode, return_index=True)
        return ids[np.argsort(first)]

    def take(self, index: np.ndarray) -> "FrameSet":
        """The frames at ``index`` (an int array or a bool mask), labels included."""
        lab = self.labels
        labels = replace(
            lab, boxes=lab.boxes[index], present=lab.present[index],
            sizes=None if lab.sizes is None else lab.sizes[index],
            targets={k: v[index] for k, v in lab.targets.items()},
            valid={k: v[index] for k, v in lab.valid.items()}, kinds=dict(lab.kinds))
        return FrameSet(self.images[index], self.reward[index], self.episode[index], labels)


def from_episodes(episodes: Sequence[Dict[str, np.ndarray]], labels: Sequence[Labels]) -> FrameSet:
    """Join episodes (dicts of (T, ...) arrays with ``image`` and ``reward``) and their labels."""
    if not episodes:
        raise UserError("no episodes to probe: collect at least one (probe.train_episodes, probe.eval_episodes)")
    first = labels[0]
    sizes = None if first.sizes is None else np.concatenate([lab.sizes for lab in labels])
    merged = Labels(
        np.concatenate([lab.boxes for lab in labels]), np.concatenate([lab.present for lab in labels]), sizes,
        {k: np.concatenate([lab.targets[k] for lab in labels]) for k in first.targets},
        {k: np.concatenate([lab.valid[k] for lab in labels]) for k in first.valid},
        dict(first.kinds), first.object_name, first.object_targets, first.large)
    return FrameSet(
        images=np.concatenate([np.asarray(ep["image"], np.uint8) for ep in episodes]),
        reward=np.concatenate([np.asarray(ep["reward"], np.float32) for ep in episodes]),
        episode=np.concatenate([np.full(len(ep["image"]), i, np.int64) for i, ep in enumerate(episodes)]),
        labels=merged)


def split_episodes(frames: FrameSet, eval_episodes: int) -> Tuple[FrameSet, FrameSet]:
    """(train, held-out): the last ``eval_episodes`` episodes are held out."""
    ids = frames.episode_ids
    if not 0 < eval_episodes < len(ids):
        raise UserError(f"cannot hold out {eval_episodes} of {len(ids)} episodes: need at least one on each side; "
                        "raise probe.train_episodes or lower probe.eval_episodes")
    held_out = np.isin(frames.episode, ids[-eval_episodes:])
    return frames.take(~held_out), frames.take(held_out)


def window_starts(frames: FrameSet, length: int) -> np.ndarray:
    """Flat indices of every frame that starts a ``length``-frame window inside its episode."""
    ids = frames.episode
    if length == 1:
        return np.arange(len(frames))
    same = ids[length - 1:] == ids[: len(ids) - length + 1]  # window start and end in one episode
    starts = np.nonzero(same)[0]
    if starts.size == 0:
        raise UserError(f"no episode has {length} frames for a window: collect longer episodes "
                        "(probe.episode_steps) or shorten mae.length / siammae.gap_max")
    return starts


def sample_windows(frames: FrameSet, batch: int, length: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """``batch`` windows of ``length`` consecutive frames of one episode each:
    ``image`` (B, T, H, W, C) uint8 and ``reward`` (B, T) float32."""
    starts = rng.choice(window_starts(frames, length), size=batch)  # (B,)
    index = starts[:, None] + np.arange(length)[None, :]  # (B, T)
    return {"image": frames.images[index], "reward": frames.reward[index]}


def spread(n_total: int, n_wanted: int) -> np.ndarray:
    """``n_wanted`` indices spread evenly over ``range(n_total)`` (all when n_wanted is 0 or larger)."""
    if n_wanted <= 0 or n_wanted >= n_total:
        return np.arange(n_total)
    return np.linspace(0, n_total - 1, n_wanted).round().astype(np.int64)
