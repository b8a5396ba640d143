"""Optimizer: clipping, warm-up, DreamerV2 weight decay, non-finite skipping, checkpoints."""

import pytest
import torch

from mwm.optim import Optimizer

FUSED = [False, True]  # fused Adam also runs on CPU; the skip takes another path there


@pytest.mark.parametrize("fused", FUSED)
def test_clipping_bounds_the_gradient_adam_sees(fused):
    param = torch.nn.Parameter(torch.zeros(4))
    opt = Optimizer("m", [param], lr=1e-3, clip=1.0, wd=0.0, fused=fused)
    metrics = opt.step((param * torch.tensor([30.0, 40.0, 0.0, 0.0])).sum())
    assert torch.isclose(metrics["m/grad_norm"], torch.tensor(50.0))  # reported before clipping
    first_moment = opt.adam.state[param]["exp_avg"]  # (1 - beta1) * clipped gradient
    assert torch.allclose(first_moment, 0.1 * torch.tensor([0.6, 0.8, 0.0, 0.0]), atol=1e-6)


def test_small_gradients_are_not_clipped():
    param = torch.nn.Parameter(torch.zeros(2))
    opt = Optimizer("m", [param], lr=1e-3, clip=100.0, wd=0.0)
    opt.step((param * torch.tensor([3.0, 4.0])).sum())
    assert torch.allclose(opt.adam.state[param]["exp_avg"], 0.1 * torch.tensor([3.0, 4.0]))


def test_linear_warmup_of_the_learning_rate():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = Optimizer("m", [param], lr=1.0, wd=0.0, warmup=4)
    lrs = []
    for _ in range(6):
        lrs.append(opt.current_lr())
        before = param.detach().clone()
        opt.step(param.sum())
        # Adam's steps with a constant gradient have size lr
        assert torch.allclose(before - param.detach(), torch.tensor([lrs[-1]]), atol=1e-4)
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("fused", FUSED)
def test_weight_decay_is_decoupled_and_not_scaled_by_lr(fused):
    param = torch.nn.Parameter(torch.full((3,), 2.0))
    opt = Optimizer("m", [param], lr=1e-3, wd=0.1, warmup=10, fused=fused)
    opt.step(0.0 * param.sum())  # zero gradient: only the decay acts
    assert torch.allclose(param.detach(), torch.full((3,), 2.0 * 0.9))


@pytest.mark.parametrize("fused", FUSED)
def test_non_finite_updates_are_skipped_and_counted(fused):
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(3))
    opt = Optimizer("m", [param], lr=0.1, wd=1e-3, fused=fused)
    opt.step((param**2).sum())
    saved_param = param.detach().clone()
    saved_state = {k: v.clone() for k, v in opt.adam.state[param].items()}
    for bad, streak in ((float("nan"), 1), (float("inf"), 2)):
        metrics = opt.step(param.sum() * bad)
        assert not torch.isfinite(metrics["m/grad_norm"])
        assert torch.equal(param.detach(), saved_param)
        for key, value in opt.adam.state[param].items():
            assert torch.equal(value, saved_state[key]), key
        assert param.grad is None
        assert isinstance(opt.nonfinite_in_row, torch.Tensor) and int(opt.nonfinite_in_row) == streak
    opt.step((param**2).sum())
    assert int(opt.nonfinite_in_row) == 0
    assert not torch.equal(param.detach(), saved_param)


def test_only_its_own_parameters_get_gradients():
    mine = torch.nn.Parameter(torch.ones(2))
    other = torch.nn.Parameter(torch.ones(2))
    opt = Optimizer("m", [mine], lr=0.1)
    metrics = opt.step((mine * other).sum())
    assert other.grad is None
    assert set(metrics) == {"m/loss", "m/grad_norm"}
    assert all(isinstance(value, torch.Tensor) for value in metrics.values())


def test_state_dict_keeps_the_warmup_counter():
    param = torch.nn.Parameter(torch.zeros(2))
    opt = Optimizer("m", [param], lr=1.0, warmup=10)
    for _ in range(3):
        opt.step(param.sum())
    copy = torch.nn.Parameter(param.detach().clone())
    restored = Optimizer("m", [copy], lr=1.0, warmup=10)
    restored.load_state_dict(opt.state_dict())
    assert restored.updates == 3 and restored.current_lr() == opt.current_lr() == 0.4
    opt.step(param.sum())
    restored.step(copy.sum())
    assert torch.allclose(param, copy)


def test_bad_arguments_are_user_errors():
    with pytest.raises(ValueError):
        Optimizer("m", [], lr=1e-3)
    with pytest.raises(ValueError):
        Optimizer("m", [torch.nn.Parameter(torch.zeros(1))], lr=0.0)
