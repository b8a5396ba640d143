"""One home for every setting: the schema, the YAML and the constructors agree.

Every model class the config builds goes through :func:`mwm.config.construct`, which
records (class, sections, prefix). Building every agent and every probe method fills
that record; the tests below walk it against the schema and the ``defaults`` block.
"""

import inspect
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mwm import config
from mwm.rssm import RSSM

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("mwm", "agents", "envs", "replay")
IMAGE = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)})


@pytest.fixture(scope="module")
def constructed():
    """(class, sections, prefix) of every construct() call made while building each agent
    (discrete and continuous actions) and each probe method on the tiny preset."""
    from agents.registry import AGENT_NAMES, make_agent
    from mwm.probes.methods import METHODS, make_method

    torch.manual_seed(0)
    for agent in AGENT_NAMES:
        for act_space in (gym.spaces.Discrete(3), gym.spaces.Box(-1, 1, (2,), np.float32)):
            cfg = config.build("toy_catch", agent, "tiny")
            make_agent(cfg, IMAGE, act_space, torch.device("cpu")).close()
    for method in METHODS:
        make_method(method, config.build("toy_catch", "mwm", "tiny"), (64, 64, 3), torch.device("cpu"))
    # The world model builds its RSSM from the whole rssm section (WorldModel(rssm=...)).
    return set(config.CONSTRUCTED) | {(RSSM, ("rssm",), "")}


def yaml_defaults() -> dict:
    """The ``defaults`` block of configs/, merged into the schema: every key's base value."""
    return OmegaConf.to_container(config._merge(OmegaConf.structured(config.Config),
                                                config._load_blocks()["defaults"], "defaults"))


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def test_constructor_defaults_agree_with_the_yaml(constructed):
    """A library user who builds a model without the config gets the YAML's values.

    A class built from several different sections (Optimizer: wm, ac, mae) is held to a
    key only where every one of those sections gives that key the same value; no single
    default could agree with two different ones.
    """
    base = yaml_defaults()
    by_class: dict = {}
    for cls, sections, prefix in constructed:
        by_class.setdefault(cls, []).append((sections, prefix))
    disagreements = []
    for cls, uses in by_class.items():
        for name, param in inspect.signature(cls).parameters.items():
            if param.default is inspect.Parameter.empty:
                continue
            values = []
            for sections, prefix in uses:
                found = [base[s][prefix + name] for s in sections if prefix + name in base[s]]
                values.append(found[-1] if found else None)  # the last section that has the key wins
            if any(v is None for v in values) or any(not _same(v, values[0]) for v in values):
                continue
            if not _same(param.default, values[0]):
                disagreements.append(f"{cls.__name__}({name}={param.default!r}) vs YAML {values[0]!r}")
    assert not disagreements, disagreements
    checked = {cls.__name__ for cls in by_class}
    assert {"MaskedAutoencoder", "SiameseMaskedAutoencoder", "WorldModel", "ActorCritic", "RSSM", "FlatViTEncoder",
            "TokenDecoder", "ConvEncoder", "ConvDecoder", "Optimizer", "RainbowLearner", "SacLearner"} <= checked


def _source() -> str:
    files = [p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py") if p != ROOT / "mwm" / "config.py"]
    return "\n".join(p.read_text() for p in files)


def test_every_key_is_read_by_the_code(constructed):
    """A key is read when a constructor takes it through construct(), or when the code
    (outside the schema module) names it as an attribute (``.name``) or string key.

    The textual half cannot tell ``wm.lr`` from ``ac.lr`` apart, so it catches keys whose
    name the code never mentions at all; the construct() half is exact.
    """
    consumed = set()
    for cls, sections, prefix in constructed:
        params = inspect.signature(cls).parameters
        for section in sections:
            consumed |= {f"{section}.{prefix}{name}" for name in params}
    source = _source()
    unused = [key for key in config.valid_keys() if key not in consumed
              and not re.search(rf"\.{key.split('.')[-1]}\b|[\"']{key.split('.')[-1]}[\"']", source)]
    assert not unused, f"config keys no code reads: {unused}"


def test_allowed_values_are_written_once_in_the_implementing_module():
    from mwm.actor_critic import ACTOR_GRADS
    from mwm.heads import TRANSFORMS
    from mwm.masking import MASKING_KINDS

    choices = config.choices_of()
    assert choices["mae.mask_type"] is MASKING_KINDS
    assert choices["wm.reward_transform"] is TRANSFORMS
    assert choices["ac.actor_grad"] is ACTOR_GRADS
    text = (ROOT / "mwm" / "config.py").read_text()
    for values in (MASKING_KINDS, TRANSFORMS, ACTOR_GRADS):  # no second copy of a list in the schema module
        assert repr(tuple(values)) not in text and str(list(values)) not in text


@pytest.mark.parametrize("key, value, hint", [
    ("mae.mask_type", "tubes", "did you mean tube"),
    ("wm.reward_transform", "symlg", "did you mean symlog"),
    ("speed.precision", "fp16", "fp32, bf16"),
])
def test_a_value_outside_the_choices_names_the_key_and_the_choices(key, value, hint):
    from mwm.errors import UserError

    with pytest.raises(UserError, match=rf"'{key}'.*'{value}' is not one of .*{hint}"):
        config.build("toy_catch", "mwm", "tiny", [f"{key}={value}"])


def test_construct_reads_prefixed_keys_and_later_sections_win():
    cfg = config.build("toy_catch", "siammae", "tiny")

    def probe(width=0, depth=0, mask_ratio=0.0, stem_channels=(), absent=7):
        return dict(width=width, depth=depth, mask_ratio=mask_ratio, stem_channels=stem_channels, absent=absent)

    got = config.construct(probe, cfg.mae, cfg.siammae, depth=99)
    assert got == dict(width=cfg.mae.width, depth=99, mask_ratio=cfg.siammae.mask_ratio,
                       stem_channels=list(cfg.mae.stem_channels), absent=7)
    assert config.construct(probe, cfg.wm, prefix="flat_")["width"] == cfg.wm.flat_width


def test_checkpoints_from_before_the_representation_module_still_load():
    from agents.registry import make_agent
    from agents.world_model_agent import legacy_module_keys

    cfg = config.build("toy_catch", "mwm", "tiny", ["wm.token_norm=true"])
    torch.manual_seed(0)
    agent = make_agent(cfg, IMAGE, gym.spaces.Discrete(3), torch.device("cpu"))
    state = agent.state_dict()
    old = {key.replace("representation.", "", 1): value for key, value in state["modules"].items()}
    assert any(key.startswith("mae.") for key in old) and any(key.startswith("token_norm.") for key in old)
    assert legacy_module_keys(old).keys() == state["modules"].keys()
    torch.manual_seed(1)
    clone = make_agent(cfg, IMAGE, gym.spaces.Discrete(3), torch.device("cpu"))
    clone.load_state_dict({**state, "modules": old})
    for a, b in zip(agent.parameters(), clone.parameters()):
        assert torch.equal(a, b)
