"""Where a training run is: the counters saved with every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Mapping


@dataclass
class Counters:
    """How far a run has got; saved with the weights they describe (a checkpoint holds them as a dict).

    ``step``: agent steps taken (each ``env.action_repeat`` frames, every env counted).
    ``updates``: every update, pre-training included. ``episodes``: finished by ``step``.
    ``pretrain_updates``: of ``run.pretrain`` done; ``pretrained``: pre-training is over.
    """

    step: int = 0
    updates: int = 0
    episodes: int = 0
    pretrained: bool = False
    pretrain_updates: int = 0

    @classmethod
    def from_dict(cls, saved: Mapping[str, object]) -> "Counters":
        """From a checkpoint's ``counters`` dict (:meth:`mwm.run_dir.RunDir.restore`); keys it does not
        hold keep their defaults, keys this class does not know are dropped."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in saved.items() if key in names})

    def as_dict(self) -> Dict[str, object]:
        """The checkpoint's ``counters`` entry: plain ints and a bool (``weights_only`` loads it)."""
        return dataclasses.asdict(self)
