"""CURL's losses as pure functions returning unreduced (B,) tensors; the learners weight and sum them.

References: CURL (Laskin, Srinivas and Abbeel, 2020); C51 (Bellemare, Dabney and Munos,
2017); Rainbow (Hessel et al., 2018); SAC (Haarnoja et al., 2018, "Soft Actor-Critic
Algorithms and Applications", arXiv:1812.05905).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_logits(anchor: torch.Tensor, positive: torch.Tensor, weight: torch.Tensor,
                       scale: float = 1.0) -> torch.Tensor:
    """Bilinear similarities ``logits_ij = scale * (q_i^T W k_j - max_j' q_i^T W k_j')``, (B, B).

    CURL Sec. 4.4: sim(q, k) = q^T W k with a learned W; row i's positive is key i, the
    other keys of the batch are its negatives. Subtracting each row's max changes no
    softmax and keeps exp() finite. ``scale`` is 1 in CURL's DMC code and 0.1 in its
    Atari code. anchor (B, D) queries, positive (B, D) keys, weight (D, D).
    """
    logits = anchor @ weight @ positive.T  # (B, B)
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    return scale * logits


def info_nce_loss(logits: torch.Tensor) -> torch.Tensor:
    """InfoNCE with positives on the diagonal: ``-log softmax(logits_i)_i``, (B,).

    CURL eq. 1 (van den Oord et al., 2018):
        L_q = -log exp(q^T W k+) / (exp(q^T W k+) + sum_i exp(q^T W k_i)).
    """
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels, reduction="none")


def categorical_projection(next_probs: torch.Tensor, returns: torch.Tensor, discounts: torch.Tensor,
                           support: torch.Tensor) -> torch.Tensor:
    """Project ``R + d z`` onto the fixed support ``z``: the C51 target distribution m, (B, atoms).

    C51 Algorithm 1: each atom z_j moves to Tz_j = clip(R + d z_j, v_min, v_max), at
    b_j = (Tz_j - v_min) / dz between atoms l = floor(b_j) and u = ceil(b_j); its
    probability p_j is split as m_l += p_j (u - b_j), m_u += p_j (b_j - l), all of it
    to l when b_j is an atom. ``d`` is gamma^n, or 0 after a terminal state.
    next_probs (B, atoms) of the target action, returns (B,), discounts (B,), support (atoms,).
    """
    atoms = support.shape[0]
    v_min, v_max = float(support[0]), float(support[-1])
    delta = (v_max - v_min) / (atoms - 1)
    target_z = (returns[:, None] + discounts[:, None] * support[None, :]).clamp(v_min, v_max)  # (B, atoms)
    b = (target_z - v_min) / delta
    lower, upper = b.floor().long().clamp(0, atoms - 1), b.ceil().long().clamp(0, atoms - 1)
    on_atom = lower == upper
    lower_mass = torch.where(on_atom, next_probs, next_probs * (upper.to(b) - b))
    upper_mass = torch.where(on_atom, torch.zeros_like(next_probs), next_probs * (b - lower.to(b)))
    target = torch.zeros_like(next_probs)
    target.scatter_add_(1, lower, lower_mass)
    target.scatter_add_(1, upper, upper_mass)
    return target  # (B, atoms)


def c51_loss(log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``-sum_j m_j log p_j(s_t, a_t)`` of the online distribution to the target, (B,).

    C51 (Bellemare et al., 2017), eq. 7: minimising KL(m || p) equals minimising this
    cross-entropy; Rainbow also uses it (per sample) as the replay priority.
    log_probs (B, atoms) of the taken action, target (B, atoms) from :func:`categorical_projection`.
    """
    return -(target.detach() * log_probs).sum(-1)


def sac_critic_target(reward: torch.Tensor, discount: torch.Tensor, next_q1: torch.Tensor,
                      next_q2: torch.Tensor, next_log_pi: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Soft Bellman target ``y = r + d (min(Q'_1, Q'_2)(s', a') - alpha log pi(a'|s'))``, a' ~ pi(s'), (B,).

    SAC (Haarnoja et al., 2018b) eqs. 3 and 5 with clipped double Q; ``d`` is gamma (0.99
    in CURL) or 0 after a terminal state. Q' are the EMA target critics.
    """
    soft_value = torch.min(next_q1, next_q2) - alpha * next_log_pi
    return (reward + discount * soft_value).detach()


def sac_critic_loss(q1: torch.Tensor, q2: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(Q_1(s, a) - y)^2 + (Q_2(s, a) - y)^2``, (B,): SAC eq. 5 for both critics (CURL's code sums them)."""
    return (q1 - target).pow(2) + (q2 - target).pow(2)


def sac_actor_loss(log_pi: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``alpha log pi(a|s) - min(Q_1, Q_2)(s, a)``, a ~ pi(s) reparameterised, (B,): SAC eq. 7."""
    return alpha.detach() * log_pi - torch.min(q1, q2)


def sac_temperature_loss(log_alpha: torch.Tensor, log_pi: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """``alpha (-log pi(a|s) - H_target)``, (B,): SAC eq. 18, written with alpha = exp(log_alpha)
    as in CURL's code; the target entropy is -|A|."""
    return log_alpha.exp() * (-log_pi - target_entropy).detach()
