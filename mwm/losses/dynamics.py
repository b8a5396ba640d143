"""World-model losses (DreamerV2, Hafner et al., 2021, eq. 2 and Sec. 2; MWM, Seo et al., 2022).

Pure functions returning one unreduced value per step, (B, T). The world model
scales them against its ``loss_scales`` and averages them in one place
(:meth:`mwm.world_model.WorldModel.loss`).
"""

import torch
import torch.nn.functional as F

from mwm.heads import squash


def categorical_kl(lhs_logits: torch.Tensor, rhs_logits: torch.Tensor) -> torch.Tensor:
    """KL(lhs || rhs) of S independent categoricals, (..., S, K) -> (...), summed over S."""
    lhs = torch.log_softmax(lhs_logits, dim=-1)  # (..., S, K)
    rhs = torch.log_softmax(rhs_logits, dim=-1)
    return (lhs.exp() * (lhs - rhs)).sum(dim=(-2, -1))


def kl_balance_loss(post_logits: torch.Tensor, prior_logits: torch.Tensor, balance: float = 0.8,
                    free: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """KL balancing, DreamerV2 Sec. 2 ("KL balancing") and Algorithm 2:

        loss = balance       * max(free, KL(sg(q) || p))
             + (1 - balance) * max(free, KL(q || sg(p)))

    q is the posterior, p the prior, sg stop-gradient. The first term trains the prior
    toward the representations, the second regularises the posterior toward the prior.
    ``balance`` = 0.8 (DreamerV2 and MWM). Free nats: the floor ``max(free, kl)`` is
    applied to each term separately and per element (b, t), the KL already summed over
    the S latents; this is DreamerV2's ``kl_loss`` with ``free_avg=False`` (its default,
    ``free_avg=True``, floors the batch mean instead). Below the floor a term has no
    gradient. DreamerV2 Atari: free 0; DreamerV2 DMC: 1.0; official MWM (DMC, Meta-world): 0.01.

    Args:
        post_logits: (B, T, S, K) posterior log-probabilities or logits.
        prior_logits: (B, T, S, K) prior log-probabilities or logits.

    Returns:
        loss (B, T) and the detached value KL(q || p) (B, T) for logging.
    """
    train_prior = categorical_kl(post_logits.detach(), prior_logits)  # (B, T)
    train_post = categorical_kl(post_logits, prior_logits.detach())  # (B, T)
    loss = balance * train_prior.clamp_min(free) + (1.0 - balance) * train_post.clamp_min(free)
    return loss, train_post.detach()


def reward_loss(pred: torch.Tensor, reward: torch.Tensor, transform: str = "symlog") -> torch.Tensor:
    """Squared error in squashed space, (B, T):

        loss = (f(h) - squash(r))^2

    ``transform`` "symlog" is MWM's / DreamerV3's symlog MSE (DreamerV3 eq. 9-10);
    "tanh" is DreamerV2 Atari's squashed reward. DreamerV2's reward head is a
    unit-variance Gaussian, whose negative log-likelihood is half this plus a constant.

    Args:
        pred: (B, T) reward head output, already in squashed space.
        reward: (B, T) reward received on entering each step.
    """
    return (pred - squash(reward, transform)) ** 2


def discount_loss(logits: torch.Tensor, is_terminal: torch.Tensor) -> torch.Tensor:
    """Bernoulli negative log-likelihood of continuing, DreamerV2 eq. 2 (discount term), (B, T):

        loss = -log Bernoulli(1 - is_terminal ; sigmoid(logits))

    The head predicts whether the episode continues past step t; the discount factor
    is applied in imagination (:class:`mwm.actor_critic.ActorCritic`), not here.
    DreamerV2 Atari scales this loss by 5.0.
    """
    target = 1.0 - is_terminal.to(logits.dtype)  # (B, T)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def latent_recon_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MWM's latent reconstruction (Seo et al., 2022, Sec. 3.2), (B, T):

        loss = (1 / L) sum_l sum_d (pred_tld - sg(target_tld))^2

    squared error summed over the D channels of each token, averaged over the L tokens
    (the official MWM code's MSE-distribution log-likelihood of the MAE features, up to
    the factor 1/2 and a constant). ``target`` is the stop-gradient MAE tokens.

    Args:
        pred: (B, T, L, D) predicted tokens.
        target: (B, T, L, D) MAE tokens (cls + patches).
    """
    return ((pred - target.detach()) ** 2).sum(dim=-1).mean(dim=-1)


def image_recon_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DreamerV2's image loss, MSE summed over pixels and channels, (B, T):

        loss = sum_{c,h,w} (pred - target)^2

    ``pred`` is the mean of a unit-variance Gaussian (DreamerV2 decoder), so this is
    twice its negative log-likelihood up to a constant.

    Args:
        pred: (B, T, C, H, W) decoded image.
        target: (B, T, C, H, W) preprocessed image (DreamerV2: x / 255 - 0.5).
    """
    return ((pred - target.detach()) ** 2).sum(dim=(-3, -2, -1))
