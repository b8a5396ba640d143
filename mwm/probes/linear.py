"""Linear probes of frozen features, AtariARI-style (Anand et al., 2019).

A probe is a linear map from a frame's frozen features to one state variable, fitted
on the training episodes and scored on held-out episodes. Two kinds, by variable:

- ``position`` (coordinates): ridge regression, scored on the held-out frames by
  R^2 = 1 - sum (y - pred)^2 / sum (y - mean_train)^2: 1 is perfect and 0 is the trivial
  probe that always predicts the training mean (out-of-sample R^2; the usual
  denominator around the held-out mean would rate even that trivial probe far below 0
  when a few held-out episodes sit away from the training mean). Positions are ordered
  quantities, so regression uses that order where AtariARI's 256-way classification
  would not.
- ``categorical`` (scores, clocks, counters): multinomial logistic regression over the
  values seen in training (AtariARI's classification probe), scored by the
  support-weighted F1 over the held-out values (a value never seen in training counts
  as an error).

Features are standardised with the training statistics, and held-out features are
clipped to the range seen in training: a linear probe extrapolates without bound, and
one feature far outside it (a rare pixel pattern) would otherwise decide the score.
Ridge penalties are chosen from ``l2s`` by grouped k-fold cross-validation over the
training episodes (``FOLDS`` folds, whole episodes per fold); the softmax penalty on one
validation split (the last fifth of the training episodes), as L-BFGS fits cost more.
Then the probe is refitted on all training frames. Penalties are per frame (the ridge
objective is mean squared error + l2 * |w|^2), so one grid suits any data size.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from mwm.probes.annotations import CATEGORICAL, POSITION, Labels

VALIDATION_FRACTION = 0.2
FOLDS = 3  # cross-validation folds of the ridge penalty
FEATURE_EPS = 1e-6  # smallest std a feature is divided by
DEAD_FEATURE = 1e-4  # features whose std is below this share of the largest are dropped


def standardise(train: torch.Tensor, *others: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Scale every feature by the training mean and std, and clip the other sets to the
    training range: (N, F) tensors in, same shapes out.

    Features (nearly) constant in training (std at most ``DEAD_FEATURE`` of the largest,
    e.g. dead ReLUs) are set to 0: dividing by their tiny std would turn any held-out
    variation into huge values no probe was fitted on.
    """
    mean = train.mean(dim=0, keepdim=True)  # (1, F)
    std = train.std(dim=0, keepdim=True)  # (1, F)
    alive = std > DEAD_FEATURE * std.max() + FEATURE_EPS  # (1, F)
    scale = torch.where(alive, 1.0 / std.clamp(min=FEATURE_EPS), torch.zeros_like(std))  # (1, F)
    train = (train - mean) * scale  # (N, F)
    low, high = train.min(dim=0).values, train.max(dim=0).values  # (F,)
    return (train, *(torch.maximum(torch.minimum((x - mean) * scale, high), low) for x in others))


def r2_score(target: np.ndarray, pred: np.ndarray, reference: float | None = None) -> float:
    """1 - sum (target - pred)^2 / sum (target - reference)^2, with ``reference`` the
    constant baseline (default: the target's own mean, the classic R^2); NaN when the
    baseline is exact."""
    baseline = target.mean() if reference is None else reference
    total = float(((target - baseline) ** 2).sum())
    if total == 0.0:
        return math.nan
    return 1.0 - float(((target - pred) ** 2).sum()) / total


def weighted_f1(target: np.ndarray, pred: np.ndarray) -> float:
    """Per-class F1 over the classes in ``target``, averaged with weights = class counts."""
    classes, counts = np.unique(target, return_counts=True)
    scores = []
    for cls in classes:
        tp = np.count_nonzero((pred == cls) & (target == cls))
        fp = np.count_nonzero((pred == cls) & (target != cls))
        fn = np.count_nonzero((pred != cls) & (target == cls))
        scores.append(2 * tp / max(2 * tp + fp + fn, 1))
    return float(np.average(scores, weights=counts))


class RidgeSolver:
    """Ridge regressions min_w mean((x w + b - y)^2) + l2 |w|^2 of any target on one x (N, F).

    One eigendecomposition of the smaller Gram matrix of the centred x serves every
    target and penalty: with more features than frames the dual form
    w = x^T U diag(1 / (e + N l2)) U^T y over x x^T = U diag(e) U^T (N x N), else the
    primal w = V diag(1 / (e + N l2)) V^T x^T y over x^T x = V diag(e) V^T (F x F).
    """

    def __init__(self, x: torch.Tensor):
        self.n, features = x.shape
        self.x_mean = x.mean(dim=0)  # (F,)
        self.xc = x - self.x_mean  # (N, F)
        self.dual = self.n <= features
        gram = self.xc @ self.xc.T if self.dual else self.xc.T @ self.xc  # (R, R)
        eigenvalues, self.vectors = torch.linalg.eigh(gram)  # (R,), (R, R)
        self.eigenvalues = eigenvalues.clamp(min=0.0)

    def solve(self, y: torch.Tensor, l2s: Sequence[float]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """(w (F,), b) for target y (N,) at each penalty."""
        y_mean = y.mean()
        yc = y - y_mean  # (N,)
        projected = self.vectors.T @ (yc if self.dual else self.xc.T @ yc)  # (R,)
        out = []
        for l2 in l2s:
            coefficients = self.vectors @ (projected / (self.eigenvalues + self.n * l2))  # (R,)
            w = self.xc.T @ coefficients if self.dual else coefficients  # (F,)
            out.append((w, y_mean - self.x_mean @ w))
        return out


def validation_split(episode: np.ndarray) -> np.ndarray:
    """Bool mask (N,) of the validation frames: the last fifth of the episodes (at least
    one, when there are two or more), else the last fifth of the frames."""
    ids = np.unique(episode)
    if len(ids) >= 2:
        count = max(1, int(round(len(ids) * VALIDATION_FRACTION)))
        return np.isin(episode, ids[-count:])
    mask = np.zeros(len(episode), bool)
    mask[int(len(episode) * (1 - VALIDATION_FRACTION)):] = True
    return mask


def episode_folds(episode: np.ndarray, folds: int) -> List[np.ndarray]:
    """Bool masks (N,) of up to ``folds`` validation folds, each a contiguous run of whole
    episodes (of frames, when there is a single episode)."""
    ids = np.unique(episode)
    if len(ids) >= 2:
        return [np.isin(episode, part) for part in np.array_split(ids, min(folds, len(ids)))]
    return [np.isin(np.arange(len(episode)), part) for part in np.array_split(np.arange(len(episode)), folds)]


def ridge_probe(train_x: torch.Tensor, train_y: np.ndarray, train_episode: np.ndarray, test_x: torch.Tensor,
                test_y: np.ndarray, l2s: Sequence[float], solvers: Optional[Dict[bytes, RidgeSolver]] = None,
                key: bytes = b"") -> float:
    """Held-out R^2 of a ridge probe whose penalty is chosen by grouped k-fold cross-validation.

    ``solvers`` caches the decompositions of ``train_x`` and of its folds under ``key``,
    so targets probed on the same frames share them.
    """
    if np.ptp(train_y) == 0 or len(test_y) < 2:
        return math.nan
    solvers = {} if solvers is None else solvers
    y = torch.as_tensor(train_y, dtype=torch.float64, device=train_x.device)  # (N,)
    x = train_x.double()
    best = l2s[len(l2s) // 2]
    if len(l2s) > 1:
        errors = np.zeros(len(l2s))
        for fold, mask in enumerate(episode_folds(train_episode, FOLDS)):
            val = torch.as_tensor(mask, device=train_x.device)
            if int(val.sum()) == 0 or int((~val).sum()) < 2:
                continue
            fit = _cached(solvers, key + f"/fold{fold}".encode(), lambda: RidgeSolver(x[~val]))
            errors += [float(((x[val] @ w + b - y[val]) ** 2).sum()) for w, b in fit.solve(y[~val], l2s)]
        if errors.any():
            best = l2s[int(np.argmin(errors))]
    full = _cached(solvers, key + b"/all", lambda: RidgeSolver(x))
    (w, b), = full.solve(y, [best])
    pred = (test_x.double() @ w + b).cpu().numpy()
    return r2_score(test_y.astype(np.float64), pred, reference=float(train_y.mean()))


def _cached(solvers: Dict[bytes, RidgeSolver], key: bytes, make) -> RidgeSolver:
    """``solvers[key]``, built by ``make()`` on first use."""
    if key not in solvers:
        solvers[key] = make()
    return solvers[key]


def fit_softmax(x: torch.Tensor, classes: torch.Tensor, num_classes: int, l2: float, steps: int) -> torch.nn.Linear:
    """Multinomial logistic regression by L-BFGS: mean cross-entropy + l2 |W|^2."""
    probe = torch.nn.Linear(x.shape[1], num_classes, device=x.device)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    optimiser = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = F.cross_entropy(probe(x), classes) + l2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return probe


def classification_probe(train_x: torch.Tensor, train_y: np.ndarray, train_episode: np.ndarray,
                         test_x: torch.Tensor, test_y: np.ndarray, l2s: Sequence[float], steps: int) -> float:
    """Held-out weighted F1 of a softmax probe whose penalty is chosen on a validation split."""
    values = np.unique(train_y)
    if len(values) < 2 or len(test_y) == 0:
        return math.nan
    to_class = {v: i for i, v in enumerate(values)}
    classes = torch.as_tensor([to_class[v] for v in train_y], device=train_x.device)  # (N,)
    val_mask = validation_split(train_episode)
    val = torch.as_tensor(val_mask, device=train_x.device)
    best = l2s[len(l2s) // 2]
    if len(l2s) > 1 and val_mask.any() and (~val_mask).any():
        scores = []
        for l2 in l2s:
            probe = fit_softmax(train_x[~val], classes[~val], len(values), l2, steps)
            with torch.no_grad():
                scores.append(weighted_f1(train_y[val_mask], values[probe(train_x[val]).argmax(-1).cpu().numpy()]))
        best = l2s[int(np.argmax(scores))]
    probe = fit_softmax(train_x, classes, len(values), best, steps)
    with torch.no_grad():
        pred = values[probe(test_x).argmax(-1).cpu().numpy()]
    return weighted_f1(test_y, pred)


def run_probes(train_features: torch.Tensor, train_labels: Labels, train_episode: np.ndarray,
               test_features: torch.Tensor, test_labels: Labels, l2s: Sequence[float],
               steps: int) -> Dict[str, float]:
    """Score a probe for every target of ``train_labels``.

    Args:
        train_features, test_features: frozen features (N, F), (M, F).
        train_episode: (N,) episode ids of the training frames (for the validation split).
        l2s: penalties to choose from; steps: L-BFGS iterations of classification probes.
    Returns:
        ``r2/<name>`` for position targets and ``f1/<name>`` for categorical ones (NaN
        where a target is constant in training or missing from the held-out frames).
    """
    train_x, test_x = standardise(train_features.float(), test_features.float())
    scores: Dict[str, float] = {}
    solvers: Dict[bytes, RidgeSolver] = {}  # targets valid on the same frames share one decomposition
    for name, kind in train_labels.kinds.items():
        tr, te = train_labels.valid[name], test_labels.valid[name]
        tr_t, te_t = torch.as_tensor(tr, device=train_x.device), torch.as_tensor(te, device=train_x.device)
        args = (train_x[tr_t], train_labels.targets[name][tr], train_episode[tr], test_x[te_t],
                test_labels.targets[name][te])
        if kind == POSITION:
            scores[f"r2/{name}"] = ridge_probe(*args, l2s, solvers, key=np.packbits(tr).tobytes())
        elif kind == CATEGORICAL:
            scores[f"f1/{name}"] = classification_probe(*args, l2s, steps)
        else:
            raise ValueError(f"unknown probe kind {kind!r} for target {name!r}")
    return scores
