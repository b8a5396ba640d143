"""The agent's updates as the training loop sees them: checked, hookable, counted."""

from __future__ import annotations

from typing import Dict

from mwm.counters import Counters
from mwm.faults import maybe_kill
from mwm.nonfinite import NonFiniteGuard


class Updater:
    """Runs one pre-training or scheduled update of ``agent`` on ``replay`` and counts it in ``counters``.

    The one place where an update meets the run's safety machinery, in this order: the
    non-finite guard reads the update's metrics (and raises ``TrainingDiverged`` after
    ``run.max_nonfinite`` skipped updates in a row, mwm/nonfinite.py); the ``update``
    fault-injection point fires (the weights have changed, the update is not counted yet,
    mwm/faults.py); then ``counters.updates`` (and for pre-training ``pretrain_updates``)
    go up by one. Returns the update's metrics as the agent gave them (device tensors stay
    on the device).
    """

    def __init__(self, agent, replay, counters: Counters, guard: NonFiniteGuard):
        self.agent, self.replay, self.counters, self.guard = agent, replay, counters, guard

    def pretrain(self) -> Dict:
        """One pre-training update (MWM: the autoencoder alone)."""
        metrics = self._checked(self.agent.pretrain(self.replay, 1))
        self.counters.pretrain_updates += 1
        return metrics

    def update(self) -> Dict:
        """One scheduled update of every part of the agent."""
        return self._checked(self.agent.update(self.replay))

    @property
    def nonfinite_total(self) -> int:
        """Updates skipped for NaN or inf so far in this process (logged as ``train/nonfinite_total``)."""
        return self.guard.total

    def _checked(self, metrics: Dict) -> Dict:
        metrics = self.guard.check(metrics, self.counters.step)
        maybe_kill("update", self.counters.updates)
        self.counters.updates += 1
        return metrics
