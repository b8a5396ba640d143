"""benchmarks/world_model_offline.py: the held-out split, its scores, and a few updates end to end."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import world_model_offline as offline  # noqa: E402
from helpers_runs import write_toy_replay  # noqa: E402


def test_held_out_episodes_are_every_nth_and_disjoint_from_training():
    named = [(f"ep{i}.npz", {"i": i}) for i in range(12)]
    train, held = offline.split_episodes(named, 5)
    assert [name for name, _ in held] == ["ep0.npz", "ep5.npz", "ep10.npz"]
    assert not {name for name, _ in train} & {name for name, _ in held}
    assert len(train) + len(held) == len(named)
    with pytest.raises(SystemExit):
        offline.split_episodes(named[:1], 5)  # nothing left to train on


def test_sign_accuracy_counts_only_true_events_at_any_magnitude():
    truth = np.array([0.0, 1.0, -1.0, 1.0, 0.0])
    pred = np.array([0.9, 0.1, -0.2, -0.3, 0.0])  # right sign at two of three events, all below 0.5
    assert offline.event_sign_accuracy(pred, truth, 0.5) == pytest.approx(2 / 3)
    assert np.isnan(offline.event_sign_accuracy(pred, np.zeros(5), 0.5))


def test_the_squashed_rewards_invert():
    values = np.array([-3.0, -1.0, 0.0, 0.5, 2.0])
    symlog = np.sign(values) * np.log1p(np.abs(values))
    assert offline.squash_inverse(symlog, "symlog") == pytest.approx(values)
    assert offline.squash_inverse(np.tanh(values), "tanh") == pytest.approx(values, abs=1e-4)


def test_variants_parse_and_refuse_loose_flags():
    assert offline.parse_variant("big: --rssm.deter 128 --wm.head_units 128") == (
        "big", ["--rssm.deter", "128", "--wm.head_units", "128"])
    assert offline.parse_variant("base:") == ("base", [])
    with pytest.raises(Exception):
        offline.parse_variant("no colon --rssm.deter 128")
    with pytest.raises(Exception):
        offline.parse_variant("odd: --rssm.deter")


def test_a_few_updates_score_held_out_episodes_only(tmp_path):
    played = write_toy_replay(tmp_path / "replay", 6)
    out = tmp_path / "offline.json"
    code = offline.main(["--replay", str(tmp_path / "replay"), "--agent", "mwm", "--updates", "2", "--every", "1",
                         "--holdout-every", "3", "--sequences", "4", "--out", str(out), "--plot", "none",
                         "--variant", "small: --rssm.deter 16 --rssm.hidden 16",
                         "--variant", "objectives: --rssm.deter 16 --rssm.hidden 16 --wm.recon_weight change "
                                      "--wm.embed_reward_scale 10",
                         "--", "--run.pretrain", "2", "--replay.batch", "2", "--replay.length", "8",
                         "--mae.batch", "2", "--mae.length", "4"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["train_episodes"] == 4 and result["held_out_episodes"] == 2
    assert len(result["held_out_files"]) == 2
    variant = result["variants"][0]
    assert variant["name"] == "small" and [p["updates"] for p in variant["curve"]] == [1, 2]
    closed = variant["curve"][-1]["closed_loop"]
    # the predict-zero baseline is the held-out episodes' (episodes 0 and 3) mean squared symlog reward
    held_rewards = np.concatenate([played[0]["reward"], played[3]["reward"]]).astype(np.float64)
    assert closed["zero_loss"] == pytest.approx(np.mean(np.log1p(np.abs(held_rewards)) ** 2), rel=1e-5)
    assert closed["reward_loss"] >= 0 and "probe_r2_offset" in closed
    assert variant["curve"][-1]["open_loop"]["reward_events_true"] >= 0
    assert "embed_head_loss_ratio" not in closed and "embed_r2s_offset" in closed
    # the chain inputs -> encoder -> posterior -> decoder is probed link by link (tokens are narrow enough)
    assert all(f"{link}_r2_paddle" in closed for link in ("inputs", "embed", "probe", "decoded"))
    # ... and on through imagination: the posterior's probe at each of the 15 predicted steps
    opened = variant["curve"][-1]["open_loop"]
    assert len(opened["post_reward_corr_by_step"]) == 15
    for key in ("probe_r2_offset_by_step", "post_probe_r2_offset_by_step", "probe_r2_paddle_by_step"):
        assert len(opened[key]) == 15 and all(r2 <= 1 for r2 in opened[key] if r2 == r2)
    # the reward head on the encoder's output is scored like the RSSM's
    closed = result["variants"][1]["curve"][-1]["closed_loop"]
    assert closed["embed_head_loss_ratio"] >= 0 and 0 <= closed["embed_head_sign_acc"] <= 1


def test_the_flatten_pool_encoder_keeps_the_width_and_reads_every_position():
    import torch

    from mwm.world_model import FlatViTEncoder

    torch.manual_seed(0)
    encoder = offline.FlattenPoolEncoder(FlatViTEncoder(token_dim=8, num_tokens=5, width=16, depth=1, heads=2))
    tokens = torch.randn(2, 3, 5, 8)  # (B, T, L, Dt)
    out = encoder(tokens)
    assert out.shape == (2, 3, 16)
    swapped = tokens[:, :, [1, 0, 2, 3, 4]]  # the same contents, two positions exchanged
    assert not torch.allclose(encoder(swapped), out)


def test_the_open_loop_probe_scores_each_predicted_step_apart():
    """A probe fitted where the features hold the target scores 1 at a step whose features
    still hold it, and at most 0 at one whose features are noise."""
    rng = np.random.default_rng(0)
    y_train = rng.normal(size=(200, 2))
    probe = offline.ridge_fit(np.concatenate([y_train, rng.normal(size=(200, 3))], axis=1), y_train, ridge=1e-9)
    targets = rng.normal(size=(64, 3, 2))  # (B, H, K)
    feat = np.concatenate([targets, np.zeros((64, 3, 3))], axis=2)  # (B, H, F): steps 0 and 2 keep the target
    feat[:, 1] = rng.normal(size=(64, 5))  # step 1 forgot it
    r2 = offline.r2_by_step(probe, feat, targets)
    assert np.allclose(r2[0], 1.0, atol=1e-6) and np.allclose(r2[2], 1.0, atol=1e-6)
    assert max(r2[1]) < 0.1


def test_variance_share_is_the_share_of_the_variance_the_categories_explain():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (4000, 1))
    explained = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])[labels[:, 0]]  # variance 2, set by the label alone
    noise = rng.normal(0.0, np.sqrt(2.0), 4000)  # as much variance, unrelated to it
    assert offline.variance_share(np.stack([explained, noise], 1), labels) == pytest.approx(0.5, abs=0.03)
    assert offline.variance_share(explained[:, None], labels) == pytest.approx(1.0)
    assert offline.variance_share(noise[:, None], labels) == pytest.approx(0.0, abs=0.01)


def test_token_positions_place_each_things_variance_and_the_decoders_error_where_they_are():
    """Three positions: the first moves with the paddle, the second with noise, the third
    never changes. The paddle's share lies at the first position only, the shares of all
    positions sum to the whole, and the decoder's R^2 is per position."""
    rng = np.random.default_rng(0)
    paddle = rng.integers(0, 4, (3000, 1))
    tokens = np.zeros((3000, 3, 2))
    tokens[:, 0, 0] = paddle[:, 0]  # variance 1.25, all the paddle's
    tokens[:, 1] = rng.normal(0.0, 1.0, (3000, 2))  # variance 2, unrelated
    decoded = tokens.copy()
    decoded[:, 1] = 0.0  # the noise is not reconstructed (R^2 0), the paddle is (R^2 1)
    scores = offline.token_positions(tokens, {"paddle": paddle}, tokens, decoded)
    assert sum(scores["var"]) == pytest.approx(1.0)
    assert scores["var"][0] == pytest.approx(1.25 / 3.25, abs=0.03) and scores["var"][2] == 0.0
    assert scores["paddle"][0] == pytest.approx(scores["var"][0])
    assert abs(scores["paddle"][1]) < 0.01 and scores["paddle"][2] == pytest.approx(0.0, abs=1e-9)
    assert sum(scores["paddle"]) == pytest.approx(offline.variance_share(tokens.reshape(3000, -1), paddle))
    assert scores["recon_r2"][0] == pytest.approx(1.0) and scores["recon_r2"][1] == pytest.approx(0.0, abs=0.01)
    assert np.isnan(scores["recon_r2"][2])  # nothing to explain at a constant position
    summary = offline.token_summary(scores)
    assert summary["positions"] == 1 and summary["var"] == pytest.approx(scores["var"][0])
    assert summary["recon_r2"] == pytest.approx(1.0)
    assert summary["recon_r2_rest"] == pytest.approx(0.0, abs=0.01)  # the constant position weighs nothing
    assert scores["error"] == pytest.approx([0.0, 1.0, 0.0]) and summary["error"] == pytest.approx(0.0)


def test_the_token_maps_are_drawn_for_every_variant_with_token_scores(tmp_path):
    tokens = {key: list(np.linspace(0.0, 1.0, 1 + 4 * 4)) for key in ("var", "paddle", "object", "recon_r2", "error")}
    with_tokens = {"name": "a", "curve": [{"closed_loop": {"tokens": tokens}}]}
    pixels = {"name": "b", "curve": [{"closed_loop": {}}]}  # DreamerV2: no token scores, no row
    path = offline.token_plot_path(str(tmp_path / "score.png"))
    assert path == str(tmp_path / "score-tokens.png")
    offline.plot_tokens({"variants": [with_tokens, pixels, with_tokens]}, path)
    offline.plot_tokens({"variants": [with_tokens]}, str(tmp_path / "one.png"))
    from matplotlib.image import imread

    two, one = imread(path).shape, imread(str(tmp_path / "one.png")).shape  # (height, width, channels)
    assert two[1] == one[1] and two[0] > 1.8 * one[0]  # one row of maps per variant with token scores


SCORE_FLAGS = ["--", "--run.pretrain", "2", "--replay.batch", "2", "--replay.length", "8",
               "--mae.batch", "2", "--mae.length", "4", "--rssm.deter", "16", "--rssm.hidden", "16"]


def test_a_trained_runs_checkpoint_is_scored_as_it_is(tmp_path):
    import torch

    from mwm.checkpoint import save_checkpoint

    write_toy_replay(tmp_path / "replay", 6)
    args = offline.parse_args(["--replay", str(tmp_path / "replay"), "--sequences", "4", *SCORE_FLAGS])
    cfg = offline.build_config("mwm", "cpu", "toy_catch", args.overrides)
    trained = offline.make_world_model_agent(cfg, seed=7)  # other weights than the seed-0 agent --score builds
    run = tmp_path / "toy_catch-o16-mwm-seed7"
    save_checkpoint(str(run / "checkpoints"), {"agent": trained.state_dict(), "counters": {"step": 40, "updates": 9},
                                               "rng": {}}, step=40)
    train, held = offline.split_episodes(offline.load_episodes(str(tmp_path / "replay")), 3)
    expected = offline.closed_loop(trained, [ep for _, ep in train], [ep for _, ep in held], 0.5)
    trained.close()
    out = tmp_path / "score.json"
    assert offline.main(["--replay", str(tmp_path / "replay"), "--holdout-every", "3", "--sequences", "4",
                         "--score", str(run), "--out", str(out), "--plot", "none", *SCORE_FLAGS]) == 0
    (variant,) = json.loads(out.read_text())["variants"]
    (point,) = variant["curve"]
    assert variant["name"] == run.name and point["updates"] == 9
    # the encoder is deterministic (the posterior samples): its probe tells whose weights were scored
    fresh = offline.make_world_model_agent(cfg, seed=0)
    unloaded = offline.closed_loop(fresh, [ep for _, ep in train], [ep for _, ep in held], 0.5)
    fresh.close()
    assert point["closed_loop"]["embed_r2_paddle"] == pytest.approx(expected["embed_r2_paddle"])
    assert point["closed_loop"]["embed_r2_paddle"] != pytest.approx(unloaded["embed_r2_paddle"])
    assert "decoded_r2_paddle" in point["closed_loop"]
    assert 0.0 <= point["closed_loop"]["inputs_var_paddle"] <= 1.0
    tokens = point["closed_loop"]["tokens"]  # MWM reads tokens: the same, position by position
    assert len(tokens["var"]) == len(tokens["paddle"]) == len(tokens["recon_r2"]) == 1 + 8 * 8
    assert sum(tokens["paddle"]) == pytest.approx(point["closed_loop"]["inputs_var_paddle"])
    with pytest.raises(offline.UserError, match="pass --agent and, after --, the flags the run was trained with"):
        offline.main(["--replay", str(tmp_path / "replay"), "--score", str(run), "--out", str(out),
                      *SCORE_FLAGS[:-1], "32"])  # another RSSM width than the run's
    assert torch.load(next((run / "checkpoints").glob("*.pt")), weights_only=True)["counters"]["updates"] == 9


def test_scored_runs_of_one_name_from_two_logdirs_get_labels_that_tell_them_apart():
    # the end of the name (the table's column is 22 wide): what tells runs of one logdir apart
    assert offline.run_labels(["a/toy_catch-o16-mwm-seed0", "a/toy_catch-o16-mwm-seed1"]) == [
        "oy_catch-o16-mwm-seed0", "oy_catch-o16-mwm-seed1"]
    assert offline.run_labels(["runs/def16/toy_catch-o16-mwm-seed3", "runs/free16/toy_catch-o16-mwm-seed3"]) == [
        "def16/seed3", "free16/seed3"]


def test_the_ridge_probe_of_wide_inputs_equals_the_narrow_forms_solution():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 60)), rng.normal(size=(40, 2))  # wider than long: the N x N form
    x_test, y_test = rng.normal(size=(10, 60)), rng.normal(size=(10, 2))
    wide = offline.ridge_r2(x, y, x_test, y_test, 0.1)
    xc = x - x.mean(0)
    penalty = 0.1 * xc.var(0).mean() * len(xc)
    weights = np.linalg.solve(xc.T @ xc + penalty * np.eye(60), xc.T @ (y - y.mean(0)))
    pred = (x_test - x.mean(0)) @ weights + y.mean(0)
    expected = 1 - ((y_test - pred) ** 2).sum(0) / ((y_test - y_test.mean(0)) ** 2).sum(0)
    assert wide == pytest.approx(list(expected))


def test_a_scoring_point_reads_one_rollout_and_featurises_each_episode_once(tmp_path, monkeypatch):
    """The open-loop figures of diagnostics.open_loop and the ones added here (sign at events,
    probes of the prior) score the same sampled rollout, and the probes' training episodes
    are encoded once for the open- and closed-loop probes (the posterior samples, so two
    passes would fit the probes on different features)."""
    from mwm import diagnostics

    write_toy_replay(tmp_path / "replay", 6)
    args = offline.parse_args(["--replay", str(tmp_path / "replay"), "--sequences", "4", *SCORE_FLAGS])
    agent = offline.make_world_model_agent(offline.build_config("mwm", "cpu", "toy_catch", args.overrides), seed=0)
    train, held = offline.split_episodes(offline.load_episodes(str(tmp_path / "replay")), 3)
    train_eps, held_eps = [ep for _, ep in train], [ep for _, ep in held]
    windows = offline.held_out_windows(held_eps, args)
    predictions, encoded = [], []
    predict, features = diagnostics.predict, offline.posterior_features
    monkeypatch.setattr(diagnostics, "predict", lambda *a, **k: predictions.append(predict(*a, **k)) or predictions[-1])
    monkeypatch.setattr(offline, "posterior_features", lambda a, ep: encoded.append(ep) or features(a, ep))
    try:
        point = offline.score_point(agent, windows, train_eps, held_eps, 0.5)
    finally:
        agent.close()
    (rollout,) = predictions
    truth = windows["reward"][:, diagnostics.CONTEXT:].float().numpy()
    assert point["open_loop"]["reward_corr"] == pytest.approx(diagnostics.pearson(rollout["reward"].numpy(), truth),
                                                              nan_ok=True)
    assert point["open_loop"]["sign_acc"] == pytest.approx(
        offline.event_sign_accuracy(rollout["reward"].numpy(), truth, 0.5), nan_ok=True)
    probe_eps = train_eps[:offline.PROBE_EPISODES]
    assert len(encoded) == len(probe_eps) + len(held_eps)
    assert "probe_r2_paddle_by_step" in point["open_loop"] and "probe_r2_paddle" in point["closed_loop"]
