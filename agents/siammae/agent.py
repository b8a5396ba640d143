"""SiamMAE: a Siamese masked autoencoder on conv-stem tokens, and MWM's world model on its latents.

Each update:
1. representation: sample sequences of ``gap_max + 1`` steps, take one pair (t, t + k)
   from each with k uniform in [gap_min, gap_max]; encode frame t unmasked and frame
   t + k with 95% of its tokens removed through one shared encoder; the cross-self
   decoder reconstructs frame t + k (and its reward) (its own optimiser;
   :mod:`mwm.representations.siammae`);
2. world model: exactly MWM's, on the encoder's unmasked latents under stop-gradient;
3. actor-critic in imagination from the posterior states.
Before the first policy step the representation alone is trained for ``run.pretrain``
updates. Only the representation differs from MWM (agents/mwm/agent.py).
"""

from __future__ import annotations

from agents.world_model_agent import WorldModelAgent


class SiamMAEAgent(WorldModelAgent):
    """SiamMAE representation + MWM world model and actor-critic; see agents/siammae/README.md."""

    representation_name = "siammae"
