"""Representations behind one interface (mwm/representation.py), composed into the agents."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from agents.world_model_agent import OPEN_LOOP_CONTEXT, WorldModelAgent
from mwm import config
from mwm.representation import Representation
from mwm.representations import REPRESENTATIONS, make_representation
from replay import Replay
from tests.test_siammae import toy_episode

IMAGE = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)})


def filled_replay(tmp_path) -> Replay:
    replay = Replay(str(tmp_path / "replay"), capacity=1000, seed=0)
    for seed in range(2):
        replay.add_episode(toy_episode(20, 3, seed))
    return replay


@pytest.mark.parametrize("name, agent, trains", [("mae", "mwm", True), ("siammae", "siammae", True),
                                                ("pixels", "dreamerv2", False)])
def test_each_agent_names_its_representation_and_only_trained_ones_own_an_optimiser(name, agent, trains):
    from agents.registry import make_agent

    cfg = config.build("toy_catch", agent, "tiny")
    built = make_agent(cfg, IMAGE, gym.spaces.Discrete(3), torch.device("cpu"))
    assert type(built.representation) is make_representation(name, cfg, (64, 64, 3), torch.device("cpu")).__class__
    assert built.representation.trains is trains and built.representation.decodes
    assert ("mae" in built.optimizers()) is trains
    built.close()


@pytest.mark.parametrize("agent", ["mwm", "siammae"])
def test_flat_pool_attend_gives_the_posterior_every_token_of_the_representation(agent):
    """``--wm.flat_pool attend`` reaches the world model: its RSSM reads the 1 + 64 tokens of the
    autoencoder through cross-attention; an unknown pool is refused."""
    from agents.registry import make_agent

    cfg = config.build("toy_catch", agent, "tiny", ["wm.flat_pool=attend"])
    built = make_agent(cfg, IMAGE, gym.spaces.Discrete(3), torch.device("cpu"))
    tokens = built.representation.inputs(torch.zeros(1, 1, 64, 64, 3, dtype=torch.uint8)).shape[2]
    assert built.wm.rssm.embed_tokens == tokens == 65
    assert built.wm.embed_dim == tokens * cfg.wm.flat_width
    built.close()
    with pytest.raises(Exception, match="flat_pool"):
        config.build("toy_catch", agent, "tiny", ["wm.flat_pool=max"])


def test_flat_pool_slots_reaches_the_world_models_encoder():
    """``--wm.flat_pool slots`` builds the encoder's per-token map into a flat_width embedding."""
    from agents.registry import make_agent

    cfg = config.build("toy_catch", "mwm", "tiny", ["wm.flat_pool=slots"])
    built = make_agent(cfg, IMAGE, gym.spaces.Discrete(3), torch.device("cpu"))
    assert built.wm.encoder.pool.in_features == 65 * cfg.wm.flat_width
    assert built.wm.embed_dim == cfg.wm.flat_width and built.wm.rssm.embed_tokens == 0
    built.close()


def test_pixels_round_trip_and_read_no_parameters():
    cfg = config.build("toy_catch", "dreamerv2", "tiny")
    pixels = make_representation("pixels", cfg, (64, 64, 3), torch.device("cpu"))
    images = torch.randint(0, 256, (2, 3, 64, 64, 3), dtype=torch.uint8)
    inputs = pixels.inputs(images)
    assert inputs.shape == (2, 3, 3, 64, 64) and inputs.min() >= -0.5 and inputs.max() <= 0.5
    assert torch.equal(pixels.to_images(inputs), images)
    assert not list(pixels.parameters()) and pixels.make_optimizer(fused=False) is None


def test_mae_figure_has_labelled_rows_with_gaps_and_the_video_marks_observed_frames(tmp_path):
    from agents.registry import make_agent
    from mwm.representations.mae import FIGURE_FRAMES, FIGURE_GAP, FIGURE_LABELS

    torch.manual_seed(0)
    cfg = config.build("toy_catch", "mwm", "tiny")
    agent = make_agent(cfg, IMAGE, gym.spaces.Discrete(3), torch.device("cpu"))
    media = agent.report(filled_replay(tmp_path))
    grid = media["mae/input_masked_reconstruction"]
    rows = 4  # input | masked | reconstruction | pasted
    assert grid.shape == (rows * 64 + (rows - 1) * FIGURE_GAP, FIGURE_LABELS + FIGURE_FRAMES * 64
                          + (FIGURE_FRAMES - 1) * FIGURE_GAP, 3)
    for r in range(1, rows):  # a white gap above every row but the first
        assert (grid[r * (64 + FIGURE_GAP) - FIGURE_GAP: r * (64 + FIGURE_GAP)] == 255).all()
    labels = grid[:, :FIGURE_LABELS]
    for r in range(rows):  # every row is labelled: dark text on the white label column
        assert (labels[r * (64 + FIGURE_GAP): r * (64 + FIGURE_GAP) + 64] < 128).any()
    video = media["wm/open_loop"]  # (T, 3H, B*W, C): truth / model / error rows
    model_row_top = video[:, 64, 0]  # first pixel of the model row's top bar, each step
    assert (model_row_top[:OPEN_LOOP_CONTEXT] == [0, 200, 0]).all()  # observed: green
    assert (model_row_top[OPEN_LOOP_CONTEXT:] == [220, 0, 0]).all()  # imagined: red
    agent.close()


class MeanColour(Representation):
    """A new representation in a dozen lines: the world model reads each frame's mean colour."""

    name = "mean_colour"

    def world_model_io(self, feat_dim):
        encoder = nn.Linear(3, 8)
        decoder = nn.Linear(feat_dim, 3)
        decoder.loss = lambda pred, target: (pred - target).pow(2).sum(-1)  # (B, T)
        return encoder, decoder, 8

    def inputs(self, images, train=False):
        return images.float().mean((-3, -2)) / 255.0  # (B, T, 3)


def test_a_new_representation_is_one_class_and_one_registry_line(tmp_path, monkeypatch):
    monkeypatch.setitem(REPRESENTATIONS, "mean_colour", f"{__name__}:MeanColour")

    class MeanColourAgent(WorldModelAgent):
        representation_name = "mean_colour"

    cfg = config.build("toy_catch", "mwm", "tiny")
    agent = MeanColourAgent(cfg, IMAGE, gym.spaces.Discrete(3), torch.device("cpu"))
    replay = filled_replay(tmp_path)
    before = [p.detach().clone() for p in agent.wm.parameters()]
    metrics = agent.update(replay)
    assert "wm/reward_loss" in metrics and not any(key.startswith("mae/") for key in metrics)
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.wm.parameters()))
    assert agent.report(replay) == {}  # nothing to draw, and it cannot decode: no video
    assert set(agent.optimizers()) == {"wm", "actor", "critic"}
    agent.close()
