"""Transitions for model-free learners (CURL's Rainbow and SAC), drawn from the replay's RAM episodes.

This is not a second storage layer: it reads the finished episodes that
:class:`replay.Replay` keeps in RAM (never modified after insertion) and indexes
their transitions. A transition at step ``t`` of an episode of ``L`` steps is

    obs        frames t-k+1 .. t            (k = ``history``; before the episode's first
                                             step the first frame repeats)
    action     action[t + 1]                (the protocol stores the action that *led to*
                                             a step with that step)
    reward     R = sum_{j<m} gamma^j r[t+1+j], m = min(n, L-1-t)  (never past the episode)
    discount   0 if step t+m is terminal, else gamma^m   (a time limit bootstraps)
    next_obs   frames t+m-k+1 .. t+m

for ``t = 0 .. L-2``; the last step has no action after it, so an episode of ``L``
steps holds ``L - 1`` transitions.

Sampling is prioritised (Schaul et al., 2016) with a sum tree: P(i) = p_i / sum_j p_j,
importance weights w_i = (N P(i))^-beta / max_batch w, stratified over ``batch`` equal
segments of the total priority, as in data-efficient Rainbow. New transitions get the
largest priority seen so far; :meth:`TransitionSampler.update_priorities` stores
``loss ** exponent``. ``prioritized=False`` samples uniformly (weights 1).

Priorities live only in RAM: after a restart the sampler re-indexes the reloaded
episodes, all at the initial maximum priority.
"""

from __future__ import annotations

import collections
from typing import Dict, NamedTuple, Tuple

import numpy as np

from mwm.errors import UserError

Episode = Dict[str, np.ndarray]
MIN_PRIORITY = 1e-6  # a priority of 0 would hide a transition forever


def ram_episodes(replay) -> Tuple[Episode, ...]:
    """The finished episodes ``replay`` holds in RAM, oldest first (never modified).

    Uses ``replay.episodes()`` when the replay offers it; otherwise reads the RAM store
    snapshot under the replay's lock (``replay.Replay`` has no public accessor yet).
    """
    if hasattr(replay, "episodes"):
        return tuple(replay.episodes())
    with replay._lock:
        episodes, _ = replay._store.snapshot()
    return episodes


class SumTree:
    """Binary tree of priorities over ``capacity`` leaves; each node holds its children's sum.

    Array layout: root at 1, node i has children 2i and 2i+1, leaf s at ``size + s``.
    Parents are recomputed from their children (never updated by deltas), so the sums
    do not drift. All operations are vectorised over many leaves.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"SumTree capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.size = 1 << max(0, (self.capacity - 1).bit_length())  # leaves, a power of two
        self.depth = self.size.bit_length() - 1
        self.nodes = np.zeros(2 * self.size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def get(self, leaves: np.ndarray) -> np.ndarray:
        """Priorities of ``leaves`` (S,)."""
        return self.nodes[self.size + np.asarray(leaves, dtype=np.int64)]

    def set(self, leaves: np.ndarray, priorities: np.ndarray) -> None:
        """Set the priorities of ``leaves`` (S,) (later duplicates win) and refresh their ancestors."""
        leaves = np.asarray(leaves, dtype=np.int64)
        if leaves.size == 0:
            return
        nodes = self.size + leaves
        self.nodes[nodes] = np.asarray(priorities, dtype=np.float64)
        for _ in range(self.depth):
            nodes = np.unique(nodes >> 1)
            self.nodes[nodes] = self.nodes[2 * nodes] + self.nodes[2 * nodes + 1]

    def find(self, values: np.ndarray) -> np.ndarray:
        """Leaves (S,) whose cumulative-priority interval holds each of ``values`` (S,) in [0, total)."""
        values = np.asarray(values, dtype=np.float64).copy()
        index = np.ones(len(values), dtype=np.int64)
        for _ in range(self.depth):
            left = 2 * index
            left_sum = self.nodes[left]
            right = values >= left_sum
            values = np.where(right, values - left_sum, values)
            index = np.where(right, left + 1, left)
        return index - self.size


class _Indexed(NamedTuple):
    """An episode the sampler has given slots to: slots ``first .. first+count-1`` (mod capacity)."""

    serial: int
    episode: Episode
    first: int
    count: int


class TransitionSampler:
    """n-step transitions with frame stacks, sampled uniformly or by priority.

    Args:
        replay: a :class:`replay.Replay` (or anything :func:`ram_episodes` accepts).
        capacity: most transitions indexed at once; at least the replay's step capacity.
        history: frames per stacked observation (k).
        n_step: steps of the discounted return (n).
        discount: gamma.
        prioritized: sum-tree prioritised sampling (else uniform).
        priority_exponent: omega; stored priorities are ``loss ** omega``.
        reward_clip: rewards are clipped to [-c, c] before summing (0: no clipping).
        seed: seeds this sampler's own generator.
    """

    def __init__(self, replay, capacity: int, history: int, n_step: int, discount: float,
                 prioritized: bool = True, priority_exponent: float = 0.5, reward_clip: float = 0.0,
                 seed: int = 0):
        if history < 1 or n_step < 1:
            raise UserError(f"transition history ({history}) and n_step ({n_step}) must be at least 1")
        if not 0.0 <= discount <= 1.0:
            raise UserError(f"transition discount must be in [0, 1], got {discount}")
        self.replay = replay
        self.capacity = int(capacity)
        self.history = int(history)
        self.n_step = int(n_step)
        self.discount = float(discount)
        self.prioritized = bool(prioritized)
        self.priority_exponent = float(priority_exponent)
        self.reward_clip = float(reward_clip)
        self.rng = np.random.default_rng(seed)
        self.tree = SumTree(self.capacity)
        self.max_priority = 1.0
        self._slot_serial = np.full(self.capacity, -1, dtype=np.int64)  # (capacity,) owner episode
        self._slot_step = np.zeros(self.capacity, dtype=np.int64)  # (capacity,) t inside it
        self._indexed: collections.deque = collections.deque()
        self._by_serial: Dict[int, Episode] = {}
        self._next_serial = 0
        self._head = 0  # next free slot
        self._live = 0  # slots in use
        self._gammas = self.discount ** np.arange(self.n_step + 1)  # (n+1,)

    # ------------------------------------------------------------------ indexing

    @property
    def num_transitions(self) -> int:
        """Transitions currently indexed (after the last :meth:`sync`)."""
        return self._live

    def sync(self) -> int:
        """Index episodes that entered the replay's RAM and drop those it evicted; returns the count."""
        episodes = ram_episodes(self.replay)
        if self._indexed and len(episodes) == len(self._indexed) and episodes[0] is self._indexed[0].episode \
                and episodes[-1] is self._indexed[-1].episode:
            return self._live  # unchanged since the last sync
        present = {id(e) for e in episodes}
        while self._indexed and id(self._indexed[0].episode) not in present:
            self._drop(self._indexed.popleft())
        if self._indexed and (len(self._indexed) > len(episodes)
                              or episodes[len(self._indexed) - 1] is not self._indexed[-1].episode):
            raise RuntimeError("replay episodes changed order; the transition index cannot follow it")
        for episode in episodes[len(self._indexed):]:
            self._add(episode)
        return self._live

    def _add(self, episode: Episode) -> None:
        count = len(episode["is_first"]) - 1  # a 1-step episode holds no transition but keeps its place
        if self._live + count > self.capacity:
            raise UserError(f"transition sampler capacity {self.capacity} is below the replay's RAM contents "
                            f"({self._live + count} transitions): give it at least replay.capacity")
        serial, self._next_serial = self._next_serial, self._next_serial + 1
        slots = (self._head + np.arange(count)) % self.capacity  # (count,)
        self._slot_serial[slots] = serial
        self._slot_step[slots] = np.arange(count)
        self.tree.set(slots, np.full(count, self.max_priority))
        self._indexed.append(_Indexed(serial, episode, self._head, count))
        self._by_serial[serial] = episode
        self._head = (self._head + count) % self.capacity
        self._live += count

    def _drop(self, item: _Indexed) -> None:
        slots = (item.first + np.arange(item.count)) % self.capacity
        self._slot_serial[slots] = -1
        self.tree.set(slots, np.zeros(item.count))
        del self._by_serial[item.serial]
        self._live -= item.count

    # ------------------------------------------------------------------ sampling

    def sample(self, batch: int, beta: float = 1.0) -> Dict[str, np.ndarray]:
        """A batch of transitions; syncs with the replay first.

        Returns numpy arrays: ``obs`` and ``next_obs`` (B, k, H, W, C) uint8, ``action``
        (B, A) float32, ``reward`` (B,) n-step return, ``discount`` (B,) bootstrap factor,
        ``weight`` (B,) importance weights, ``index`` (B,) slots and ``serial`` (B,) for
        :meth:`update_priorities`.
        """
        if self.sync() == 0:
            raise UserError("the replay holds no transitions yet (episodes of 2+ steps are needed): "
                            "collect more data before training")
        if self.prioritized:
            slots, weight = self._sample_prioritized(batch, beta)
        else:
            slots = self._sample_uniform(batch)
            weight = np.ones(batch, dtype=np.float32)
        out = self.gather(slots)
        out["weight"] = weight
        return out

    def _sample_uniform(self, batch: int) -> np.ndarray:
        first = self._indexed[0].first
        return (first + self.rng.integers(0, self._live, size=batch)) % self.capacity  # (B,)

    def _sample_prioritized(self, batch: int, beta: float) -> Tuple[np.ndarray, np.ndarray]:
        total = self.tree.total
        segment = total / batch
        values = (np.arange(batch) + self.rng.random(batch)) * segment  # (B,) one per stratum
        slots = self.tree.find(np.minimum(values, np.nextafter(total, 0)))
        bad = self.tree.get(slots) <= 0  # rounding at a boundary can land on an empty leaf
        while bad.any():
            slots[bad] = self.tree.find(self.rng.random(int(bad.sum())) * total)
            bad = self.tree.get(slots) <= 0
        probs = self.tree.get(slots) / total  # (B,)
        weight = (self._live * probs) ** -beta
        return slots, (weight / weight.max()).astype(np.float32)

    def gather(self, slots: np.ndarray) -> Dict[str, np.ndarray]:
        """The transitions at ``slots`` (B,) as arrays (see :meth:`sample`, without ``weight``)."""
        slots = np.asarray(slots, dtype=np.int64)
        serials = self._slot_serial[slots]
        if (serials < 0).any():
            raise ValueError(f"slots {slots[serials < 0].tolist()} hold no transition")
        rows = [self._transition(self._by_serial[s], t) for s, t in zip(serials, self._slot_step[slots])]
        obs, action, reward, discount, next_obs = zip(*rows)
        return {"obs": np.stack(obs), "action": np.stack(action),
                "reward": np.asarray(reward, np.float32), "discount": np.asarray(discount, np.float32),
                "next_obs": np.stack(next_obs), "index": slots, "serial": serials}

    def _transition(self, episode: Episode, t: int):
        length = len(episode["is_first"])
        m = min(self.n_step, length - 1 - t)
        rewards = episode["reward"][t + 1: t + 1 + m].astype(np.float64)  # (m,)
        if self.reward_clip > 0:
            rewards = np.clip(rewards, -self.reward_clip, self.reward_clip)
        ret = float(np.dot(self._gammas[:m], rewards))
        discount = 0.0 if bool(episode["is_terminal"][t + m]) else float(self._gammas[m])
        return (frame_stack(episode["image"], t, self.history), episode["action"][t + 1], ret, discount,
                frame_stack(episode["image"], t + m, self.history))

    # ------------------------------------------------------------------ priorities

    def update_priorities(self, index: np.ndarray, serial: np.ndarray, loss: np.ndarray) -> None:
        """Store ``max(loss, 1e-6) ** exponent`` for sampled slots still holding the same transition."""
        if not self.prioritized:
            return
        index, serial = np.asarray(index, np.int64), np.asarray(serial, np.int64)
        priority = np.maximum(np.asarray(loss, np.float64), MIN_PRIORITY) ** self.priority_exponent
        if not np.isfinite(priority).all():
            return  # a non-finite loss is skipped by the optimiser; keep the old priorities too
        same = self._slot_serial[index] == serial
        self.tree.set(index[same], priority[same])
        if same.any():
            self.max_priority = max(self.max_priority, float(priority[same].max()))


def frame_stack(images: np.ndarray, t: int, history: int) -> np.ndarray:
    """Frames ``t-history+1 .. t`` of one episode (history, H, W, C); indices before 0 repeat frame 0."""
    index = np.maximum(np.arange(t - history + 1, t + 1), 0)  # (k,)
    return images[index]

