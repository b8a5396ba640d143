"""DreamerV2 from pixels: the world model reads and reconstructs images with CNNs.

The RSSM, heads, actor-critic and update are MWM's (agents/world_model_agent.py);
only the representation differs: none (:mod:`mwm.representations.pixels`), so the
world model's own conv encoder (depth 48, kernels 4, stride 2) and transposed-conv
decoder read and reconstruct images scaled to [-0.5, 0.5].
"""

from __future__ import annotations

from agents.world_model_agent import WorldModelAgent


class DreamerV2Agent(WorldModelAgent):
    """DreamerV2 with discrete latents; see agents/dreamerv2/README.md."""

    representation_name = "pixels"
