"""RSSM and latent distributions: shapes, straight-through gradients, resets, action alignment."""

import pytest
import torch

from mwm.distributions import Bernoulli, OneHotCategorical
from mwm.rssm import RSSM

B, T, E, A = 3, 5, 8, 2
DETER, STOCH, CLASSES = 32, 4, 4


def tiny_rssm(**overrides) -> RSSM:
    torch.manual_seed(0)
    kwargs = dict(deter=DETER, hidden=32, stoch=STOCH, classes=CLASSES, **overrides)
    return RSSM(E, A, **kwargs)


def sequence(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    embed = torch.randn(B, T, E, generator=gen)
    action = torch.randn(B, T, A, generator=gen)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    return embed, action, is_first


def test_state_shapes():
    rssm = tiny_rssm()
    embed, action, is_first = sequence()
    init = rssm.initial(B, "cpu")
    assert init["deter"].shape == (B, DETER)
    assert init["logits"].shape == init["stoch"].shape == (B, STOCH, CLASSES)
    post, prior = rssm.obs_step(init, action[:, 0], embed[:, 0], is_first[:, 0])
    assert post.keys() == prior.keys() == {"deter", "logits", "stoch"}
    assert post["stoch"].shape == (B, STOCH, CLASSES)
    assert rssm.img_step(post, action[:, 1])["deter"].shape == (B, DETER)
    post, prior = rssm.observe(embed, action, is_first)
    for state in (post, prior):
        assert state["deter"].shape == (B, T, DETER)
        assert state["stoch"].shape == (B, T, STOCH, CLASSES)
    assert rssm.feature(post).shape == (B, T, rssm.feat_dim) == (B, T, DETER + STOCH * CLASSES)


def test_samples_are_one_hot():
    rssm = tiny_rssm()
    post, _ = rssm.observe(*sequence())
    stoch = post["stoch"].detach()
    # exact up to the rounding of ``onehot + probs - probs``
    assert torch.allclose(stoch, stoch.round(), atol=1e-6)
    assert torch.allclose(stoch.sum(-1), torch.ones(()), atol=1e-6)


def test_imagine_matches_observe_shapes():
    rssm = tiny_rssm()
    post, _ = rssm.observe(*sequence())
    start = {key: value.flatten(0, 1) for key, value in post.items()}  # (B*T, ...)
    horizon = 4
    states, actions = rssm.imagine(lambda s: torch.zeros(s["deter"].shape[0], A), start, horizon)
    assert states["deter"].shape == (horizon + 1, B * T, DETER)
    assert states["stoch"].shape == (horizon + 1, B * T, STOCH, CLASSES)
    assert actions.shape == (horizon, B * T, A)
    assert torch.equal(states["deter"][0], start["deter"])
    assert rssm.feature(states).shape[-1] == rssm.feature(post).shape[-1]


def test_imagine_passes_each_state_to_policy():
    rssm = tiny_rssm()
    start = rssm.initial(2)
    seen = []

    def policy(state):
        seen.append(state["deter"])
        return torch.ones(2, A)

    states, _ = rssm.imagine(policy, start, 3)
    for t, deter in enumerate(seen):
        assert torch.equal(deter, states["deter"][t])


def test_is_first_resets_to_a_fresh_start():
    rssm = tiny_rssm()
    embed, action, is_first = sequence()
    is_first[:, 2] = True  # a new episode begins at step 2
    post, prior = rssm.observe(embed, action, is_first)
    fresh_post, fresh_prior = rssm.observe(embed[:, 2:], action[:, 2:], is_first[:, 2:])
    # deter and logits at a reset step do not depend on the random latent draws.
    assert torch.allclose(prior["deter"][:, 2], fresh_prior["deter"][:, 0], atol=1e-6)
    assert torch.allclose(post["logits"][:, 2], fresh_post["logits"][:, 0], atol=1e-6)
    # and the reset ignores a non-zero state carried in from outside
    carried = {key: torch.randn_like(value) for key, value in rssm.initial(B).items()}
    post_carried, _ = rssm.observe(embed[:, 2:], action[:, 2:], is_first[:, 2:], state=carried)
    assert torch.allclose(post_carried["logits"][:, 0], fresh_post["logits"][:, 0], atol=1e-6)
    # without the flag the history matters
    no_reset, _ = rssm.observe(embed[:, 2:], action[:, 2:], torch.zeros(B, T - 2), state=carried)
    assert not torch.allclose(no_reset["logits"][:, 0], fresh_post["logits"][:, 0], atol=1e-3)


def test_reset_zeroes_the_previous_action():
    rssm = tiny_rssm()
    embed, action, is_first = sequence()
    _, prior = rssm.observe(embed, action, is_first)
    _, prior_other = rssm.observe(embed, action + 5.0 * is_first[..., None], is_first)
    assert torch.allclose(prior["deter"][:, 0], prior_other["deter"][:, 0])


def test_step_t_uses_action_t():
    """The action stored with step t led to step t: it changes step t's prior, not step t-1's."""
    rssm = tiny_rssm()
    embed, action, is_first = sequence()
    changed = action.clone()
    changed[:, 3] += 1.0
    torch.manual_seed(5)
    _, prior = rssm.observe(embed, action, is_first)
    torch.manual_seed(5)
    _, prior_changed = rssm.observe(embed, changed, is_first)
    assert torch.allclose(prior["deter"][:, :3], prior_changed["deter"][:, :3])
    assert not torch.allclose(prior["deter"][:, 3], prior_changed["deter"][:, 3])


def test_straight_through_gradient_reaches_logits():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, 5, requires_grad=True)
    dist = OneHotCategorical(logits)
    sample = dist.sample()
    assert torch.allclose(sample.detach(), sample.detach().round(), atol=1e-6)
    weights = torch.randn(5)
    (sample * weights).sum().backward()
    expected, = torch.autograd.grad((torch.softmax(logits, -1) * weights).sum(), logits)
    assert torch.allclose(logits.grad, expected, atol=1e-6)
    assert logits.grad.abs().sum() > 0


def test_rssm_gradient_flows_through_latents():
    """Earlier embeddings reach a later feature only through the sampled one-hot latents."""
    rssm = tiny_rssm()
    embed, action, is_first = sequence()
    embed.requires_grad_(True)
    post, _ = rssm.observe(embed, action, is_first)
    rssm.feature(post)[:, -1].sum().backward()
    assert torch.all(embed.grad[:, :-1].abs().sum(-1) > 0)


def test_categorical_matches_torch_distributions():
    torch.manual_seed(0)
    logits = torch.randn(7, 5)
    ours = OneHotCategorical(logits)
    ref = torch.distributions.OneHotCategorical(logits=logits)
    onehot = ref.sample()
    assert torch.allclose(ours.log_prob(onehot), ref.log_prob(onehot), atol=1e-6)
    assert torch.allclose(ours.entropy(), ref.entropy(), atol=1e-6)
    assert torch.equal(ours.mode().detach().argmax(-1), logits.argmax(-1))


def test_categorical_sample_frequencies():
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.6, 0.3])
    counts = OneHotCategorical(probs.log().expand(20000, 3)).sample().sum(0) / 20000
    assert torch.allclose(counts, probs, atol=0.02)


def test_unimix_floors_probabilities():
    logits = torch.tensor([[20.0, 0.0, -20.0, -20.0]])
    dist = OneHotCategorical(logits, unimix=0.04)
    assert torch.all(dist.probs >= 0.01 - 1e-7)
    assert torch.allclose(dist.probs.sum(-1), torch.ones(1))
    rssm = tiny_rssm(unimix=0.04)
    post, _ = rssm.observe(*sequence())
    assert torch.all(post["logits"].exp() >= 0.01 - 1e-6)


def test_bernoulli_matches_torch_distributions():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    target = torch.tensor([0.0, 0.3, 1.0])
    ref = torch.distributions.Bernoulli(logits=logits, validate_args=False)
    ours = Bernoulli(logits)
    assert torch.allclose(ours.log_prob(target), ref.log_prob(target), atol=1e-6)
    assert torch.allclose(ours.entropy(), ref.entropy(), atol=1e-6)
    assert torch.allclose(ours.mean, ref.mean)
