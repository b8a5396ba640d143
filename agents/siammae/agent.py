"""SiamMAE: a Siamese masked autoencoder on conv-stem tokens, and MWM's world model on its latents.

Each update:
1. representation: sample sequences of ``gap_max + 1`` steps, take one pair (t, t + k)
   from each with k uniform in [gap_min, gap_max]; encode frame t unmasked and frame
   t + k with 95% of its tokens removed through one shared encoder; the cross-self
   decoder reconstructs frame t + k (and its reward) (its own optimiser);
2. world model: exactly MWM's, on the encoder's unmasked latents under stop-gradient;
3. actor-critic in imagination from the posterior states.
Before the first policy step the representation alone is trained for ``run.pretrain``
updates. Only the representation objective differs from MWM (agents/mwm/agent.py),
which this agent extends.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from agents.base import Metrics
from agents.mwm.agent import MWMAgent, mae_kwargs
from agents.world_model_agent import WorldModelAgent
from mwm.masking import Masking
from mwm.siammae import SiameseMaskedAutoencoder, check_gaps, frame_pairs

FIGURE_PAIRS = 8  # pairs in the past | future | masked | reconstruction | pasted figure
FIGURE_ROWS = ("past", "future", "masked", "reconstruction", "pasted")


def build_siammae(cfg, image_shape) -> SiameseMaskedAutoencoder:
    """SiamMAE from the ``mae`` (encoder, loss options) and ``siammae`` (masking, decoder)
    config blocks for images (H, W, C)."""
    s = cfg.siammae
    kwargs = mae_kwargs(cfg, image_shape)
    del kwargs["simmim"]  # SiamMAE's encoder never sees its removed tokens
    kwargs.update(dec_width=s.dec_width, dec_depth=s.dec_depth, dec_heads=s.dec_heads, mask_ratio=s.mask_ratio)
    return SiameseMaskedAutoencoder(**kwargs)


class SiamMAEAgent(MWMAgent):
    """SiamMAE representation + MWM world model and actor-critic; see agents/siammae/README.md.

    ``self.mae`` is the :class:`mwm.siammae.SiameseMaskedAutoencoder` (the name, its
    optimiser ``mae`` and the world-model wiring are MWM's).
    """

    def build_autoencoder(self, cfg, image_shape) -> SiameseMaskedAutoencoder:
        check_gaps(cfg.siammae.gap_min, cfg.siammae.gap_max)
        return build_siammae(cfg, image_shape)

    def masking(self, batch: int, length: int) -> Masking:
        """Future-frame masking for ``batch * length`` frames at ``siammae.mask_ratio``."""
        return self.mae.mask_future(batch * length, self.device)

    def representation_update(self, replay) -> Metrics:
        s = self.cfg.siammae
        sequences = self.batches(replay, "siammae", s.batch, s.gap_max + 1)  # (B, gap_max + 1, ...)
        pairs = frame_pairs(sequences, s.gap_min, s.gap_max)  # each (B, ...)
        with self.autocast():
            loss, metrics = self.mae.pair_loss(pairs.past, pairs.future, pairs.future_reward.float(),
                                               self.masking(s.batch, 1))
        metrics["siammae/gap"] = pairs.gap.float().mean()
        metrics.update(self._step(self.mae_opt, loss))
        return metrics

    @torch.no_grad()
    def report(self, replay) -> Dict[str, Any]:
        """The pair figure (past | future | masked | reconstruction | pasted) and the open-loop video."""
        media = WorldModelAgent.report(self, replay)
        if replay.num_episodes == 0:
            return media
        s = self.cfg.siammae
        sample = replay.sample(FIGURE_PAIRS, s.gap_max + 1)
        sequences = {key: torch.as_tensor(sample[key]).to(self.device) for key in ("image", "reward")}
        pairs = frame_pairs(sequences, s.gap_min, s.gap_max)
        figure = self.mae.reconstruct_pair(pairs.past, pairs.future, self.masking(FIGURE_PAIRS, 1))
        grid = torch.cat([torch.cat(list(figure[row]), dim=1) for row in FIGURE_ROWS], dim=0)  # (5H, F*W, C)
        media["siammae/past_future_masked_reconstruction"] = grid.cpu().numpy()
        return media
