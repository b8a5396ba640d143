"""Recurrent state-space model with discrete latents (DreamerV2, Hafner et al., 2021, Sec. 2).

A model state is a dict of tensors with a shared leading batch shape:

| key    | shape        | meaning                                                   |
|--------|--------------|-----------------------------------------------------------|
| deter  | (..., Dd)    | the GRU's deterministic state h_t                         |
| logits | (..., S, K)  | log-probabilities of the S categorical latents (unimix in) |
| stoch  | (..., S, K)  | one-hot sample z_t, straight-through gradients             |

Prior (transition):  h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}]),  z_t ~ p(z_t | h_t).
Posterior (representation): z_t ~ q(z_t | h_t, e_t) with e_t the observation embedding.
The action stored with step t led *to* step t (the step protocol in ARCHITECTURE.md),
so the transition into step t uses ``action[:, t]``.

The per-step functions use static shapes and no branching on tensor values, so a
caller may capture them in a CUDA graph.
"""

from typing import Callable

import torch
from torch import nn

from mwm.distributions import OneHotCategorical
from mwm.heads import MLP, make_activation
from mwm.vit import Attention

State = dict[str, torch.Tensor]


class LayerNormGRUCell(nn.Module):
    """DreamerV2's GRU cell: one linear over [x, h], LayerNorm, update-gate bias -1.

        r, c, u = split(LN(W [x, h]))
        r = sigmoid(r);  c = tanh(r * c);  u = sigmoid(u + update_bias)
        h' = u * c + (1 - u) * h

    The negative update bias makes the cell keep its state early in training.
    """

    def __init__(self, in_dim: int, size: int, norm: bool = True, update_bias: float = -1.0):
        super().__init__()
        self.update_bias = update_bias
        self.linear = nn.Linear(in_dim + size, 3 * size, bias=not norm)
        self.norm = nn.LayerNorm(3 * size) if norm else nn.Identity()

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """x (B, I), h (B, Dd) -> new h (B, Dd)."""
        parts = self.norm(self.linear(torch.cat([x, h], dim=-1)))  # (B, 3 Dd)
        reset, cand, update = parts.chunk(3, dim=-1)  # (B, Dd) each
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update + self.update_bias)
        return update * cand + (1.0 - update) * h


def _dense(in_dim: int, out_dim: int, act: str, norm: bool) -> nn.Sequential:
    """Linear -> [LayerNorm] -> activation."""
    layers = [nn.Linear(in_dim, out_dim, bias=not norm)]
    if norm:
        layers.append(nn.LayerNorm(out_dim))
    layers.append(make_activation(act))
    return nn.Sequential(*layers)


def stack_states(states: list[State], dim: int) -> State:
    """Stack a list of state dicts along a new axis ``dim``."""
    return {key: torch.stack([s[key] for s in states], dim=dim) for key in states[0]}


class RSSM(nn.Module):
    """DreamerV2's RSSM: a LayerNorm GRU and S x K categorical latents.

    Args:
        embed_dim: E, size of the observation embedding.
        action_dim: A, size of the (one-hot or continuous) action.
        deter: Dd, GRU state size (DreamerV2 / MWM: 1024; DreamerV2 Atari: 600).
        hidden: width of the MLP layers around the GRU.
        stoch: S, number of categorical latents (32).
        classes: K, classes per latent (32).
        act, norm: activation and LayerNorm switch of the MLP layers.
        unimix: uniform mixture of the latent categoricals (0 in DreamerV2).
        embed_tokens: 0 (DreamerV2): the embedding is one vector. N > 0 (not in DreamerV2 or
            MWM): it is N tokens of width E / N, flattened, and the posterior reads them by
            cross-attention with one query from h_t (``embed_heads`` heads), beside their
            mean: q(z_t | h_t, attend(h_t, e_t), mean(e_t)).
    """

    def __init__(self, embed_dim: int, action_dim: int, deter: int = 1024, hidden: int = 1024,
                 stoch: int = 32, classes: int = 32, act: str = "elu", norm: bool = True,
                 unimix: float = 0.0, embed_tokens: int = 0, embed_heads: int = 1):
        super().__init__()
        self.deter = deter
        self.stoch = stoch
        self.classes = classes
        self.unimix = unimix
        self.img_in = _dense(stoch * classes + action_dim, hidden, act, norm)
        self.cell = LayerNormGRUCell(hidden, deter, norm)
        self.img_out = MLP(deter, stoch * classes, 1, hidden, act, norm)
        self.embed_tokens = embed_tokens
        post_in = embed_dim
        if embed_tokens:
            if embed_dim % embed_tokens:
                raise ValueError(f"an embedding of {embed_dim} does not split into {embed_tokens} tokens")
            width = embed_dim // embed_tokens
            self.post_query = nn.Linear(deter, width)
            self.post_attn = Attention(width, embed_heads)
            post_in = 2 * width  # the attended read and the tokens' mean
        self.obs_out = MLP(deter + post_in, stoch * classes, 1, hidden, act, norm)

    @property
    def feat_dim(self) -> int:
        """F = Dd + S * K, the size of :meth:`feature`."""
        return self.deter + self.stoch * self.classes

    def initial(self, batch: int, device: torch.device | str | None = None) -> State:
        """The all-zero state (DreamerV2) for ``batch`` sequences."""
        dtype = self.cell.linear.weight.dtype
        device = self.cell.linear.weight.device if device is None else device
        return {
            "deter": torch.zeros(batch, self.deter, dtype=dtype, device=device),  # (B, Dd)
            "logits": torch.zeros(batch, self.stoch, self.classes, dtype=dtype, device=device),  # (B, S, K)
            "stoch": torch.zeros(batch, self.stoch, self.classes, dtype=dtype, device=device),  # (B, S, K)
        }

    def feature(self, state: State) -> torch.Tensor:
        """[flatten(stoch), deter]: (..., S, K) and (..., Dd) -> (..., S*K + Dd)."""
        stoch = state["stoch"].flatten(-2)  # (..., S*K)
        return torch.cat([stoch, state["deter"]], dim=-1)

    def _latent(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat logits (B, S*K) -> (log-probs (B, S, K) with unimix, one-hot sample (B, S, K))."""
        logits = logits.reshape(*logits.shape[:-1], self.stoch, self.classes)  # (B, S, K)
        dist = OneHotCategorical(logits, self.unimix)
        return dist.logits, dist.sample()

    def img_step(self, prev_state: State, prev_action: torch.Tensor) -> State:
        """One prior step: (state_{t-1} (B, ...), action a_{t-1} (B, A)) -> prior state_t."""
        x = torch.cat([prev_state["stoch"].flatten(-2), prev_action], dim=-1)  # (B, S*K + A)
        deter = self.cell(self.img_in(x), prev_state["deter"])  # (B, Dd)
        logits, stoch = self._latent(self.img_out(deter))
        return {"deter": deter, "logits": logits, "stoch": stoch}

    def reset(self, prev_state: State, prev_action: torch.Tensor,
              is_first: torch.Tensor) -> tuple[State, torch.Tensor]:
        """Where ``is_first`` (B,) is set, replace the state by :meth:`initial`, zero the action."""
        keep = 1.0 - is_first.to(prev_action.dtype)  # (B,)
        init = self.initial(keep.shape[0], keep.device)
        state = {}
        for key, value in prev_state.items():
            mask = keep.reshape(-1, *([1] * (value.dim() - 1)))  # (B, 1, ...)
            state[key] = mask * value + (1.0 - mask) * init[key]
        return state, prev_action * keep[:, None]

    def read_tokens(self, deter: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """h_t (B, Dd), token embedding (B, N * W) -> [attended read, mean of the tokens] (B, 2 W)."""
        tokens = embed.reshape(embed.shape[0], self.embed_tokens, -1)  # (B, N, W)
        read = self.post_attn(self.post_query(deter)[:, None], tokens)[:, 0]  # (B, W)
        return torch.cat([read, tokens.mean(dim=1)], dim=-1)

    def obs_step(self, prev_state: State, prev_action: torch.Tensor, embed: torch.Tensor,
                 is_first: torch.Tensor) -> tuple[State, State]:
        """One filtering step -> (posterior, prior) at step t.

        Args:
            prev_state: state at t-1, (B, ...).
            prev_action: (B, A) the action that led to step t.
            embed: (B, E) embedding of observation t.
            is_first: (B,) bool or 0/1; where set, the state and action are reset first.
        """
        prev_state, prev_action = self.reset(prev_state, prev_action, is_first)
        prior = self.img_step(prev_state, prev_action)
        if self.embed_tokens:
            embed = self.read_tokens(prior["deter"], embed)  # (B, 2 W)
        x = torch.cat([prior["deter"], embed], dim=-1)  # (B, Dd + E), or (B, Dd + 2 W) from tokens
        logits, stoch = self._latent(self.obs_out(x))
        post = {"deter": prior["deter"], "logits": logits, "stoch": stoch}
        return post, prior

    def observe(self, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor,
                state: State | None = None) -> tuple[State, State]:
        """Filter a batch of sequences -> (posterior, prior), dicts of (B, T, ...).

        Args:
            embed: (B, T, E) observation embeddings.
            action: (B, T, A); ``action[:, t]`` led to step t.
            is_first: (B, T) episode starts.
            state: the state before step 0 (B, ...); :meth:`initial` when None.
        """
        batch, steps = embed.shape[:2]
        if state is None:
            state = self.initial(batch, embed.device)
        posts, priors = [], []
        for t in range(steps):
            state, prior = self.obs_step(state, action[:, t], embed[:, t], is_first[:, t])
            posts.append(state)
            priors.append(prior)
        return stack_states(posts, 1), stack_states(priors, 1)  # (B, T, ...)

    def rollout(self, state: State, action: torch.Tensor) -> State:
        """Open-loop priors for given actions: state (B, ...), action (B, T, A) -> (B, T, ...)."""
        priors = []
        for t in range(action.shape[1]):
            state = self.img_step(state, action[:, t])
            priors.append(state)
        return stack_states(priors, 1)

    def imagine(self, policy_fn: Callable[[State], torch.Tensor], start_state: State,
                horizon: int) -> tuple[State, torch.Tensor]:
        """Roll the prior forward under a policy.

        Args:
            policy_fn: state (N, ...) -> action (N, A).
            start_state: (N, ...) states to start from (state 0).
            horizon: Hz, number of imagined steps.

        Returns:
            states (Hz+1, N, ...) with the start at index 0, and actions (Hz, N, A) where
            ``actions[t]`` leads from ``states[t]`` to ``states[t+1]``.
        """
        state = {key: start_state[key] for key in ("deter", "logits", "stoch")}
        states, actions = [state], []
        for _ in range(horizon):
            action = policy_fn(state)  # (N, A)
            state = self.img_step(state, action)
            states.append(state)
            actions.append(action)
        return stack_states(states, 0), torch.stack(actions, dim=0)
