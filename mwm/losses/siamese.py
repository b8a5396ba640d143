"""SiamMAE's loss: reconstruct the masked future frame of a pair given the unmasked past.

Pure functions returning one unreduced value per frame pair (N,); the model scales and
averages them in one place (:meth:`mwm.siammae.SiameseMaskedAutoencoder.pair_loss`).
"""

import torch

from mwm.losses.representation import mae_pixel_loss


def future_frame_loss(
    pred: torch.Tensor,
    future: torch.Tensor,
    mask: torch.Tensor,
    loss_on: str,
    norm_pix: bool,
) -> torch.Tensor:
    """Per-pair pixel loss on the future frame (N,), SiamMAE (Gupta et al., 2023), Sec. 3:

        x2_hat = Dec(Enc(x2 masked at 0.95) ; cross-attending to Enc(x1))
        l_i    = (1 / P) * sum_p (x2_hat_ip - x2_ip)^2            patch i of the future frame
        loss   = (1 / |S|) * sum_{i in S} l_i

    x1 is the past frame (frame t, unmasked), x2 the future frame (frame t + k). Only
    the future frame is a target; the past frame is context. S is every patch of x2
    (``loss_on="all"``, MWM's official choice, our default) or only its removed
    patches, mask_i = 1 (``loss_on="masked"``, the MAE convention the SiamMAE paper
    follows). ``norm_pix`` standardises each target patch over its pixels (MAE's
    normalised-pixel target). Targets are the standardised pixels of
    :func:`mwm.stem.preprocess`, patchified. The per-patch arithmetic is MAE's
    (:func:`mwm.losses.representation.mae_pixel_loss`), applied to the future frame.

    Args:
        pred: (N, L, P) predicted patches of the future frame, P = p * p * C.
        future: (N, L, P) true patches of the future frame.
        mask: (N, L) the future frame's mask, 0 is keep, 1 is remove.
    """
    return mae_pixel_loss(pred, future, mask, loss_on, norm_pix)  # (N,)
