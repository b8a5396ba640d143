"""Every probe method builds from the tiny config, trains a step and exposes features and figures."""

import numpy as np
import pytest
import torch

from mwm.config import build
from mwm.errors import UserError
from mwm.probes.methods import METHODS, make_method, method_agent

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 4, 64, 64, 3), dtype=np.uint8)  # (B, T, H, W, C)
    return {"image": torch.as_tensor(images), "reward": torch.zeros(2, 4)}


def tiny_cfg(method, *overrides):
    return build("toy_catch", method_agent(method), "tiny",
                 ["mae.batch=2", "mae.length=4", "siammae.batch=2", "curl.batch=8", *overrides])


@pytest.mark.parametrize("name", METHODS)
def test_method_trains_and_exposes_features_and_reconstructions(name, batch):
    torch.manual_seed(0)
    method, optimiser = make_method(name, tiny_cfg(name), (64, 64, 3), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    if name == "random":
        assert optimiser is None and not method.trains
    else:
        before = [p.detach().clone() for p in method.trainable()]
        loss, metrics = method.loss(batch, generator)
        assert torch.isfinite(loss)
        optimiser.step(loss)
        method.after_step()
        assert any(not torch.equal(a, b) for a, b in zip(before, method.trainable())), "no parameter moved"
    images = batch["image"][0]  # (4, H, W, C)
    features = method.features(images)
    assert features.shape[0] == 4 and features.dim() == 2
    figures = method.reconstruct(images, images, 0.75, generator)
    if name == "curl":
        assert figures is None
        return
    for key in ("input", "masked", "reconstruction"):
        assert figures[key].shape == images.shape and figures[key].dtype == torch.uint8
    assert torch.equal(figures["input"], images)
    unmasked = method.reconstruct(images, images, 0.0, generator)
    assert torch.equal(unmasked["masked"], images), "ratio 0 must remove no token"


def test_masking_kind_and_ratio_reach_the_model(batch):
    method, _ = make_method("mwm", tiny_cfg("mwm", "mae.mask_type=grid", "mae.mask_ratio=0.9375"), (64, 64, 3),
                            torch.device("cpu"))
    figures = method.reconstruct(batch["image"][0], batch["image"][0], 0.9375, torch.Generator().manual_seed(0))
    grey = (figures["masked"] == 128).all(dim=-1).float().mean()  # removed patches are grey
    assert abs(float(grey) - 0.9375) < 0.02
    loss, _ = method.loss(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_pixel_methods_use_pixel_patches_and_mwm_the_conv_stem():
    cpu = torch.device("cpu")
    assert type(make_method("mwm", tiny_cfg("mwm"), (64, 64, 3), cpu)[0].model.embed).__name__ == "ConvStem"
    assert type(make_method("mae", tiny_cfg("mae"), (64, 64, 3), cpu)[0].model.embed).__name__ == "PatchEmbed"
    simmim = make_method("simmim", tiny_cfg("simmim"), (64, 64, 3), cpu)[0].model
    assert simmim.simmim and type(simmim.embed).__name__ == "PatchEmbed"


def test_unknown_method_is_a_user_error():
    with pytest.raises(UserError, match="unknown probe method"):
        method_agent("byol")
