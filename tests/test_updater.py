"""The training loop's parts: the counters a checkpoint stores, and the updater around each update."""

from __future__ import annotations

import pytest

from mwm import updater as updater_mod
from mwm.counters import Counters
from mwm.nonfinite import NonFiniteGuard, TrainingDiverged
from mwm.updater import Updater


def test_counters_round_trip_through_the_checkpoint_dict():
    counters = Counters(step=120, updates=9, episodes=3, pretrained=True, pretrain_updates=2)
    saved = counters.as_dict()
    assert saved == {"step": 120, "updates": 9, "episodes": 3, "pretrained": True, "pretrain_updates": 2}
    assert list(saved) == ["step", "updates", "episodes", "pretrained", "pretrain_updates"]  # the on-disk order
    assert Counters.from_dict(saved) == counters


def test_counters_from_an_older_checkpoint_keep_defaults_and_drop_unknown_keys():
    # run_dir.restore fills in pretrain_updates for checkpoints from before that counter
    old = {"step": 40, "updates": 5, "episodes": 2, "pretrained": False, "note": "from another version"}
    counters = Counters.from_dict(old)
    assert counters == Counters(step=40, updates=5, episodes=2, pretrained=False, pretrain_updates=0)
    assert "note" not in counters.as_dict()


class FakeAgent:
    """Returns the next of ``streaks`` as its ``mae/nonfinite`` metric, one per update."""

    def __init__(self, streaks):
        self.streaks = list(streaks)
        self.calls = []

    def update(self, replay):
        self.calls.append(("update", replay))
        return {"mae/loss": 1.0, "mae/nonfinite": float(self.streaks.pop(0))}

    def pretrain(self, replay, updates):
        self.calls.append(("pretrain", updates))
        return {"mae/loss": 2.0, "mae/nonfinite": float(self.streaks.pop(0))}


def test_each_update_is_checked_then_hooked_then_counted(monkeypatch):
    counters = Counters(step=30, updates=4)
    seen = []
    # the fault hook fires after the update changed the weights and before it is counted
    monkeypatch.setattr(updater_mod, "maybe_kill",
                        lambda point, tag: seen.append((point, tag, counters.updates, counters.pretrain_updates)))
    agent = FakeAgent([0, 0, 0])
    updater = Updater(agent, "replay", counters, NonFiniteGuard(limit=3))
    assert updater.pretrain()["mae/loss"] == 2.0
    assert updater.update()["mae/loss"] == 1.0
    updater.update()
    assert agent.calls == [("pretrain", 1), ("update", "replay"), ("update", "replay")]
    assert seen == [("update", 4, 4, 0), ("update", 5, 5, 1), ("update", 6, 6, 1)]
    assert (counters.updates, counters.pretrain_updates, counters.step) == (7, 1, 30)


def test_a_diverged_update_is_not_counted_and_no_hook_fires(monkeypatch, capsys):
    counters = Counters(step=50, updates=10)
    seen = []
    monkeypatch.setattr(updater_mod, "maybe_kill", lambda point, tag: seen.append(tag))
    updater = Updater(FakeAgent([1, 2]), None, counters, NonFiniteGuard(limit=2))
    updater.update()  # one skipped update: counted, the run goes on
    assert counters.updates == 11 and updater.nonfinite_total == 1
    with pytest.raises(TrainingDiverged, match="2 non-finite updates in a row at step 50"):
        updater.update()
    assert counters.updates == 11 and seen == [10]  # the checkpoint written next describes finite weights
    assert capsys.readouterr().err.count("update skipped") == 2
