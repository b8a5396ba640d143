"""MWM: a masked autoencoder on conv-stem tokens, and a world model on its latents.

Each update (values and sources: docs/HYPERPARAMETERS.md):
1. autoencoder: sample 32 x 32 frames, mask 75% of the 8x8 feature tokens, reconstruct
   all pixels and the reward (its own optimiser; :mod:`mwm.representations.mae`);
2. world model: encode 16 x 50 frames with the autoencoder at mask ratio 0 under
   stop-gradient, run the RSSM over the flat-ViT embedding of those tokens and
   reconstruct the tokens;
3. actor-critic in imagination from the posterior states.
Before the first policy step the autoencoder alone is trained for ``run.pretrain``
updates.
"""

from __future__ import annotations

from agents.world_model_agent import WorldModelAgent


class MWMAgent(WorldModelAgent):
    """Masked World Models: see the module docstring and agents/mwm/README.md."""

    representation_name = "mae"
