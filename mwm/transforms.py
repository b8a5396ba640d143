"""Elementwise value transforms shared by the losses and heads.

``symlog`` squashes targets of unknown scale (rewards, values) before a squared error;
``symexp`` is its inverse, applied to a head's prediction to read it in env units.
DreamerV3 (Hafner et al., 2023), eq. 9: symlog(x) = sign(x) * ln(|x| + 1).
"""

import torch


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|); identity near 0, logarithmic for large |x|."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * (exp(|x|) - 1), the inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(torch.abs(x))
