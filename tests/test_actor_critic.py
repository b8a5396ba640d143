"""Behaviour learning: lambda-returns, actor and critic losses, slow critic, actor distributions."""

import math

import pytest
import torch

from mwm.actor_critic import ActorCritic
from mwm.distributions import TruncatedNormal
from mwm.heads import ActorHead
from mwm.losses.behavior import (actor_entropy_loss, critic_loss, dynamics_actor_loss, lambda_returns,
                                 reinforce_actor_loss)
from mwm.transforms import symlog
from mwm.world_model import FlatViTEncoder, TokenDecoder, WorldModel, rssm_feat_dim

A, N, HORIZON = 3, 6, 4
RSSM = dict(deter=32, hidden=32, stoch=4, classes=4)
FEAT = rssm_feat_dim(RSSM)


def tiny_world_model() -> WorldModel:
    torch.manual_seed(0)
    encoder = FlatViTEncoder(8, 5, width=8, depth=1, heads=2)
    decoder = TokenDecoder(FEAT, 8, 5, width=8, depth=1, heads=2)
    return WorldModel(encoder, decoder, 8, A, RSSM, head_layers=1, head_units=16)


def start_states(model: WorldModel) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    embed = torch.randn(2, 3, 8)
    action = torch.nn.functional.one_hot(torch.randint(0, A, (2, 3)), A).float()
    post, _ = model.rssm.observe(embed, action, torch.zeros(2, 3))
    return post  # (B=2, T=3, ...) -> N = 6


def tiny_actor_critic(discrete: bool, **overrides) -> ActorCritic:
    torch.manual_seed(2)
    kwargs = dict(layers=1, units=16, horizon=HORIZON, **overrides)
    return ActorCritic(FEAT, A, discrete, **kwargs)


def python_lambda_returns(reward, value, discount, lam):
    """The DreamerV2 eq. 4 recursion on nested Python lists, time-major."""
    horizon, batch = len(reward), len(reward[0])
    out = [[0.0] * batch for _ in range(horizon)]
    for n in range(batch):
        ret = value[horizon][n]
        for t in reversed(range(horizon)):
            ret = reward[t][n] + discount[t][n] * ((1 - lam) * value[t + 1][n] + lam * ret)
            out[t][n] = ret
    return out


def test_lambda_returns_match_python_recursion():
    torch.manual_seed(0)
    reward, discount = torch.randn(5, 3), torch.rand(5, 3)
    value = torch.randn(6, 3)
    for lam in (0.0, 0.95, 1.0):
        expected = python_lambda_returns(reward.tolist(), value.tolist(), discount.tolist(), lam)
        assert torch.allclose(lambda_returns(reward, value, discount, lam), torch.tensor(expected), atol=1e-5)
    # lambda = 1: discounted sum of rewards plus the discounted bootstrap
    gamma = torch.full((5, 3), 0.9)
    mc = sum(0.9**t * reward[t] for t in range(5)) + 0.9**5 * value[5]
    assert torch.allclose(lambda_returns(reward, value, gamma, 1.0)[0], mc, atol=1e-5)
    # lambda = 0: one-step TD targets
    assert torch.allclose(lambda_returns(reward, value, gamma, 0.0), reward + 0.9 * value[1:], atol=1e-6)


def test_reinforce_raises_logp_of_positive_advantage_actions():
    logits = torch.zeros(2, 4, requires_grad=True)
    actions = torch.tensor([0, 2])
    advantage = torch.tensor([1.0, -1.0])
    logp = torch.log_softmax(logits, -1)[torch.arange(2), actions]
    reinforce_actor_loss(logp, advantage).sum().backward()
    with torch.no_grad():
        new_logp = torch.log_softmax(logits - 0.5 * logits.grad, -1)[torch.arange(2), actions]
    assert new_logp[0] > logp[0]  # positive advantage: more likely
    assert new_logp[1] < logp[1]  # negative advantage: less likely


def test_dynamics_loss_gradient_raises_returns():
    """Toy differentiable 'dynamics': the return peaks where the action is 0.5."""
    theta = torch.zeros(4, 2, requires_grad=True)

    def returns() -> torch.Tensor:
        action = torch.tanh(theta)
        return -((action - 0.5) ** 2)  # (Hz, N)

    before = returns().detach()
    dynamics_actor_loss(returns()).mean().backward()
    with torch.no_grad():
        theta -= 0.5 * theta.grad
    assert torch.all(returns() > before)


def test_entropy_and_critic_losses_move_the_right_way():
    logits = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    entropy = torch.distributions.Categorical(logits=logits).entropy()
    actor_entropy_loss(entropy, 1e-3).sum().backward()
    with torch.no_grad():
        new_entropy = torch.distributions.Categorical(logits=logits - 100.0 * logits.grad).entropy()
    assert new_entropy > entropy
    value = torch.zeros(3, requires_grad=True)
    target = torch.tensor([5.0, -2.0, 0.0], requires_grad=True)
    loss = critic_loss(value, target, "symlog")
    assert torch.allclose(loss, symlog(target.detach()) ** 2)
    loss.sum().backward()
    assert target.grad is None  # the target is stop-gradient
    assert torch.all(torch.sign(-value.grad) == torch.sign(symlog(target.detach())))


def test_slow_critic_copies_only_every_n():
    ac = tiny_actor_critic(True, slow_critic_every=3)

    def bump_critic():
        with torch.no_grad():
            for p in ac.critic.parameters():
                p.add_(1.0)

    def same() -> bool:
        return all(torch.equal(a, b) for a, b in zip(ac.critic.parameters(), ac.slow_critic.parameters()))

    copied = []
    for _ in range(7):
        bump_critic()
        copied.append(ac.update_slow_critic())
        assert same() == copied[-1]
    assert copied == [True, False, False, True, False, False, True]
    assert not any(p.requires_grad for p in ac.slow_critic.parameters())
    # the counter survives a checkpoint
    restored = tiny_actor_critic(True, slow_critic_every=3)
    restored.load_state_dict(ac.state_dict())
    assert [restored.update_slow_critic() for _ in range(3)] == [False, False, True]


@pytest.mark.parametrize("discrete", [True, False])
def test_imagination_starts_from_the_given_states_and_follows_the_actor(discrete):
    model = tiny_world_model()
    ac = tiny_actor_critic(discrete)
    actor_loss, value_loss, metrics = ac.loss(model, start_states(model))
    assert actor_loss.dim() == value_loss.dim() == 0
    assert all(not value.requires_grad for value in metrics.values())
    start = {k: v.flatten(0, 1) for k, v in start_states(model).items()}  # (N, ...)
    torch.manual_seed(5)
    feat, actions = ac.imagine(model, start)
    assert feat.shape == (HORIZON + 1, N, FEAT) and actions.shape == (HORIZON, N, A)
    torch.testing.assert_close(feat[0], model.feature(start))  # step 0 is the posterior, not a new sample
    # the first action is the actor's sample at the start state (same generator state)
    torch.manual_seed(5)
    torch.testing.assert_close(actions[0], ac.actor(feat[0]).sample())


def test_reinforce_mode_trains_actor_without_touching_the_model():
    model = tiny_world_model()
    ac = tiny_actor_critic(True)
    assert ac.actor_grad == "reinforce"
    actor_loss, value_loss, _ = ac.loss(model, start_states(model))
    (actor_loss + value_loss).backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is None for p in ac.slow_critic.parameters())
    assert sum(p.grad.abs().sum() for p in ac.actor.parameters()) > 0
    assert sum(p.grad.abs().sum() for p in ac.critic.parameters()) > 0


def test_dynamics_mode_backpropagates_through_the_model():
    model = tiny_world_model()
    ac = tiny_actor_critic(False, entropy=0.0)
    assert ac.actor_grad == "dynamics"
    actor_loss, _, _ = ac.loss(model, start_states(model))
    actor_loss.backward()
    # with no entropy term the only path into the actor is returns -> model -> actions
    assert sum(p.grad.abs().sum() for p in ac.actor.parameters()) > 0
    assert model.rssm.img_in[0].weight.grad.abs().sum() > 0


def test_terminal_start_states_carry_no_weight():
    model = tiny_world_model()
    ac = tiny_actor_critic(True)
    starts = start_states(model)
    actor_loss, value_loss, _ = ac.loss(model, starts, start_is_terminal=torch.ones(2, 3))
    assert actor_loss.item() == 0.0 and value_loss.item() == 0.0
    actor_loss, value_loss, _ = ac.loss(model, starts, start_is_terminal=torch.zeros(2, 3))
    assert value_loss.item() > 0.0


def test_return_normalisation_scales_large_returns_only():
    model = tiny_world_model()
    with torch.no_grad():
        model.reward_head.net.net[-1].bias.fill_(8.0)  # symexp(8) ~ 3000 per step
    ac = tiny_actor_critic(True, return_norm=True)
    _, _, metrics = ac.loss(model, start_states(model))
    assert metrics["return_scale"] > 1.0
    assert ac.return_spread > 0
    plain = tiny_actor_critic(True)
    assert plain.loss(model, start_states(model))[2]["return_scale"] == 1.0


def test_act_modes():
    feat = torch.randn(5, FEAT)
    discrete = tiny_actor_critic(True)
    onehot = discrete.act(feat, "train")
    assert onehot.shape == (5, A) and torch.allclose(onehot.sum(-1), torch.ones(5))
    assert torch.equal(discrete.act(feat, "eval"), discrete.act(feat, "eval"))
    continuous = tiny_actor_critic(False)
    action = continuous.act(feat, "train")
    assert action.shape == (5, A) and torch.all(action.abs() < 1.0)
    with pytest.raises(ValueError):
        continuous.act(feat, "explore")


def test_continuous_actor_std_parameterisation():
    head = ActorHead(4, 2, discrete=False, layers=0, units=8, min_std=0.1)
    with torch.no_grad():
        head.net.net[-1].weight.zero_()
        head.net.net[-1].bias.zero_()
    dist = head(torch.randn(3, 4))
    assert torch.allclose(dist.std, torch.full((3, 2), 1.1))  # 2 sigmoid(0) + min_std
    with torch.no_grad():
        head.net.net[-1].bias.fill_(-50.0)
    assert torch.allclose(head(torch.randn(3, 4)).std, torch.full((3, 2), 0.1))


def test_truncated_normal_density_entropy_and_gradients():
    mean = torch.tensor([[0.8, -0.3]], requires_grad=True)
    std = torch.tensor([[0.5, 1.5]])
    dist = TruncatedNormal(mean, std)
    torch.manual_seed(0)
    sample = TruncatedNormal(mean.expand(4000, 2), std.expand(4000, 2)).rsample()
    assert torch.all(sample.abs() < 1.0)
    sample.mean().backward()
    assert torch.all(mean.grad > 0)  # reparameterised: a larger mean moves samples up
    # per-dimension density on a grid integrates to one; the entropy matches the integral
    grid = torch.linspace(-1, 1, 4001)[1:-1]
    for dim in range(2):
        one_dim = TruncatedNormal(mean.detach()[:, dim:dim + 1], std[:, dim:dim + 1])
        logp = one_dim.log_prob(grid[:, None])  # (G,)
        step = 2.0 / 4000
        assert math.isclose((logp.exp().sum() * step).item(), 1.0, abs_tol=2e-3)
        assert math.isclose(-(logp.exp() * logp).sum().item() * step, one_dim.entropy().item(), abs_tol=5e-3)
    # the empirical mean of samples matches the density's mean
    density = TruncatedNormal(mean.detach()[:, :1], std[:, :1]).log_prob(grid[:, None]).exp()  # (G,)
    density_mean = (grid * density).sum() * 2.0 / 4000
    assert math.isclose(sample[:, 0].mean().item(), density_mean.item(), abs_tol=0.03)
