"""Masked-autoencoder losses: pixel reconstruction and the auxiliary reward prediction.

Pure functions returning one unreduced value per frame (N,); the model scales and
averages them in one place (:meth:`mwm.mae.MaskedAutoencoder.loss`).
"""

import torch

from mwm.transforms import symlog

LOSS_ON = ("all", "masked")

# MAE's norm_pix_loss adds this to the per-patch variance before the square root
# (facebookresearch/mae, models_mae.py, forward_loss).
NORM_PIX_EPS = 1e-6


def normalize_patches(patches: torch.Tensor, eps: float = NORM_PIX_EPS) -> torch.Tensor:
    """Standardise each patch over its own pixels: (x - mean) / sqrt(var + eps), (N, L, P)."""
    mean = patches.mean(dim=-1, keepdim=True)  # (N, L, 1)
    var = patches.var(dim=-1, keepdim=True)  # (N, L, 1), unbiased as in MAE
    return (patches - mean) / (var + eps) ** 0.5


def mae_pixel_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    loss_on: str,
    norm_pix: bool,
) -> torch.Tensor:
    """Per-frame pixel reconstruction loss (N,), MAE (He et al., 2022), Sec. 3:

        l_i = (1 / P) * sum_p (pred_ip - target_ip)^2          mean squared error of patch i
        loss = (1 / |S|) * sum_{i in S} l_i

    with S = all L patches (``loss_on="all"``, the official MWM code: mask-only loss off)
    or S = the removed patches, mask_i = 1 (``loss_on="masked"``, the MAE paper).
    With ``norm_pix`` the target of each patch is first standardised over its pixels
    (MAE's normalised-pixel target; off in official MWM). Targets are the standardised
    pixels of :func:`mwm.stem.preprocess`, patchified.

    Args:
        pred: (N, L, P) predicted patches, P = p * p * C.
        target: (N, L, P) true patches.
        mask: (N, L), 0 is keep, 1 is remove.
    """
    if loss_on not in LOSS_ON:
        raise ValueError(f"unknown MAE loss_on {loss_on!r}; use 'all' (official MWM) or 'masked' (MAE paper)")
    if norm_pix:
        target = normalize_patches(target)
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (N, L)
    if loss_on == "all":
        return per_patch.mean(dim=-1)  # (N,)
    weights = mask.to(per_patch.dtype)  # (N, L)
    return (per_patch * weights).sum(dim=-1) / weights.sum(dim=-1).clamp(min=1.0)  # (N,)


def mae_reward_loss(pred: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """Per-frame reward loss (N,): (pred - symlog(reward))^2.

    MWM (Seo et al., 2022), Sec. 3.2: the autoencoder also predicts the reward from an
    extra decoder token so that its latents keep task-relevant detail; squared error
    against symlog-squashed rewards (official MWM code; DreamerV3 eq. 9 for symlog).
    """
    return (pred - symlog(reward.to(pred.dtype))).pow(2)
