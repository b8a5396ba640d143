"""Actor-critic losses in imagination (DreamerV2, Hafner et al., 2021, Sec. 2, eq. 4-6).

Pure functions over imagined trajectories, time-major: one unreduced value per
imagined step, (Hz, N). :class:`mwm.actor_critic.ActorCritic` weights them by the
probability of reaching each step and averages them in one place.
"""

import torch

from mwm.heads import squash


def lambda_returns(reward: torch.Tensor, value: torch.Tensor, discount: torch.Tensor,
                   lam: float) -> torch.Tensor:
    """TD(lambda) targets, DreamerV2 eq. 4, computed backwards from a bootstrap:

        R_Hz = v_Hz
        R_t  = r_t + gamma_t * ((1 - lambda) * v_{t+1} + lambda * R_{t+1}),   t = Hz-1 .. 0

    Here ``reward[t]`` and ``discount[t]`` belong to the transition from imagined state t
    to t+1 (the reward and gamma * continuation predicted at state t+1), and ``value[t]``
    is the critic at state t. lambda = 0.95 in DreamerV2 and MWM.

    Args:
        reward: (Hz, N).
        value: (Hz+1, N), the last row is the bootstrap.
        discount: (Hz, N), gamma times the continuation probability.

    Returns:
        (Hz, N) the returns R_0 .. R_{Hz-1}.
    """
    horizon = reward.shape[0]
    assert value.shape[0] == horizon + 1 and discount.shape == reward.shape, (
        f"expected reward/discount (Hz, N) and value (Hz+1, N), got {tuple(reward.shape)}, "
        f"{tuple(discount.shape)}, {tuple(value.shape)}")
    ret = value[-1]  # (N,)
    returns = []
    for t in reversed(range(horizon)):
        ret = reward[t] + discount[t] * ((1.0 - lam) * value[t + 1] + lam * ret)
        returns.append(ret)
    return torch.stack(returns[::-1], dim=0)  # (Hz, N)


def reinforce_actor_loss(logp: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """REINFORCE with a baseline, DreamerV2 eq. 6 (rho = 1, discrete actions), (Hz, N):

        loss_t = -log pi(a_t | s_t) * sg(R_t - v_slow(s_t))

    Args:
        logp: (Hz, N) log-probability of the imagined actions.
        advantage: (Hz, N) returns minus the slow critic's baseline (stop-gradient here).
    """
    return -logp * advantage.detach()


def dynamics_actor_loss(returns: torch.Tensor) -> torch.Tensor:
    """Dynamics backpropagation, DreamerV2 eq. 6 (rho = 0, continuous actions), (Hz, N):

        loss_t = -R_t

    with gradients flowing from the lambda-returns through the learned dynamics and
    the reparameterised actions into the actor.
    """
    return -returns


def actor_entropy_loss(entropy: torch.Tensor, scale: float) -> torch.Tensor:
    """Entropy regulariser, DreamerV2 eq. 6 (eta term), (Hz, N):

        loss_t = -eta * H[pi(. | s_t)]

    eta = 1e-4 in MWM and DreamerV2 DMC, 1e-3 in DreamerV2 Atari.
    """
    return -scale * entropy


def critic_loss(value_pred: torch.Tensor, target: torch.Tensor, transform: str = "symlog") -> torch.Tensor:
    """Critic regression toward the lambda-returns, DreamerV2 eq. 5, (Hz, N):

        loss_t = (v(s_t) - sg(squash(R_t)))^2

    ``value_pred`` is the critic's output in squashed space (:class:`mwm.heads.MSEHead`);
    ``transform`` "symlog" follows DreamerV3 eq. 9-10, "none" is DreamerV2's plain
    regression (a unit-variance Gaussian: half this squared error plus a constant).
    """
    return (value_pred - squash(target.detach(), transform)) ** 2
