"""Small action and latent distributions with the gradients DreamerV2 needs.

- :class:`OneHotCategorical`: one-hot samples with straight-through gradients
  (Bengio et al., 2013; DreamerV2 Sec. 2, Algorithm 1), optional uniform mix.
- :class:`TruncatedNormal`: a diagonal normal truncated to [low, high], reparameterised
  by inverse-CDF sampling, for continuous actions (DreamerV2 actor, DMC).
- :class:`Bernoulli`: on logits, with soft targets allowed in ``log_prob`` (discount head).

All three reduce over the last (event) axis: ``log_prob`` and ``entropy`` of a
(..., K) distribution are (...). Sampling uses no host synchronisation and no
data-dependent Python branching, so it can run inside a captured CUDA graph.
"""

import math

import torch
import torch.nn.functional as F

# Keeps uniforms away from exactly 0 and 1 before the Gumbel / inverse-CDF transforms.
_UNIFORM_EPS = 1e-6
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _one_hot(index: torch.Tensor, classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(...) integer indices -> (..., classes) one-hot, by comparison (no device-side checks)."""
    return (index[..., None] == torch.arange(classes, device=index.device)).to(dtype)


def _uniform(shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """Uniform samples in (eps, 1 - eps) with ``like``'s dtype and device."""
    u = torch.rand(shape, dtype=like.dtype, device=like.device)
    return u.clamp(_UNIFORM_EPS, 1.0 - _UNIFORM_EPS)


class OneHotCategorical:
    """Categorical over the last axis, sampled as straight-through one-hot vectors.

    ``sample()`` returns ``onehot + probs - sg(probs)``: its value is exactly one-hot,
    its gradient is that of ``probs``. With ``unimix`` > 0 the probabilities are mixed
    with a uniform, ``(1 - unimix) * softmax(logits) + unimix / K`` (DreamerV3, Sec. 3).

    Args:
        logits: (..., K) unnormalised log-probabilities.
        unimix: weight of the uniform mixture, in [0, 1).
    """

    def __init__(self, logits: torch.Tensor, unimix: float = 0.0):
        if unimix > 0.0:
            probs = torch.softmax(logits, dim=-1)
            probs = (1.0 - unimix) * probs + unimix / logits.shape[-1]  # (..., K)
            logits = torch.log(probs)
        self.logits = logits - torch.logsumexp(logits, dim=-1, keepdim=True)  # (..., K) log-probs
        self.probs = torch.exp(self.logits)  # (..., K)

    def _straight_through(self, onehot: torch.Tensor) -> torch.Tensor:
        """One-hot value, gradient of the probabilities."""
        return onehot + self.probs - self.probs.detach()

    def sample(self) -> torch.Tensor:
        """A one-hot sample (..., K) by the Gumbel-max trick, straight-through gradient."""
        gumbel = -torch.log(-torch.log(_uniform(self.logits.shape, self.logits)))  # (..., K)
        index = torch.argmax(self.logits.detach() + gumbel, dim=-1)  # (...)
        onehot = _one_hot(index, self.logits.shape[-1], self.logits.dtype)  # (..., K)
        return self._straight_through(onehot)

    def mode(self) -> torch.Tensor:
        """The most likely class as a one-hot vector (..., K), straight-through gradient."""
        index = torch.argmax(self.logits, dim=-1)  # (...)
        onehot = _one_hot(index, self.logits.shape[-1], self.logits.dtype)  # (..., K)
        return self._straight_through(onehot)

    def log_prob(self, onehot: torch.Tensor) -> torch.Tensor:
        """log p(x) for one-hot (or soft) ``onehot`` (..., K) -> (...)."""
        return (onehot * self.logits).sum(dim=-1)

    def entropy(self) -> torch.Tensor:
        """-sum_k p_k log p_k, (...)."""
        return -(self.probs * self.logits).sum(dim=-1)


class TruncatedNormal:
    """Independent normals N(mean, std) truncated to [low, high], event over the last axis.

    Samples are reparameterised: ``x = mean + std * Phi^-1(Phi(a) + u (Phi(b) - Phi(a)))``
    with ``a = (low - mean) / std``, ``b = (high - mean) / std``, ``u ~ U(0, 1)``, so the
    gradient reaches ``mean`` and ``std``. As in DreamerV2's ``TruncNormalDist``, samples
    are then clipped ``clip`` inside the bounds with a straight-through gradient.
    The means DreamerV2 uses (tanh outputs) lie inside [low, high], so ``Phi(b) - Phi(a)``
    never underflows.

    Args:
        mean: (..., A) location before truncation.
        std: (..., A) positive scale before truncation.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, low: float = -1.0, high: float = 1.0,
                 clip: float = 1e-6):
        self.mean = mean
        self.std = std
        self.low = low
        self.high = high
        self.clip = clip
        self._alpha = (low - mean) / std  # (..., A)
        self._beta = (high - mean) / std  # (..., A)
        self._cdf_alpha = torch.special.ndtr(self._alpha)
        self._mass = (torch.special.ndtr(self._beta) - self._cdf_alpha).clamp_min(1e-12)  # (..., A) Z

    def rsample(self) -> torch.Tensor:
        """A reparameterised sample (..., A) in [low + clip, high - clip]."""
        u = _uniform(self.mean.shape, self.mean)  # (..., A)
        cdf = (self._cdf_alpha + u * self._mass).clamp(_UNIFORM_EPS, 1.0 - _UNIFORM_EPS)
        x = self.mean + self.std * torch.special.ndtri(cdf)  # (..., A)
        clipped = x.clamp(self.low + self.clip, self.high - self.clip)
        return x + (clipped - x).detach()

    def sample(self) -> torch.Tensor:
        """Same as :meth:`rsample` (DreamerV2 samples actions with gradients)."""
        return self.rsample()

    def mode(self) -> torch.Tensor:
        """The most likely value: the mean clipped into [low, high], (..., A)."""
        return self.mean.clamp(self.low, self.high)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the event axis of log phi((x - mean) / std) - log std - log Z, (...)."""
        z = (x - self.mean) / self.std  # (..., A)
        logp = -0.5 * z**2 - _LOG_SQRT_2PI - torch.log(self.std) - torch.log(self._mass)
        return logp.sum(dim=-1)

    def entropy(self) -> torch.Tensor:
        """Closed form, summed over the event axis (...):

            H = log(sqrt(2 pi e) std Z) + (a phi(a) - b phi(b)) / (2 Z)
        """
        pdf_a = torch.exp(-0.5 * self._alpha**2 - _LOG_SQRT_2PI)
        pdf_b = torch.exp(-0.5 * self._beta**2 - _LOG_SQRT_2PI)
        ent = (_LOG_SQRT_2PI + 0.5 + torch.log(self.std) + torch.log(self._mass)
               + (self._alpha * pdf_a - self._beta * pdf_b) / (2.0 * self._mass))
        return ent.sum(dim=-1)


class Bernoulli:
    """Bernoulli on logits (...), e.g. the probability that an episode continues.

    ``log_prob`` accepts soft targets in [0, 1] (binary cross-entropy).
    """

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    @property
    def mean(self) -> torch.Tensor:
        """p = sigmoid(logits), (...)."""
        return torch.sigmoid(self.logits)

    def mode(self) -> torch.Tensor:
        """1 where p > 0.5 else 0, (...)."""
        return (self.logits > 0).to(self.logits.dtype)

    def sample(self) -> torch.Tensor:
        """A 0/1 sample (...), no gradient."""
        return (torch.rand_like(self.logits) < self.mean.detach()).to(self.logits.dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """x log p + (1 - x) log(1 - p), (...)."""
        return -F.binary_cross_entropy_with_logits(self.logits, x, reduction="none")

    def entropy(self) -> torch.Tensor:
        """-p log p - (1 - p) log(1 - p), (...)."""
        return F.binary_cross_entropy_with_logits(self.logits, self.mean, reduction="none")
