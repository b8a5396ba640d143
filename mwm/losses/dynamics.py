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


# The token width of the official MWM code (its MAE's embed_dim). The token loss is
# written per channel and multiplied by this, so that a preset with narrower tokens
# keeps the paper's balance between reconstruction, KL and reward (see below).
REFERENCE_TOKEN_WIDTH = 256


def latent_recon_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """MWM's latent reconstruction (Seo et al., 2022, Sec. 3.2), (B, T):

        loss = D_ref * (1 / L) sum_l w_tl (1 / D) sum_d (pred_tld - sg(target_tld))^2,   D_ref = 256

    The official MWM code (younggyoseo/MWM, ``agent.py``: ``MSEDist(pred, 1, "sum")``)
    sums the squared error over the D = 256 channels of each token and averages over
    the L tokens and the batch; at D = 256 and w = 1 this is exactly that. The tokens come out of
    a LayerNorm, so each channel has about unit scale whatever D is: a plain sum over
    channels would make the reconstruction term D / 256 times weaker against the KL
    and reward terms in a narrower preset (8x at the tiny preset's D = 32) and change
    the algorithm with the network size. The mean over channels times D_ref keeps the
    balance fixed. ``target`` is the stop-gradient MAE tokens.

    Args:
        pred: (B, T, L, D) predicted tokens.
        target: (B, T, L, D) MAE tokens (cls + patches).
        weight: (B, T, L) per-token weights w (detached here), or None for w = 1 (the paper);
            ``wm.recon_weight: change`` passes :func:`change_weights`.
    """
    error = ((pred - target.detach()) ** 2).mean(dim=-1)  # (B, T, L)
    if weight is not None:
        error = weight.detach() * error
    return REFERENCE_TOKEN_WIDTH * error.mean(dim=-1)


def image_recon_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """DreamerV2's image loss, MSE summed over pixels and channels, (B, T):

        loss = sum_{h,w} w_thw sum_c (pred_tchw - target_tchw)^2

    ``pred`` is the mean of a unit-variance Gaussian (DreamerV2 decoder), so with w = 1
    (the paper) this is twice its negative log-likelihood up to a constant.

    Args:
        pred: (B, T, C, H, W) decoded image.
        target: (B, T, C, H, W) preprocessed image (DreamerV2: x / 255 - 0.5).
        weight: (B, T, H, W) per-pixel weights w (detached here), or None for w = 1;
            ``wm.recon_weight: change`` passes :func:`change_weights`.
    """
    error = ((pred - target.detach()) ** 2).sum(dim=-3)  # (B, T, H, W)
    if weight is not None:
        error = weight.detach() * error
    return error.sum(dim=(-2, -1))


# How the reconstruction loss weighs the elements (tokens, pixels) of a frame (wm.recon_weight):
# uniform, the paper; change, by how much each element changed since the previous frame.
RECON_WEIGHTS = ("uniform", "change")


def change_weights(target: torch.Tensor, is_first: torch.Tensor, mix: float, channel_dim: int) -> torch.Tensor:
    """Per-element weights of the reconstruction loss from the change since the previous frame.

    Not in MWM or DreamerV2: an option of this library (``wm.recon_weight: change``,
    default off). For element n of frame t (a token, or a pixel) with channels c:

        delta_tn = mean_c (x_tcn - x_(t-1)cn)^2
        w_tn     = (1 - mix) + mix * delta_tn / mean_n' delta_tn'

    so the weights of a frame average to 1 (the loss keeps its scale against KL and
    reward), a uniform change gives w = 1, and ``mix`` (``wm.recon_change_mix``, in
    [0, 1]) moves the weight from static background toward what moved; at mix = 1 an
    element that did not change gets no weight. Motivation: on toy_catch the paddle
    (12 x 2 px) is a tiny share of a uniform reconstruction loss and the world model's
    encoder drops it (docs/LEARNING.md, offline study); it and the falling object are
    what changes between frames. Frames without a previous frame in the sequence
    (t = 0, ``is_first``) or with no change at all get w = 1. No gradient flows.

    Args:
        target: (B, T, ...) the reconstruction target, channels at ``channel_dim``
            (tokens (B, T, L, D): -1; images (B, T, C, H, W): -3).
        is_first: (B, T) episode starts.
        mix: the share of the weight that follows the change, in [0, 1].

    Returns:
        (B, T, ...) the target's shape without the channel dimension: (B, T, L) or (B, T, H, W).
    """
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"change-weight mix must be in [0, 1], got {mix}")
    x = target.detach().float()
    delta = ((x[:, 1:] - x[:, :-1]) ** 2).mean(dim=channel_dim)  # (B, T-1, ...)
    delta = torch.cat([torch.zeros_like(delta[:, :1]), delta], dim=1)  # (B, T, ...); step 0 has no previous frame
    elements = tuple(range(2, delta.dim()))
    mean = delta.mean(dim=elements, keepdim=True)  # (B, T, 1, ...)
    ratio = torch.where(mean > 0, delta / mean.clamp_min(torch.finfo(x.dtype).tiny), torch.ones_like(delta))
    first = is_first.bool().reshape(*is_first.shape, *(1,) * len(elements))  # (B, T, 1, ...)
    ratio = torch.where(first, torch.ones_like(ratio), ratio)
    return ((1.0 - mix) + mix * ratio).to(target.dtype)


def embed_reward_loss(pred: torch.Tensor, reward: torch.Tensor, transform: str = "symlog") -> torch.Tensor:
    """Reward predicted from the encoder's output, before the RSSM, (B, T):

        loss = (g(e_t) - squash(r_t))^2,   e_t = encoder(x_t)

    Not in MWM or DreamerV2: an option of this library (``wm.embed_reward_scale``,
    default 0 = off). The equation is :func:`reward_loss`'s, on a separate head ``g``
    reading the encoder embedding e_t of the frame that shows the reward, so that its
    gradient reaches the encoder without passing through the RSSM. Motivation: on
    toy_catch the encoder drops the paddle, which decides a catch from a miss, and the
    RSSM's reward head does not pull it back (docs/LEARNING.md, offline study).

    Args:
        pred: (B, T) output of the embedding's reward head, in squashed space.
        reward: (B, T) reward received on entering each step.
    """
    return reward_loss(pred, reward, transform)


def prior_reward_loss(pred: torch.Tensor, reward: torch.Tensor, transform: str = "symlog") -> torch.Tensor:
    """Reward predicted from the prior's features, as in imagination, (B, T):

        loss = (f(h_t, z'_t) - squash(r_t))^2,   z'_t ~ p(z_t | h_t)

    Not in MWM or DreamerV2: an option of this library (``wm.prior_reward_scale``,
    default 0 = off). The equation is :func:`reward_loss`'s, with the same reward head f,
    but on the prior's sample z'_t in place of the posterior's z_t ~ q(z_t | h_t, x_t):
    the features the actor's imagined rewards come from. Its gradient reaches the
    deterministic state h_t through the GRU, so the reward must be predictable before the
    frame that shows it is read. Motivation: on toy_catch the reward heads trained on the
    posterior read a catch or a miss off the landing frame itself and lose it one step
    into the open loop (docs/LEARNING.md, "imagination keeps what the posterior holds").

    Args:
        pred: (B, T) reward head output on the prior's features, in squashed space.
        reward: (B, T) reward received on entering each step.
    """
    return reward_loss(pred, reward, transform)
