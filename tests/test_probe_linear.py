"""Linear probes and seed statistics on synthetic data with known answers."""

import math

import numpy as np
import torch

from mwm.probes.annotations import CATEGORICAL, POSITION, Labels
from mwm.probes.linear import r2_score, ridge_probe, run_probes, weighted_f1
from mwm.probes.stats import bootstrap_ci, iqm, summarise

L2S = [1e-3, 1e-1, 10.0, 1000.0]


def synthetic(n, features=40, seed=0):
    """Features (n, F), a linear target + small noise, and a target the features do not hold."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    w = rng.normal(size=features)
    linear = (x @ w + 0.05 * rng.normal(size=n)).astype(np.float32)
    unrelated = rng.normal(size=n).astype(np.float32)
    episodes = np.repeat(np.arange(n // 50), 50)
    return torch.as_tensor(x), linear, unrelated, episodes


def test_ridge_probe_recovers_a_linear_target_on_held_out_data():
    x, y, _, ep = synthetic(400)
    r2 = ridge_probe(x[:300], y[:300], ep[:300], x[300:], y[300:], L2S)
    assert r2 > 0.98


def test_ridge_probe_scores_about_zero_on_an_unrelated_target():
    x, _, noise, ep = synthetic(400)
    r2 = ridge_probe(x[:300], noise[:300], ep[:300], x[300:], noise[300:], L2S)
    assert -0.1 < r2 < 0.1  # cross-validation picks a strong penalty: the training-mean predictor
    shifted = noise[300:] + 3.0  # held-out frames far from the training mean: still about 0, not -9
    assert -0.1 < ridge_probe(x[:300], noise[:300], ep[:300], x[300:], shifted, L2S) < 0.1


def test_ridge_probe_with_more_features_than_frames_does_not_blow_up():
    x, _, noise, ep = synthetic(200, features=2000)
    r2 = ridge_probe(x[:150], noise[:150], ep[:150], x[150:], noise[150:], L2S)
    assert r2 > -0.3


def test_r2_and_f1_definitions():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    assert r2_score(y, y) == 1.0
    assert r2_score(y, np.full(4, y.mean())) == 0.0
    assert math.isnan(r2_score(np.ones(4), y))
    # Against the training mean: predicting it scores 0 even when the held-out mean differs.
    assert r2_score(y, np.full(4, 10.0), reference=10.0) == 0.0
    assert r2_score(y, y, reference=10.0) == 1.0
    t = np.array([0, 0, 0, 1])
    assert weighted_f1(t, t) == 1.0
    # all predicted 0: F1 of class 0 = 2*3/(2*3+1) = 6/7 (weight 3), of class 1 = 0 (weight 1)
    assert np.isclose(weighted_f1(t, np.zeros(4, int)), 0.75 * 6 / 7)


def test_run_probes_regresses_positions_and_classifies_categories():
    x, y, _, ep = synthetic(400)
    classes = np.random.default_rng(1).integers(0, 4, size=len(y))  # 4 classes, each shifting its own feature
    x = x.clone()
    x[np.arange(len(y)), classes] += 4.0
    classes = classes.astype(np.float32)
    n = len(y)
    labels = Labels(np.zeros((n, 4), np.int32), np.ones(n, bool),
                    targets={"pos": y, "cat": classes, "flat": np.zeros(n, np.float32)},
                    valid={"pos": np.ones(n, bool), "cat": np.ones(n, bool), "flat": np.ones(n, bool)},
                    kinds={"pos": POSITION, "cat": CATEGORICAL, "flat": POSITION})
    train = np.arange(n) < 300

    def part(mask):
        return Labels(labels.boxes[mask], labels.present[mask], targets={k: v[mask] for k, v in labels.targets.items()},
                      valid={k: v[mask] for k, v in labels.valid.items()}, kinds=labels.kinds)

    scores = run_probes(x[train], part(train), ep[train], x[~train], part(~train), [1e-3, 10.0], steps=25)
    assert scores["r2/pos"] > 0.98
    assert scores["f1/cat"] > 0.9
    assert math.isnan(scores["r2/flat"])  # a constant target has nothing to probe


def test_probe_only_uses_frames_where_the_target_is_valid():
    x, y, _, ep = synthetic(400)
    corrupt = y.copy()
    corrupt[::2] = 1000.0  # garbage where the object is "absent"
    valid = np.ones(400, bool)
    valid[::2] = False
    n = 400
    labels = Labels(np.zeros((n, 4), np.int32), valid, targets={"pos": corrupt}, valid={"pos": valid},
                    kinds={"pos": POSITION})

    def part(lo, hi):
        s = slice(lo, hi)
        return Labels(labels.boxes[s], labels.present[s], targets={"pos": corrupt[s]}, valid={"pos": valid[s]},
                      kinds=labels.kinds)

    scores = run_probes(x[:300], part(0, 300), ep[:300], x[300:], part(300, 400), L2S, steps=10)
    assert scores["r2/pos"] > 0.98


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_agreement():
    low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0], 0.95)
    assert low <= 2.5 <= high
    tight = bootstrap_ci([2.5, 2.5, 2.5, 2.5], 0.95)
    assert tight == (2.5, 2.5)
    assert all(math.isnan(v) for v in bootstrap_ci([1.0], 0.95))
    assert all(math.isnan(v) for v in bootstrap_ci([1.0, 3.0], 0.95))  # no interval from fewer than 3 seeds
    low, high = bootstrap_ci([1.0, 2.0, 3.0], 0.95)
    assert 1.0 <= low < 2.0 < high <= 3.0
    assert iqm([0.0, 1.0, 2.0, 100.0]) == 1.5  # drops one value at each end
    stats = summarise([1.0, float("nan"), 3.0], 0.95)
    assert stats["n"] == 2 and stats["mean"] == 2.0
