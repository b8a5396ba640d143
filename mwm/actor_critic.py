"""Actor-critic trained in the world model's imagination (DreamerV2, Hafner et al., 2021, Sec. 2).

From every posterior state of a training batch the actor imagines ``horizon`` steps
with the RSSM prior; the world model's heads give rewards and continuation
probabilities; lambda-returns bootstrapped with the slow critic are the targets.

Indexing of an imagined trajectory (time-major, N start states):

    states  s_0 .. s_Hz     (Hz+1, N)   s_0 = the posterior start state
    actions a_0 .. a_Hz-1   (Hz, N, A)  a_t ~ pi(. | s_t) leads to s_{t+1}
    reward  r_t = reward(s_{t+1}),  discount gamma_t = gamma * continue(s_{t+1})   (Hz, N)
    returns R_t, t = 0 .. Hz-1, from :func:`mwm.losses.behavior.lambda_returns`
    weight  w_t = c_0 * prod_{i=1..t} gamma * c_i  (stop-gradient; c_0 = 1 - is_terminal of s_0)

The weight is DreamerV2's cumulative discount: steps after a predicted episode end
(and the whole trajectory of a terminal start state) count less or not at all.

Return normalisation (``return_norm=True``, off by default; DreamerV3, Hafner et al.,
2023, Sec. 3): returns and advantages are divided by ``max(1, S)`` where S is an
exponential moving average (decay 0.99) of the spread between the 95th and 5th
percentile of the batch's lambda-returns. This makes the entropy scale independent of
the reward scale; large returns are scaled down, small returns are never scaled up.
"""

import copy

import torch
from torch import nn

from mwm import distributed
from mwm.heads import ActorHead, MSEHead
from mwm.losses.behavior import (actor_entropy_loss, critic_loss, dynamics_actor_loss, lambda_returns,
                                 reinforce_actor_loss)
from mwm.rssm import State

ACTOR_GRADS = ("auto", "reinforce", "dynamics")
ACT_MODES = ("train", "eval")
# DreamerV3's return normalisation: percentiles and EMA decay of their spread.
RETURN_PERCENTILES = (0.05, 0.95)
RETURN_NORM_DECAY = 0.99


class ActorCritic(nn.Module):
    """Actor, critic and slow (target) critic over RSSM features.

    Args:
        feat_dim: F, the world model's feature size.
        action_dim: A.
        discrete: one-hot categorical actor (Atari) or truncated normal in [-1, 1] (DMC).
        layers, units: MLP sizes of actor and critic (MWM: 4 x 512).
        horizon: Hz, imagination length (15).
        discount: gamma (MWM 0.99, DreamerV2 Atari 0.999).
        lam: lambda of the returns (0.95).
        entropy: eta, actor entropy scale (MWM 1e-4, DreamerV2 Atari 1e-3).
        actor_grad: "reinforce", "dynamics", or "auto" (reinforce if discrete, else dynamics).
        slow_critic_every: hard-copy the critic into the slow critic every this many updates.
        return_norm: DreamerV3-style percentile return scaling (see module docstring).
        min_std: smallest std of the continuous actor (0.1).
        critic_transform: target squashing of the critic, "symlog" or "none" (DreamerV2).
        norm: LayerNorm in the actor and critic MLPs (official MWM and DreamerV2: none).
    """

    def __init__(self, feat_dim: int, action_dim: int, discrete: bool, layers: int = 4, units: int = 512,
                 horizon: int = 15, discount: float = 0.99, lam: float = 0.95, entropy: float = 1e-4,
                 actor_grad: str = "auto", slow_critic_every: int = 100, return_norm: bool = False,
                 min_std: float = 0.1, critic_transform: str = "symlog", norm: bool = False):
        super().__init__()
        if actor_grad not in ACTOR_GRADS:
            raise ValueError(f"unknown actor_grad '{actor_grad}': use one of {', '.join(ACTOR_GRADS)}")
        if slow_critic_every < 1:
            raise ValueError(f"slow_critic_every must be at least 1, got {slow_critic_every}")
        if horizon < 1:
            raise ValueError(f"imagination horizon must be at least 1, got {horizon}")
        self.discrete = discrete
        self.horizon = horizon
        self.discount = discount
        self.lam = lam
        self.entropy = entropy
        self.actor_grad = ("reinforce" if discrete else "dynamics") if actor_grad == "auto" else actor_grad
        self.slow_critic_every = slow_critic_every
        self.return_norm = return_norm
        self.actor = ActorHead(feat_dim, action_dim, discrete, layers, units, min_std=min_std, norm=norm)
        self.critic = MSEHead(feat_dim, layers, units, critic_transform, norm=norm)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.register_buffer("return_spread", torch.zeros(()))
        self._updates = 0

    def get_extra_state(self) -> dict[str, int]:
        """The slow-critic update counter travels with ``state_dict``."""
        return {"updates": self._updates}

    def set_extra_state(self, state: dict[str, int]) -> None:
        """Restore the slow-critic update counter."""
        self._updates = int(state["updates"])

    def update_slow_critic(self) -> bool:
        """Count one update; hard-copy critic -> slow critic on updates 0, N, 2N, ... Returns if copied."""
        copied = self._updates % self.slow_critic_every == 0
        if copied:
            self.slow_critic.load_state_dict(self.critic.state_dict())
        self._updates += 1
        return copied

    @torch.no_grad()
    def act(self, feat: torch.Tensor, mode: str = "train") -> torch.Tensor:
        """Action (..., A) for features (..., F): a sample ("train") or the mode ("eval")."""
        if mode not in ACT_MODES:
            raise ValueError(f"unknown act mode '{mode}': use one of {', '.join(ACT_MODES)}")
        dist = self.actor(feat)
        return dist.sample() if mode == "train" else dist.mode()

    def _return_scale(self, returns: torch.Tensor) -> torch.Tensor:
        """max(1, EMA of the 5-95 percentile spread); updates the EMA. 1 when normalisation is off."""
        if not self.return_norm:
            return torch.ones((), dtype=returns.dtype, device=returns.device)
        flat = distributed.gather(returns.detach().flatten().float())  # every rank's returns (torchrun)
        low, high = (torch.quantile(flat, q) for q in RETURN_PERCENTILES)  # float q: no host sync
        self.return_spread.mul_(RETURN_NORM_DECAY).add_((1.0 - RETURN_NORM_DECAY) * (high - low))
        return self.return_spread.clamp_min(1.0)

    def imagine(self, world_model: nn.Module, start: State) -> tuple[torch.Tensor, torch.Tensor]:
        """Imagine Hz steps from ``start`` (N, ...) -> features (Hz+1, N, F), actions (Hz, N, A)."""
        def policy(state: State) -> torch.Tensor:
            return self.actor(world_model.feature(state).detach()).sample()  # (N, A)

        states, actions = world_model.imagine(policy, start, self.horizon)
        return world_model.feature(states), actions  # (Hz+1, N, F), (Hz, N, A)

    def loss(self, world_model: nn.Module, start_state: State,
             start_is_terminal: torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Actor and critic losses on trajectories imagined from posterior states.

        Args:
            world_model: provides ``imagine``, ``feature``, ``reward`` and ``discount``.
            start_state: posterior states, (N, ...) or (B, T, ...) (flattened here); detached.
            start_is_terminal: optional (N,) or (B, T) flags; terminal starts get weight 0.

        Returns:
            actor loss (scalar), critic loss (scalar), dict of detached scalar metrics.
            The actor loss carries gradients into the actor only through its own
            parameters and, for dynamics gradients, through the world model (whose
            parameters the caller should not step with this loss).
        """
        lead = start_state["deter"].dim() - 1
        start = {key: value.detach().flatten(0, lead - 1) for key, value in start_state.items()}  # (N, ...)
        dynamics = self.actor_grad == "dynamics"
        with torch.set_grad_enabled(dynamics and torch.is_grad_enabled()):
            feat, actions = self.imagine(world_model, start)  # (Hz+1, N, F), (Hz, N, A)
            reward = world_model.reward(feat[1:])  # (Hz, N)
            cont = world_model.discount(feat[1:])  # (Hz, N)
            value = self.slow_critic.mean(feat)  # (Hz+1, N)
            returns = lambda_returns(reward, value, self.discount * cont, self.lam)  # (Hz, N)
        cont0 = torch.ones_like(cont[0])  # (N,)
        if start_is_terminal is not None:
            cont0 = 1.0 - start_is_terminal.detach().flatten().to(cont.dtype)
        weight = torch.cumprod(torch.cat([cont0[None], self.discount * cont[:-1]], dim=0), dim=0).detach()
        scale = self._return_scale(returns)

        dist = self.actor(feat[:-1].detach())  # over (Hz, N, A)
        if dynamics:
            objective = dynamics_actor_loss(returns / scale)
        else:
            advantage = (returns - value[:-1]) / scale  # (Hz, N)
            objective = reinforce_actor_loss(dist.log_prob(actions.detach()), advantage)
        ent = dist.entropy()  # (Hz, N)
        actor_loss = (weight * (objective + actor_entropy_loss(ent, self.entropy))).mean()

        value_pred = self.critic(feat[:-1].detach())  # (Hz, N)
        value_loss = (weight * critic_loss(value_pred, returns, self.critic.transform)).mean()

        metrics = {
            "actor_loss": actor_loss.detach(),
            "critic_loss": value_loss.detach(),
            "imag_reward": reward.detach().mean(),
            "imag_return": returns.detach().mean(),
            "imag_value": value.detach().mean(),
            "actor_entropy": ent.detach().mean(),
            "imag_weight": weight.mean(),
            "return_scale": scale.detach(),
        }
        return actor_loss, value_loss, metrics
