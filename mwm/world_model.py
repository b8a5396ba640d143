"""The world model: observation encoder -> RSSM -> decoder, reward and discount heads.

:class:`WorldModel` is generic over its encoder and decoder (DreamerV2, Hafner et al.,
2021, Sec. 2). Two pairs ship with mwm:

- MWM (Seo et al., 2022, Sec. 3.2): :class:`FlatViTEncoder` embeds the stop-gradient
  MAE tokens (cls + 64, width 256) and :class:`TokenDecoder` reconstructs them.
- DreamerV2: :class:`mwm.conv.ConvEncoder` / :class:`mwm.conv.ConvDecoder` on pixels.

Contract for a pair: ``encoder(inputs (B, T, ...)) -> (B, T, embed_dim)``; an encoder
whose ``embed_tokens`` is N > 0 (and which names its attention ``heads``) returns N tokens
flattened, which the RSSM's posterior attends over (``wm.flat_pool attend``);
``decoder(feat (B, T, F)) -> prediction of inputs``; ``decoder.loss(pred, inputs) -> (B, T)``.
For ``recon_weight="change"`` the decoder also takes ``decoder.loss(pred, inputs, weight)``
and names the inputs' channel dimension in ``decoder.channel_dim``
(:func:`mwm.losses.dynamics.change_weights`).
"""

import inspect
import math
from typing import Callable, Mapping

import torch
from torch import nn

from mwm.distributions import OneHotCategorical
from mwm.heads import BernoulliHead, MSEHead
from mwm.losses.dynamics import (RECON_WEIGHTS, categorical_kl, change_weights, discount_loss, embed_reward_loss,
                                 kl_balance_loss, latent_recon_loss, prior_reward_loss, reward_loss)
from mwm.rssm import RSSM, State
from mwm.vit import Transformer, sincos_pos_embed_2d



def token_pos_embed(dim: int, num_tokens: int) -> torch.Tensor:
    """Fixed sin-cos embedding (num_tokens, dim) for a square grid, with or without a cls token.

    ``num_tokens = g * g + 1``: a zero row for the cls token, then the g x g grid (MAE);
    ``num_tokens = g * g``: the grid only.
    """
    for extra in (1, 0):
        grid = math.isqrt(num_tokens - extra)
        if grid > 0 and grid * grid == num_tokens - extra:
            embed = sincos_pos_embed_2d(dim, grid, grid)  # (g*g, dim)
            return torch.cat([torch.zeros(extra, dim), embed], dim=0)  # (num_tokens, dim)
    raise ValueError(f"{num_tokens} tokens are not a square grid (plus an optional cls token); "
                    "use e.g. 65 (cls + 8x8) or 64")


ENCODER_POOLS = ("mean", "attend", "slots")


class FlatViTEncoder(nn.Module):
    """MWM's world-model encoder over MAE tokens: linear, fixed pos emb, ViT, mean pool.

    (B, T, L, token_dim) -> (B, T, width); MWM: 256 -> 128, 2 blocks, 4 heads, L = 65.

    ``pool="attend"`` (not in the paper) keeps the L output tokens, flattened to
    (B, T, L * width), and the RSSM's posterior reads them by cross-attention from its
    deterministic state (:class:`mwm.rssm.RSSM`, ``embed_tokens``) beside their mean;
    :attr:`embed_tokens` tells the world model how many tokens the embedding holds.

    ``pool="slots"`` (not in the paper; the mirror of :class:`TokenDecoder`'s ``slots``)
    gives every output token its own linear map into the embedding (one (L * W, W)
    projection): e = sum_i V_i x_i. The mean is the special case V_i = I / L, so where
    the paddle is can reach the embedding through the token that shows it, instead of
    surviving an average over all L. It costs L * W * W weights (65 x 32 x 32 = 67k at
    the CPU size).
    """

    def __init__(self, token_dim: int = 256, num_tokens: int = 65, width: int = 128, depth: int = 2,
                 heads: int = 4, pool: str = "mean"):
        super().__init__()
        if pool not in ENCODER_POOLS:
            raise ValueError(f"encoder pool {pool!r} is not one of {ENCODER_POOLS}; set wm.flat_pool")
        self.num_tokens = num_tokens
        self.token_dim = token_dim
        self.heads = heads
        self.embed_tokens = num_tokens if pool == "attend" else 0  # tokens in the embedding; 0: one vector
        self.out_dim = width * max(self.embed_tokens, 1)
        self.proj = nn.Linear(token_dim, width)
        self.register_buffer("pos", token_pos_embed(width, num_tokens), persistent=False)  # (L, W)
        self.transformer = Transformer(width, depth, heads)
        self.pool = nn.Linear(num_tokens * width, width) if pool == "slots" else None

    def token_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, L, Dt) -> the ViT's output tokens before pooling, (B*T, L, W)."""
        if tokens.shape[-2:] != (self.num_tokens, self.token_dim):
            raise ValueError(f"FlatViTEncoder expects tokens (..., {self.num_tokens}, {self.token_dim}), "
                            f"got {tuple(tokens.shape)}; match num_tokens/token_dim to the MAE")
        x = self.proj(tokens.reshape(-1, self.num_tokens, self.token_dim)) + self.pos  # (B*T, L, W)
        return self.transformer(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, L, Dt) -> (B, T, E): E = W (mean, slots) or L * W (attend)."""
        x = self.token_features(tokens)  # (B*T, L, W)
        if self.pool is not None:  # slots
            x = self.pool(x.flatten(1))  # (B*T, W)
        elif self.embed_tokens:  # attend
            x = x.flatten(1)  # (B*T, L*W)
        else:  # mean
            x = x.mean(dim=1)  # (B*T, W)
        return x.reshape(*tokens.shape[:-2], self.out_dim)  # (B, T, E)


DECODER_STATES = ("token", "broadcast", "slots")


class TokenDecoder(nn.Module):
    """MWM's world-model decoder: the model state as one token, L mask tokens, ViT, linear.

    The feature (B, T, F) is projected to one width-W token; a learned mask token plus
    the fixed position embedding fills the L target slots; after the transformer the L
    slots are mapped to ``token_dim``: (B, T, L, token_dim).

    ``state="broadcast"`` (not in the paper) adds the projected state to every slot
    instead of giving it a token of its own, as a spatial broadcast decoder does
    (Watters et al., 2019): each slot's MLP then sees its position and the whole state
    together, rather than the state only through attention to one token.

    ``state="slots"`` (not in the paper) gives every slot its own linear map of the state
    (one (F, L * W) projection): slot i reads W_i feat, so where an object is drawn can
    be a linear function of the state, as in a dense or transposed-conv decoder, rather
    than a product of the state and the slot's position that attention and the MLP must
    learn. It costs F * L * W weights (128 x 65 x 32 = 266k at the CPU size).
    """

    def __init__(self, feat_dim: int, token_dim: int = 256, num_tokens: int = 65, width: int = 128,
                 depth: int = 2, heads: int = 4, state: str = "token"):
        super().__init__()
        if state not in DECODER_STATES:
            raise ValueError(f"decoder state {state!r} is not one of {DECODER_STATES}; set wm.dec_state")
        self.state = state
        self.num_tokens = num_tokens
        self.token_dim = token_dim
        self.proj = nn.Linear(feat_dim, width * (num_tokens if state == "slots" else 1))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.mask_token, std=0.02)  # MAE's mask-token init
        self.register_buffer("pos", token_pos_embed(width, num_tokens), persistent=False)  # (L, W)
        self.transformer = Transformer(width, depth, heads)
        self.head = nn.Linear(width, token_dim)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (B, T, L, token_dim)."""
        lead = feat.shape[:-1]
        state = self.proj(feat.reshape(-1, feat.shape[-1])).unflatten(-1, (-1, self.pos.shape[-1]))  # (B*T, 1 or L, W)
        slots = (self.mask_token + self.pos).expand(state.shape[0], -1, -1)  # (B*T, L, W)
        if self.state in ("broadcast", "slots"):
            x = self.transformer(slots + state)  # (B*T, L, W)
        else:
            x = self.transformer(torch.cat([state, slots], dim=1))[:, 1:]  # (B*T, L, W)
        return self.head(x).reshape(*lead, self.num_tokens, self.token_dim)  # (B, T, L, Dt)

    channel_dim = -1  # of the target (B, T, L, D): change weights are per token (wm.recon_weight)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Latent reconstruction loss (B, T) against the stop-gradient MAE tokens; ``weight``
        (B, T, L) per token or None (uniform)."""
        return latent_recon_loss(pred, target, weight)


def rssm_feat_dim(rssm: Mapping[str, object] | None = None) -> int:
    """Feature size Dd + S*K of an RSSM built from these kwargs (defaults filled in)."""
    defaults = {name: p.default for name, p in inspect.signature(RSSM).parameters.items()}
    kwargs = {**defaults, **(rssm or {})}
    return int(kwargs["deter"]) + int(kwargs["stoch"]) * int(kwargs["classes"])


class WorldModel(nn.Module):
    """Encoder, RSSM, decoder, reward head and (optionally) discount head.

    Args:
        encoder: inputs (B, T, ...) -> (B, T, embed_dim).
        decoder: feat (B, T, F) -> prediction of inputs, with ``loss(pred, inputs) -> (B, T)``.
        embed_dim: E, the encoder's output size.
        action_dim: A.
        rssm: keyword arguments of :class:`mwm.rssm.RSSM` (deter, hidden, stoch, ...).
        head_layers, head_units: reward / discount MLPs (MWM: 4 x 512).
        reward_transform: "symlog" (MWM), "tanh" (DreamerV2 Atari) or "none".
        discount_head: learn the continuation flag (Atari) or assume episodes never end.
        head_norm: LayerNorm in the head MLPs (official MWM and DreamerV2: none).
        kl_balance, kl_free: see :func:`mwm.losses.dynamics.kl_balance_loss`.
        kl_scale, recon_scale, reward_scale, discount_scale: the weights of the loss terms
            (:meth:`loss`); the discount weight applies only with ``discount_head``.
        recon_weight: "uniform" (the paper) or "change": the reconstruction loss weighs each
            token / pixel by how much it changed since the previous frame
            (:func:`mwm.losses.dynamics.change_weights`, with ``recon_change_mix``).
            Not in MWM or DreamerV2; off by default.
        embed_reward_scale: weight of a reward head on the encoder's output
            (:func:`mwm.losses.dynamics.embed_reward_loss`); 0 (default) builds no head.
            Not in MWM or DreamerV2.
        prior_reward_scale: weight of the reward head's loss on the prior's features
            (:func:`mwm.losses.dynamics.prior_reward_loss`); 0 (default) is off. Not in MWM
            or DreamerV2.

    Defaults are those of configs/defaults.yaml (tests/test_config_schema.py checks it).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, embed_dim: int, action_dim: int,
                 rssm: Mapping[str, object] | None = None, head_layers: int = 4, head_units: int = 512,
                 reward_transform: str = "symlog", discount_head: bool = False, head_norm: bool = False,
                 kl_balance: float = 0.8, kl_free: float = 0.01, kl_scale: float = 1.0, recon_scale: float = 1.0,
                 reward_scale: float = 1.0, discount_scale: float = 1.0, recon_weight: str = "uniform",
                 recon_change_mix: float = 0.9, embed_reward_scale: float = 0.0,
                 prior_reward_scale: float = 0.0):
        super().__init__()
        if not callable(getattr(decoder, "loss", None)):
            raise ValueError(f"decoder {type(decoder).__name__} has no loss(pred, target) method; "
                            "give it one returning a (B, T) reconstruction loss")
        if recon_weight not in RECON_WEIGHTS:
            raise ValueError(f"recon_weight must be one of {RECON_WEIGHTS}, got {recon_weight!r}")
        if recon_weight == "change" and not isinstance(getattr(decoder, "channel_dim", None), int):
            raise ValueError(f"recon_weight 'change' needs a decoder with channel_dim and loss(pred, target, "
                            f"weight); {type(decoder).__name__} has none")
        if not 0.0 <= recon_change_mix <= 1.0:
            raise ValueError(f"recon_change_mix must be in [0, 1], got {recon_change_mix}")
        rssm = dict(rssm or {})
        # The embedding's size and layout come from the encoder, not from the rssm options.
        allowed = set(inspect.signature(RSSM).parameters) - {"embed_dim", "action_dim", "embed_tokens", "embed_heads"}
        if set(rssm) - allowed:
            raise ValueError(f"unknown RSSM options {sorted(set(rssm) - allowed)}; use {sorted(allowed)}")
        self.encoder = encoder
        self.decoder = decoder
        self.embed_dim = embed_dim
        # The embedding's layout is the encoder's: one vector, or a token set (FlatViTEncoder's "attend").
        tokens = getattr(encoder, "embed_tokens", 0)
        layout = {"embed_tokens": tokens, "embed_heads": encoder.heads} if tokens else {}
        self.rssm = RSSM(embed_dim, action_dim, **layout, **rssm)
        feat_dim = self.rssm.feat_dim
        self.reward_transform = reward_transform
        self.reward_head = MSEHead(feat_dim, head_layers, head_units, reward_transform, norm=head_norm)
        self.discount_head = (BernoulliHead(feat_dim, head_layers, head_units, norm=head_norm)
                              if discount_head else None)
        self.kl_balance = kl_balance
        self.kl_free = kl_free
        self.recon_weight = recon_weight
        self.recon_change_mix = float(recon_change_mix)
        self.loss_scales = {"kl": float(kl_scale), "recon": float(recon_scale), "reward": float(reward_scale)}
        if discount_head:
            self.loss_scales["discount"] = float(discount_scale)
        # A reward head on the encoder's output (B, T, E), off (None) at scale 0.
        self.embed_reward_head = (MSEHead(embed_dim, head_layers, head_units, reward_transform, norm=head_norm)
                                  if embed_reward_scale > 0 else None)
        if self.embed_reward_head is not None:
            self.loss_scales["embed_reward"] = float(embed_reward_scale)
        if prior_reward_scale < 0:
            raise ValueError(f"prior_reward_scale must be >= 0, got {prior_reward_scale}")
        if prior_reward_scale > 0:
            self.loss_scales["prior_reward"] = float(prior_reward_scale)

    @property
    def feat_dim(self) -> int:
        """F, the size of the RSSM feature the heads and the actor-critic read."""
        return self.rssm.feat_dim

    def feature(self, state: State) -> torch.Tensor:
        """State (..., ...) -> feature (..., F)."""
        return self.rssm.feature(state)

    def losses(self, inputs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
               is_first: torch.Tensor, is_terminal: torch.Tensor,
               ) -> tuple[dict[str, torch.Tensor], State, State]:
        """Unreduced losses, each (B, T), with the posterior and prior states (B, T, ...)."""
        embed = self.encoder(inputs)  # (B, T, E)
        batch, steps = reward.shape
        assert embed.shape == (batch, steps, self.embed_dim), (
            f"encoder returned {tuple(embed.shape)}, expected {(batch, steps, self.embed_dim)}")
        post, prior = self.rssm.observe(embed, action, is_first)
        feat = self.feature(post)  # (B, T, F)
        kl, _ = kl_balance_loss(post["logits"], prior["logits"], self.kl_balance, self.kl_free)
        recon_args = ()
        if self.recon_weight == "change":
            recon_args = (change_weights(inputs, is_first, self.recon_change_mix, self.decoder.channel_dim),)
        losses = {
            "kl": kl,
            "recon": self.decoder.loss(self.decoder(feat), inputs, *recon_args),
            "reward": reward_loss(self.reward_head(feat), reward, self.reward_transform),
        }
        if self.discount_head is not None:
            losses["discount"] = discount_loss(self.discount_head(feat), is_terminal)
        if self.embed_reward_head is not None:
            losses["embed_reward"] = embed_reward_loss(self.embed_reward_head(embed), reward, self.reward_transform)
        if "prior_reward" in self.loss_scales:  # the same head on the prior's features (B, T, F)
            losses["prior_reward"] = prior_reward_loss(self.reward_head(self.feature(prior)), reward,
                                                       self.reward_transform)
        return losses, post, prior

    def loss(self, inputs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
             is_first: torch.Tensor, is_terminal: torch.Tensor,
             ) -> tuple[torch.Tensor, State, dict[str, torch.Tensor]]:
        """The scaled world-model loss on a batch of sequences.

        Args:
            inputs: (B, T, ...) observations; also the reconstruction target (MWM: the
                stop-gradient MAE tokens; DreamerV2: preprocessed images).
            action: (B, T, A) the action that led to each step.
            reward: (B, T) reward received on entering each step.
            is_first, is_terminal: (B, T) episode flags.

        Returns:
            total (scalar) = sum_k scale_k * mean(loss_k), the posterior states (B, T, ...),
            and a dict of detached scalar metrics.
        """
        losses, post, prior = self.losses(inputs, action, reward, is_first, is_terminal)
        total = sum(self.loss_scales[name] * value.mean() for name, value in losses.items())
        metrics = {f"{name}_loss": value.detach().mean() for name, value in losses.items()}
        with torch.no_grad():
            metrics["kl"] = categorical_kl(post["logits"], prior["logits"]).mean()
            metrics["post_entropy"] = OneHotCategorical(post["logits"]).entropy().sum(-1).mean()
            metrics["prior_entropy"] = OneHotCategorical(prior["logits"]).entropy().sum(-1).mean()
        return total, post, metrics

    def imagine(self, policy_fn: Callable[[State], torch.Tensor], start_state: State,
                horizon: int) -> tuple[State, torch.Tensor]:
        """States (Hz+1, N, ...) and actions (Hz, N, A) from ``start_state`` (N, ...)."""
        return self.rssm.imagine(policy_fn, start_state, horizon)

    def reward(self, feat: torch.Tensor) -> torch.Tensor:
        """Predicted reward (...) in the agent's units (symexp of the head for symlog)."""
        return self.reward_head.mean(feat)

    def discount(self, feat: torch.Tensor) -> torch.Tensor:
        """Predicted probability that the episode continues (...); ones without a discount head."""
        if self.discount_head is None:
            return torch.ones(feat.shape[:-1], dtype=feat.dtype, device=feat.device)
        return self.discount_head.dist(feat).mean

    @torch.no_grad()
    def decode_open_loop(self, inputs: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor,
                         context: int) -> torch.Tensor:
        """Decode ``context`` observed steps, then the rest imagined with the recorded actions.

        DreamerV2's open-loop video prediction: steps [0, context) come from the
        posterior, steps [context, T) from the prior driven by ``action[:, context:]``
        (``is_first`` there is ignored). Returns decoder outputs (B, T, ...).
        """
        steps = inputs.shape[1]
        if not 0 < context <= steps:
            raise ValueError(f"open-loop context {context} must be in [1, {steps}] (the sequence length)")
        embed = self.encoder(inputs[:, :context])  # (B, k, E)
        post, _ = self.rssm.observe(embed, action[:, :context], is_first[:, :context])
        feats = [self.feature(post)]  # (B, k, F)
        if context < steps:
            last = {key: value[:, -1] for key, value in post.items()}  # (B, ...)
            prior = self.rssm.rollout(last, action[:, context:])  # (B, T - k, ...)
            feats.append(self.feature(prior))
        return self.decoder(torch.cat(feats, dim=1))  # (B, T, ...)

