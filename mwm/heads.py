"""MLPs and the prediction heads that read the RSSM feature (DreamerV2, Sec. 2 and 3).

- :class:`MLP`: ``layers`` x (Linear -> LayerNorm -> ELU) then a linear output, as
  DreamerV2's dense nets (LayerNorm on, ELU).
- :class:`MSEHead`: a scalar trained by squared error in a squashed space (reward,
  value); :meth:`MSEHead.mean` reads the prediction back in env units.
- :class:`BernoulliHead`: the probability that the episode continues (discount head).
- :class:`ActorHead`: one-hot categorical (discrete) or truncated normal in [-1, 1]
  (continuous), parameterised as DreamerV2's ``DistLayer``.

Squashing of targets: ``squash(x, name)`` maps a target into the space the head
predicts in, ``unsquash`` maps a prediction back:

| name      | squash             | unsquash   | used by                                   |
|-----------|--------------------|------------|-------------------------------------------|
| "symlog"  | symlog(x)          | symexp(y)  | MWM reward and critic (DreamerV3, eq. 9)  |
| "tanh"    | tanh(x)            | y          | DreamerV2 Atari: the agent optimises the  |
|           |                    |            | tanh-squashed reward itself               |
| "none"    | x                  | y          | plain MSE                                 |
"""

import torch
from torch import nn

from mwm.distributions import Bernoulli, OneHotCategorical, TruncatedNormal
from mwm.transforms import symexp, symlog

TRANSFORMS = ("symlog", "tanh", "none")
ACTIVATIONS = ("elu", "relu", "silu", "tanh")


def check_transform(name: str) -> str:
    """Return ``name`` if it is a known target transform, else raise ValueError."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown target transform '{name}': use one of {', '.join(TRANSFORMS)}")
    return name


def squash(x: torch.Tensor, name: str) -> torch.Tensor:
    """Map a target into the space a head predicts in (see the module table)."""
    if name == "symlog":
        return symlog(x)
    if name == "tanh":
        return torch.tanh(x)
    return x


def unsquash(y: torch.Tensor, name: str) -> torch.Tensor:
    """Map a head's prediction back to the units the agent optimises."""
    if name == "symlog":
        return symexp(y)
    return y


def make_activation(name: str) -> nn.Module:
    """An activation module by name (DreamerV2 default: elu)."""
    layers = {"elu": nn.ELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
    if name not in layers:
        raise ValueError(f"unknown activation '{name}': use one of {', '.join(ACTIVATIONS)}")
    return layers[name]()


class MLP(nn.Module):
    """``layers`` hidden blocks (Linear -> [LayerNorm] -> act) and a linear output.

    With ``norm`` the hidden linears have no bias (the LayerNorm's bias replaces it),
    as DreamerV2 does. ``layers=0`` is a single linear map.
    """

    def __init__(self, in_dim: int, out_dim: int, layers: int, units: int, act: str = "elu",
                 norm: bool = True):
        super().__init__()
        blocks = []
        width = in_dim
        for _ in range(layers):
            blocks.append(nn.Linear(width, units, bias=not norm))
            if norm:
                blocks.append(nn.LayerNorm(units))
            blocks.append(make_activation(act))
            width = units
        blocks.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        return self.net(x)


class MSEHead(nn.Module):
    """A scalar regressed with squared error on ``squash(target, transform)``.

    ``forward`` returns the raw prediction (in squashed space) for the loss;
    ``mean`` returns ``unsquash(forward(x))`` for imagination and acting.
    """

    def __init__(self, in_dim: int, layers: int, units: int, transform: str = "symlog",
                 act: str = "elu", norm: bool = True):
        super().__init__()
        self.transform = check_transform(transform)
        self.net = MLP(in_dim, 1, layers, units, act, norm)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """(..., F) -> (...) prediction in squashed space."""
        return self.net(feat).squeeze(-1)

    def mean(self, feat: torch.Tensor) -> torch.Tensor:
        """(..., F) -> (...) prediction in the agent's units."""
        return unsquash(self(feat), self.transform)


class BernoulliHead(nn.Module):
    """Continuation probability (1 - is_terminal), DreamerV2's discount head."""

    def __init__(self, in_dim: int, layers: int, units: int, act: str = "elu", norm: bool = True):
        super().__init__()
        self.net = MLP(in_dim, 1, layers, units, act, norm)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """(..., F) -> (...) logits."""
        return self.net(feat).squeeze(-1)

    def dist(self, feat: torch.Tensor) -> Bernoulli:
        """The Bernoulli over ``continue`` at each step (...)."""
        return Bernoulli(self(feat))


class ActorHead(nn.Module):
    """The policy pi(a | feat).

    Discrete: :class:`OneHotCategorical` over ``action_dim`` actions (optional unimix).
    Continuous: :class:`TruncatedNormal` on [-1, 1] with DreamerV2's parameterisation

        mean = tanh(m),  std = 2 * sigmoid((s + init_std) / 2) + min_std

    so with ``init_std = 0`` (DreamerV2's default) and s near 0 the initial std is
    about 1 + min_std, and the std never falls below ``min_std`` (0.1).
    """

    def __init__(self, in_dim: int, action_dim: int, discrete: bool, layers: int, units: int,
                 min_std: float = 0.1, init_std: float = 0.0, unimix: float = 0.0,
                 act: str = "elu", norm: bool = True):
        super().__init__()
        self.discrete = discrete
        self.min_std = min_std
        self.init_std = init_std
        self.unimix = unimix
        self.action_dim = action_dim
        out_dim = action_dim if discrete else 2 * action_dim
        self.net = MLP(in_dim, out_dim, layers, units, act, norm)

    def forward(self, feat: torch.Tensor) -> OneHotCategorical | TruncatedNormal:
        """(..., F) -> a distribution over (..., A) actions."""
        out = self.net(feat)  # (..., A) or (..., 2A)
        if self.discrete:
            return OneHotCategorical(out, self.unimix)
        mean, std = out.chunk(2, dim=-1)  # (..., A) each
        std = 2.0 * torch.sigmoid((std + self.init_std) / 2.0) + self.min_std
        return TruncatedNormal(torch.tanh(mean), std, -1.0, 1.0)
