"""SiamMAE's representation (Gupta et al., 2023) under MWM's world model.

One shared encoder reads frame t unmasked and frame t + k with ``siammae.mask_ratio``
(0.95) of its tokens removed; a cross-self decoder reconstructs frame t + k (and its
reward). The world model reads the encoder's tokens of unmasked frames exactly as MWM's
(:mod:`mwm.representations.mae`, which this extends): only the objective differs.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

from mwm.config import construct
from mwm.masking import Masking
from mwm.representation import Metrics, Sampler
from mwm.representations.mae import MaskedAutoencoderRepresentation, labelled_grid
from mwm.siammae import SiameseMaskedAutoencoder, check_gaps, frame_pairs

FIGURE_PAIRS = 8  # pairs in the past | future | masked | reconstruction | pasted figure
FIGURE_ROWS = ("past", "future", "masked", "reconstruction", "pasted")


def build_siammae(cfg, image_shape) -> SiameseMaskedAutoencoder:
    """SiamMAE from the ``mae`` (encoder, loss options) and ``siammae`` (future-frame mask
    ratio, decoder) config blocks for images (H, W, C)."""
    check_gaps(cfg.siammae.gap_min, cfg.siammae.gap_max)
    return construct(SiameseMaskedAutoencoder, cfg.mae, cfg.siammae, in_channels=image_shape[-1],
                     image_size=image_shape[0])


class SiameseRepresentation(MaskedAutoencoderRepresentation):
    """``self.mae`` is the :class:`mwm.siammae.SiameseMaskedAutoencoder`; its optimiser keeps
    the name ``mae``."""

    name = "siammae"

    def build_model(self) -> SiameseMaskedAutoencoder:
        return build_siammae(self.cfg, self.image_shape)

    def masking(self, batch: int, length: int) -> Masking:
        """Future-frame masking of ``batch * length`` frames at ``siammae.mask_ratio``."""
        return self.mae.mask_future(batch * length, self.device)

    def loss(self, sample: Sampler) -> Tuple[torch.Tensor, Metrics]:
        """The pair loss on ``siammae.batch`` pairs (t, t + k), k uniform in [gap_min, gap_max]."""
        s = self.cfg.siammae
        sequences = sample("siammae", s.batch, s.gap_max + 1)  # (B, gap_max + 1, ...)
        pairs = frame_pairs(sequences, s.gap_min, s.gap_max)  # each (B, ...)
        loss, metrics = self.mae.pair_loss(pairs.past, pairs.future, pairs.future_reward.float(),
                                           self.masking(s.batch, 1))
        metrics["siammae/gap"] = pairs.gap.float().mean()
        return loss, metrics

    @torch.no_grad()
    def figure(self, replay) -> Dict[str, np.ndarray]:
        """Past | future | masked | reconstruction | pasted rows of ``FIGURE_PAIRS`` replay pairs."""
        s = self.cfg.siammae
        sample = replay.sample(FIGURE_PAIRS, s.gap_max + 1)
        sequences = {key: torch.as_tensor(sample[key]).to(self.device) for key in ("image", "reward")}
        pairs = frame_pairs(sequences, s.gap_min, s.gap_max)
        figure = self.mae.reconstruct_pair(pairs.past, pairs.future, self.masking(FIGURE_PAIRS, 1))
        return {"siammae/past_future_masked_reconstruction": labelled_grid({row: figure[row] for row in FIGURE_ROWS})}
