"""Config: typed merging of YAML blocks, dotted overrides, errors that name the key."""

import pytest
from omegaconf import OmegaConf

from mwm import cli, config
from mwm.errors import UserError


def test_blocks_merge_in_order():
    base = config.build("dmc_walker_walk", "mwm", "default")
    atari = config.build("atari_pong", "mwm", "default")
    tiny = config.build("atari_pong", "mwm", "tiny")
    assert base.rssm.deter == 1024 and base.env.action_repeat == 2  # defaults (MWM DMC)
    assert atari.rssm.deter == 600 and atari.env.action_repeat == 4  # atari block (DreamerV2)
    assert atari.wm.kl_scale == 0.1 and atari.ac.discount == 0.999
    assert tiny.rssm.deter == 32 and tiny.env.action_repeat == 4  # preset after suite
    assert base.run.pretrain == 5000  # agent block


def test_agent_suite_block_applies_only_to_that_pair():
    dv2_atari = config.build("atari_pong", "dreamerv2", "default")
    mwm_atari = config.build("atari_pong", "mwm", "default")
    assert dv2_atari.wm.reward_transform == "tanh"
    assert mwm_atari.wm.reward_transform == "symlog"


def test_overrides_are_typed():
    cfg = config.build("toy_catch", "mwm", "tiny", ["rssm.deter=64", "mae.mask_ratio=0.9", "run.parallel=false",
                                                     "env.size=[32,32]", "mae.patch=4"])
    assert cfg.rssm.deter == 64 and isinstance(cfg.rssm.deter, int)
    assert cfg.mae.mask_ratio == 0.9 and cfg.run.parallel is False and list(cfg.env.size) == [32, 32]


@pytest.mark.parametrize("override, words", [
    (["rssm.detr=3"], ["rssm.detr", "rssm.deter"]),
    (["deter=3"], ["'deter'", "rssm.deter"]),
    (["rssm.deter=abc"], ["rssm.deter", "abc"]),
    (["run.parallel=maybe"], ["run.parallel"]),
    (["mae.mask_ratio=1.0"], ["mae.mask_ratio", "[0, 1)"]),
    (["mae.mask_ratio=-0.1"], ["mae.mask_ratio"]),
    (["run.steps=0"], ["run.steps", "positive"]),
    (["rssm.deter=-5"], ["rssm.deter", "positive"]),
    (["mae.mask_type=diagonal"], ["mae.mask_type", "random"]),
    (["env.object_size=40"], ["env.object_size", "1..16"]),
    (["run.device=tpu"], ["run.device"]),
    (["nonsense"], ["key=value"]),
])
def test_bad_values_name_the_key(override, words):
    with pytest.raises(UserError) as err:
        config.build("toy_catch", "mwm", "tiny", override)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_unknown_agent_preset_suite():
    for args, word in [(("toy_catch", "ppo", "tiny"), "ppo"), (("toy_catch", "mwm", "huge"), "huge"),
                       (("gym_cartpole", "mwm", "tiny"), "gym_cartpole")]:
        with pytest.raises(UserError, match=word):
            config.build(*args)


def test_every_schema_key_has_a_default_value():
    cfg = config.build("dmc_walker_walk", "mwm", "default")
    assert not OmegaConf.missing_keys(cfg)
    assert set(config.valid_keys()) >= {"run.seed", "rssm.deter", "mae.mask_ratio"}


def test_saved_config_round_trips(tmp_path):
    cfg = config.build("toy_catch", "mwm", "tiny", ["rssm.deter=48"])
    config.save(cfg, tmp_path / "config.yaml")
    again = config.load(tmp_path / "config.yaml")
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)


def test_toy_env_keys_reach_the_env_and_old_runs_keep_their_paddle(tmp_path):
    from mwm.run_dir import env_kwargs

    cfg = config.build("toy_catch", "mwm", "tiny", ["env.paddle_height=8", "env.object_size=16"])
    kwargs = env_kwargs(cfg)
    assert kwargs["paddle_height"] == 8 and kwargs["object_size"] == 16
    saved = OmegaConf.to_container(cfg)
    del saved["env"]["paddle_height"]  # a run saved before the key existed
    OmegaConf.save(OmegaConf.create(saved), tmp_path / "config.yaml")
    old = env_kwargs(config.load(tmp_path / "config.yaml"))
    assert old["paddle_height"] == 2 and old["object_size"] == 16  # the paddle such runs had
    with pytest.raises(UserError, match="env.paddle_height"):
        config.build("toy_catch", "mwm", "tiny", ["env.paddle_height=0"])


def test_cli_turns_flags_into_overrides():
    parser = cli.make_parser("x", "y")
    args, overrides = cli.parse(parser, ["--env", "toy_catch", "--seed", "3", "--rssm.deter", "64",
                                         "--mae.mask_ratio=0.5", "--run.steps", "-1"])
    assert args.env == "toy_catch"
    assert overrides == ["run.seed=3", "rssm.deter=64", "mae.mask_ratio=0.5", "run.steps=-1"]
    with pytest.raises(UserError, match="--bogus"):
        cli.parse(parser, ["--env", "toy_catch", "--bogus", "1"])
    with pytest.raises(UserError, match="needs a value"):
        cli.parse(parser, ["--env", "toy_catch", "--rssm.deter"])


def test_a_run_saved_before_the_newer_keys_loads_with_what_it_did(tmp_path):
    """Keys added as off-by-default options load with their earlier behaviour from a config
    saved without them (it once failed: wm.flat_pool came back as '???'); a key outside the
    table stays missing, since today's default need not be what the run did."""
    cfg = config.build("toy_catch", "mwm", "tiny")
    defaults = config.flat_keys(OmegaConf.to_container(cfg))
    for key, value in config.BEFORE_KEY_EXISTED.items():
        assert defaults[key] == value, f"{key}: today's default is not the behaviour before the key existed"
    saved = OmegaConf.to_container(cfg)
    for key in [*config.BEFORE_KEY_EXISTED, "wm.kl_free"]:
        section, name = key.split(".")
        del saved[section][name]
    OmegaConf.save(OmegaConf.create(saved), tmp_path / "config.yaml")
    old = config.load(tmp_path / "config.yaml")
    for key, value in config.BEFORE_KEY_EXISTED.items():
        assert OmegaConf.select(old, key) == value
    assert OmegaConf.is_missing(old.wm, "kl_free")
