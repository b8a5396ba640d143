"""Does the world model learn reward events? Offline, on a fixed replay, variant by variant.

The learning benchmark (``benchmarks/learning.py``) scores a world model once, at the
end of a run whose data its own policy collected. This script separates the world
model from the policy: it trains a *fresh* Dreamer-family world model (mwm, dreamerv2
or siammae, at the learning benchmark's CPU setting plus each variant's flags) for
``--updates`` updates on the episodes of one FIXED replay folder, and every ``--every``
updates scores it on held-out episodes of that folder (every ``--holdout-every``-th
episode, never trained on):

- **open loop** (``mwm/diagnostics.py``): the posterior reads 5 steps, the prior
  predicts 15 under the recorded actions; the correlation of predicted and true
  rewards, reward-event precision and recall (|r| >= 0.5, matched with their sign),
  and ``sign_acc``: at the true events, the share whose prediction has the right sign
  (at any magnitude; recall also needs |prediction| >= 0.5);
- **closed loop**: the reward head on the posterior of whole held-out episodes (every
  frame observed). ``loss / zero`` is its reward loss (squared error in the
  head's squashed space, as trained) over the loss of predicting 0 everywhere: below 1
  means the latent carries reward information; with recall and ``sign_acc`` as above;
- **probe** (where the episodes record ``paddle_pos`` and ``object_pos``, as toy_catch
  does): R^2 of a ridge regression from the posterior features to the paddle's
  column, the object's column and their difference (what decides a catch), fitted on
  training episodes and scored on held-out ones. A low R^2 for the difference means
  the latent does not hold what the reward depends on. The same probe on the world
  model's inputs (MWM's tokens, DreamerV2's pixels) says whether the information was
  there to be read, the probe on the encoder's embedding (before the RSSM) whether
  the encoder or the RSSM loses it, and the probe on the decoder's reconstruction of
  the inputs from the posterior whether the decoder can express it. Where the inputs
  are narrow enough, also the share of their variance that the paddle's column, the
  object's position and both explain (``inputs_var_*``): how much a reconstruction
  loss on them asks for each. For token inputs (MWM) the same, position by position
  (``tokens``): each position's share of the token variance, the shares the paddle and
  the object explain there, the decoder's R^2 there and the position's share of the
  decoder's remaining error; a summary line per run, and maps over the patch grid
  beside the figure (``<plot>-tokens.png``). The same posterior probe, applied at every
  predicted step of the open loop to the prior's features
  (``open_loop.probe_r2_*_by_step``) and to the posterior's (``post_probe_r2_*_by_step``), says whether imagination keeps what the
  posterior held: the reward head reads the prior's features there, as the actor's
  imagined rewards do;
- the training reward loss (mean over the last ``--every`` updates) over the
  predict-zero loss of the same batches, and the KL.

For MWM the autoencoder is pre-trained on the same replay first (``run.pretrain``
updates of the setting), once per process: variants that share the autoencoder's
flags start from the same autoencoder. During the world-model updates the
autoencoder keeps training, one update per world-model update, as in a run, or stays
as pre-trained (``--representation-updates 0``: about twice as fast, and every
variant reads the same tokens). The actor-critic is not trained (it does not change
the world model).

    # a CURL run's replay holds a competent policy's episodes (many catches)
    python benchmarks/world_model_offline.py --replay runs/bench16/toy_catch-o16-curl-seed0/replay \\
        --agent mwm --updates 2000 --every 250 \\
        --variant "base:" --variant "token norm: --wm.token_norm true --wm.recon_scale 8"

``--encoder-pool flatten`` tries an encoder the library does not have yet (MWM and
SiamMAE): the flat-ViT encoder's mean over tokens is replaced by one linear map of all
its output tokens, which keeps where each thing is (:class:`FlattenPoolEncoder`).

``--score RUN [RUN ...]`` trains nothing: it scores the world model of trained runs
(each run's newest checkpoint, built at ``--setting`` with the flags after ``--``, as
the run was trained) on the held-out episodes the same way, to see where a learning
run's world model loses the paddle:

    python benchmarks/world_model_offline.py --replay runs/bench16/toy_catch-o16-curl-seed0/replay \
        --agent mwm --score runs/bench16/toy_catch-o16-mwm-seed0 runs/bench16/toy_catch-o16-mwm-seed2

A variant is ``NAME: FLAGS``, flags as for ``mwm.train`` (``--key value`` pairs),
added to the agent's learning-benchmark setting (``--setting``); extra flags for every
variant go after ``--``. Prints a table, writes JSON (``--out``) and a PNG of the
scores over updates (``--plot``).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._figures import save_png  # noqa: E402
from benchmarks.learning import SETTINGS, merge_flags  # noqa: E402
from benchmarks.world_model import DREAMER_FAMILY, to_json, write_result  # noqa: E402
from mwm.atomic import atomic_write_text  # noqa: E402
from mwm.errors import UserError  # noqa: E402

PROBE_RIDGE = 1e-2  # ridge penalty of the probe, relative to the features' mean variance
# A near-unregularised probe of the narrow features (embedding, posterior): the relative
# penalty above shrinks a direction whose variance is far below the features' mean, so a
# paddle held in a low-variance direction would read as absent. At <= 256 features and
# thousands of frames an almost plain least-squares fit does not overfit.
SMALL_RIDGE = 1e-6
SMALL_RIDGE_MAX_DIM = 256
PROBE_EPISODES = 60  # training episodes the probe is fitted on (the first ones of the split)
INPUT_PROBE_MAX_DIM = 64 * 64 * 3  # the inputs (and their reconstruction) are probed up to this size


# ------------------------------------------------------------------ data


def load_episodes(folder: str) -> List[Tuple[str, Dict[str, np.ndarray]]]:
    """(file name, episode) of every episode file in ``folder``, oldest first."""
    from replay.episodes import list_episode_files, load_episode

    files = list_episode_files(folder)
    if not files:
        raise SystemExit(f"error: no episode files in {folder}: give a replay folder of mwm.train")
    return [(Path(f.path).name, load_episode(f.path, expected_length=f.length)) for f in files]


def split_episodes(named: Sequence[Tuple[str, Dict]], every: int) -> Tuple[List, List]:
    """(train, held_out): every ``every``-th episode (the 1st, the (every+1)-th, ...) is held
    out, so that both halves span the whole replay (its early random and later policy data)."""
    held = [item for i, item in enumerate(named) if i % every == 0]
    train = [item for i, item in enumerate(named) if i % every != 0]
    if not train or not held:
        raise SystemExit(f"error: {len(named)} episodes cannot be split into training and held-out ones "
                         f"with --holdout-every {every}")
    return train, held


def event_sign_accuracy(pred: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    """At the true reward events (|truth| >= threshold), the share of predictions with the
    same sign, at any magnitude; NaN without events."""
    events = np.abs(truth) >= threshold
    if not events.any():
        return float("nan")
    return float((np.sign(pred[events]) == np.sign(truth[events])).mean())


# ------------------------------------------------------------------ the agent


def build_config(agent: str, setting: str, env: str, flags: Sequence[str]):
    """The agent's config at the learning benchmark's setting plus ``flags`` (--key value)."""
    from mwm import config as config_lib

    preset, setting_flags = SETTINGS[setting][agent]
    merged = merge_flags(setting_flags, list(flags))
    overrides = [f"{key[2:]}={value}" for key, value in zip(merged[::2], merged[1::2])]
    return config_lib.build(env, agent, preset, overrides)


def make_world_model_agent(cfg, seed: int):
    """A fresh agent of ``cfg`` on the CPU, its networks seeded with ``seed``."""
    import torch

    from agents.registry import make_agent
    from envs.vector import VectorEnv
    from mwm.run_dir import env_kwargs

    env = VectorEnv(cfg.run.env, 1, seed=seed, parallel=False, **env_kwargs(cfg))
    try:
        torch.manual_seed(seed)
        return make_agent(cfg, env.obs_space, env.act_space, torch.device("cpu"))
    finally:
        env.close()


class FlattenPoolEncoder(nn.Module):
    """MWM's flat-ViT encoder with its mean over the L tokens replaced by a linear map of
    all of them: (B, T, L, Dt) -> (B, T, W), W the encoder's width as before.

    A mean keeps *what* the tokens hold but not *which* token holds it unless the ViT
    has mixed position into content first; the linear map reads every position.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.out_dim = encoder.out_dim
        self.pool = nn.Linear(encoder.num_tokens * encoder.out_dim, encoder.out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.encoder.token_features(tokens).flatten(1)  # (B*T, L*W)
        return self.pool(x).reshape(*tokens.shape[:-2], self.out_dim)  # (B, T, W)


def use_flatten_pool(agent, cfg) -> None:
    """Give ``agent``'s world model a :class:`FlattenPoolEncoder` and a new world-model
    optimiser over its parameters (same settings as the agent's own)."""
    from mwm.config import construct
    from mwm.optim import Optimizer
    from mwm.world_model import FlatViTEncoder

    if not isinstance(agent.wm.encoder, FlatViTEncoder):
        raise SystemExit(f"error: --encoder-pool flatten needs a flat-ViT encoder (mwm, siammae), "
                         f"not {type(agent.wm.encoder).__name__}")
    agent.wm.encoder = FlattenPoolEncoder(agent.wm.encoder)
    agent.wm_opt = construct(Optimizer, cfg.wm, name="model", params=agent.wm.parameters())


# ------------------------------------------------------------------ scores


def posterior_features(agent, episode: Dict[str, np.ndarray]) -> Dict[str, object]:
    """One whole episode through the world model: ``inputs`` it reads, flattened (T, n), the
    encoder's ``embed`` (T, E), the posterior features ``feat`` (T, F), the decoder's
    reconstruction of the inputs from them ``decoded`` (T, n) and the reward head's
    squashed predictions ``head`` (T,); for token inputs (P positions of width D) their
    ``token_shape`` (P, D); with ``wm.embed_reward_scale`` > 0 also those of the
    reward head on the encoder's output, ``embed_head`` (T,)."""
    import torch

    wm = agent.wm
    images = torch.as_tensor(episode["image"])[None]  # (1, T, H, W, C)
    action = torch.as_tensor(episode["action"]).float()[None]  # (1, T, A)
    is_first = torch.as_tensor(episode["is_first"])[None].clone()
    is_first[:, 0] = True
    inputs = agent.representation.inputs(images).float()  # (1, T, ...)
    embed = wm.encoder(inputs)  # (1, T, E)
    post, _ = wm.rssm.observe(embed, action, is_first)
    feat = wm.feature(post)  # (1, T, F)
    out = {"inputs": inputs[0].flatten(1), "embed": embed[0], "feat": feat[0], "head": wm.reward_head(feat)[0],
           "decoded": wm.decoder(feat)[0].flatten(1)}
    if inputs.dim() == 4:  # (1, T, P, D) tokens: where each position's values lie in ``inputs``
        out["token_shape"] = tuple(inputs.shape[2:])
    if getattr(wm, "embed_reward_head", None) is not None:
        out["embed_head"] = wm.embed_reward_head(embed)[0]
    return out


def ridge_fit(x_train: np.ndarray, y_train: np.ndarray, ridge: float = PROBE_RIDGE):
    """A ridge regression x (N, F) -> y (N, K), returned as the function that applies it; the
    penalty is ``ridge`` times the features' mean variance times N."""
    mean_x, mean_y = x_train.mean(0), y_train.mean(0)
    xc = x_train - mean_x
    penalty = ridge * xc.var(0).mean() * len(xc)
    if xc.shape[1] <= xc.shape[0]:
        weights = np.linalg.solve(xc.T @ xc + penalty * np.eye(xc.shape[1]), xc.T @ (y_train - mean_y))  # (F, K)
    else:  # wider than long (pixels): the same solution from the N x N system
        weights = xc.T @ np.linalg.solve(xc @ xc.T + penalty * np.eye(len(xc)), y_train - mean_y)  # (F, K)
    return lambda x: (x - mean_x) @ weights + mean_y


def r2_scores(y_test: np.ndarray, pred: np.ndarray) -> List[float]:
    """R^2 per target column of predictions (N, K) of ``y_test`` (N, K)."""
    residual = ((y_test - pred) ** 2).sum(0)
    total = ((y_test - y_test.mean(0)) ** 2).sum(0)
    return [float(1 - r / t) if t > 0 else float("nan") for r, t in zip(residual, total)]


def ridge_r2(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             ridge: float = PROBE_RIDGE) -> List[float]:
    """R^2 on the test set of :func:`ridge_fit` per target column: x (N, F), y (N, K)."""
    return r2_scores(y_test, ridge_fit(x_train, y_train, ridge)(x_test))


def r2_by_step(probe, feat: np.ndarray, targets: np.ndarray) -> List[List[float]]:
    """A fitted probe applied at each step of windows: feat (B, H, F), targets (B, H, K) ->
    [h][k] the R^2 across the B windows at step h."""
    return [r2_scores(targets[:, h], probe(feat[:, h])) for h in range(feat.shape[1])]


def probe_targets(episode: Dict[str, np.ndarray]) -> np.ndarray | None:
    """(T, 3): the paddle's column, the object's column and their difference; None where
    the episodes do not record them."""
    if "paddle_pos" not in episode or "object_pos" not in episode:
        return None
    paddle, obj = episode["paddle_pos"][:, 1], episode["object_pos"][:, 1]
    return np.stack([paddle, obj, obj - paddle], axis=1).astype(np.float64)


def explained_variance(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per column of ``x`` (N, F), the variance that the categories ``labels`` (N, K) explain
    (F,): total minus residual variance of a least-squares fit on their one-hot codes (each
    column of ``labels`` coded apart, plus a constant)."""
    codes = [np.ones((len(x), 1))]
    for column in labels.T:
        _, index = np.unique(column, return_inverse=True)
        codes.append(np.eye(index.max() + 1)[index][:, 1:])  # one level dropped: the constant holds it
    design = np.concatenate(codes, axis=1)
    coef, *_ = np.linalg.lstsq(design, x, rcond=None)
    return x.var(0) - (x - design @ coef).var(0)


def variance_share(x: np.ndarray, labels: np.ndarray) -> float:
    """The share of the summed variance of ``x`` (N, F) that the categories ``labels`` (N, K)
    explain (:func:`explained_variance`). How much a reconstruction loss on ``x`` asks for
    what the labels hold."""
    total = x.var(0).sum()
    return float(explained_variance(x, labels).sum() / total) if total > 0 else float("nan")


def token_positions(inputs: np.ndarray, labels: Dict[str, np.ndarray], held_inputs: np.ndarray,
                    held_decoded: np.ndarray) -> Dict[str, List[float]]:
    """Where in a token grid the loss asks for each thing, and where the decoder delivers.

    ``inputs`` (N, P, D): tokens at P positions (MWM: the class token, then the patches row
    by row) of the frames the shares are measured on; ``labels``: name -> (N, K) categories
    (the paddle's column, the object's position); ``held_inputs`` / ``held_decoded`` (M, P, D):
    held-out tokens and the decoder's reconstruction of them from the posterior. Per
    position: ``var``, its share of the tokens' summed variance (the share of an unweighted
    token loss it carries); ``<name>``, the share of the whole token variance that the
    labels explain there (summed over positions: :func:`variance_share` of all tokens);
    ``recon_r2``, the decoder's R^2 there (1 - squared error / variance, held out);
    ``error``, its share of the decoder's summed squared error (what is left of the loss)."""
    n, positions, width = inputs.shape
    var = inputs.var(0)  # (P, D)
    total = var.sum()
    out = {"var": list(var.sum(1) / total)}
    for name, label in labels.items():
        explained = explained_variance(inputs.reshape(n, -1), label).reshape(positions, width)  # (P, D)
        out[name] = list(explained.sum(1) / total)
    error = ((held_inputs - held_decoded) ** 2).sum((0, 2))  # (P,)
    spread = ((held_inputs - held_inputs.mean(0)) ** 2).sum((0, 2))  # (P,)
    out["recon_r2"] = [float(1 - e / s) if s > 0 else float("nan") for e, s in zip(error, spread)]
    out["error"] = list(error / error.sum()) if error.sum() > 0 else [float("nan")] * positions
    return {key: [float(v) for v in values] for key, values in out.items()}


def probe_features(agent, train_eps: Sequence[Dict]) -> List[Dict[str, np.ndarray]]:
    """:func:`posterior_features_numpy` of the probes' training episodes (the first
    ``PROBE_EPISODES`` of ``train_eps``); none where the episodes carry no probe targets."""
    probe_eps = train_eps[:PROBE_EPISODES]
    if not probe_eps or probe_targets(probe_eps[0]) is None:
        return []
    return [posterior_features_numpy(agent, episode) for episode in probe_eps]


def score_point(agent, windows: Dict, train_eps: Sequence[Dict], held_eps: Sequence[Dict],
                threshold: float) -> Dict[str, Dict]:
    """The open- and closed-loop scores of one scoring point, the probes' training features
    computed once for both."""
    probe_feats = probe_features(agent, train_eps)
    return {"open_loop": open_loop_scores(agent, windows, threshold, train_eps, probe_feats),
            "closed_loop": closed_loop(agent, train_eps, held_eps, threshold, probe_feats)}


def closed_loop(agent, train_eps: Sequence[Dict], held_eps: Sequence[Dict], threshold: float,
                probe_feats: Sequence[Dict] | None = None) -> Dict[str, float]:
    """Reward predictions from the posterior of whole held-out episodes, and the probe
    (fitted on ``probe_feats``, :func:`probe_features` of ``train_eps``; made here if None)."""
    import torch

    from mwm.diagnostics import event_scores, pearson
    from mwm.heads import squash

    transform = agent.wm.reward_transform
    held = [posterior_features_numpy(agent, episode) for episode in held_eps]
    targets_available = probe_targets(held_eps[0]) is not None
    probe_eps = train_eps[:PROBE_EPISODES] if targets_available else []
    train = list(probe_feats) if probe_feats is not None else probe_features(agent, train_eps)
    head = np.concatenate([out["head"] for out in held])  # (N,) squashed predictions
    truth = np.concatenate([episode["reward"] for episode in held_eps]).astype(np.float64)  # (N,)
    target = squash(torch.as_tensor(truth), transform).numpy()
    reward = squash_inverse(head, transform)
    out = {"reward_loss": float(((head - target) ** 2).mean()), "zero_loss": float((target ** 2).mean()),
           "reward_corr": pearson(reward, truth), **event_scores(reward, truth, threshold),
           "sign_acc": event_sign_accuracy(reward, truth, threshold)}
    out["loss_ratio"] = out["reward_loss"] / out["zero_loss"] if out["zero_loss"] > 0 else float("nan")
    if "embed_head" in held[0]:  # the reward head on the encoder's output (wm.embed_reward_scale)
        embed_head = np.concatenate([o["embed_head"] for o in held])  # (N,) squashed
        out["embed_head_loss_ratio"] = float(((embed_head - target) ** 2).mean()) / out["zero_loss"]
        out["embed_head_sign_acc"] = event_sign_accuracy(squash_inverse(embed_head, transform), truth, threshold)
    if targets_available:
        y_train = np.concatenate([probe_targets(episode) for episode in probe_eps])  # (N, 3)
        y_test = np.concatenate([probe_targets(episode) for episode in held_eps])
        # the posterior features, the encoder's embedding and (up to 64 x 64 x 3) the inputs and
        # the decoder's reconstruction of them from the posterior
        for name, key in (("probe", "feat"), ("embed", "embed"), ("inputs", "inputs"), ("decoded", "decoded")):
            if key in ("inputs", "decoded") and held[0][key].shape[1] > INPUT_PROBE_MAX_DIM:
                continue
            r2 = ridge_r2(np.concatenate([o[key] for o in train]), y_train,
                          np.concatenate([o[key] for o in held]), y_test)
            out.update({f"{name}_r2_paddle": r2[0], f"{name}_r2_object": r2[1], f"{name}_r2_offset": r2[2]})
            if key in ("feat", "embed") and held[0][key].shape[1] <= SMALL_RIDGE_MAX_DIM:
                r2 = ridge_r2(np.concatenate([o[key] for o in train]), y_train,
                              np.concatenate([o[key] for o in held]), y_test, SMALL_RIDGE)
                out.update({f"{name}_r2s_paddle": r2[0], f"{name}_r2s_object": r2[1], f"{name}_r2s_offset": r2[2]})
        if held[0]["inputs"].shape[1] <= INPUT_PROBE_MAX_DIM:  # how much of the inputs the objects make up
            inputs = np.concatenate([o["inputs"] for o in train + held])
            episodes = [*probe_eps, *held_eps]
            paddle = np.concatenate([ep["paddle_pos"][:, 1:2] for ep in episodes])  # (N, 1) column
            obj = np.concatenate([ep["object_pos"] for ep in episodes])  # (N, 2) row, column
            out["inputs_var_paddle"] = variance_share(inputs, paddle)
            out["inputs_var_object"] = variance_share(inputs, obj)
            out["inputs_var_both"] = variance_share(inputs, np.concatenate([paddle, obj], axis=1))
            shape = held[0].get("token_shape")
            if shape is not None:  # token inputs: the same, position by position
                grid = (-1, *shape)
                out["tokens"] = token_positions(
                    inputs.reshape(grid), {"paddle": paddle, "object": obj},
                    np.concatenate([o["inputs"] for o in held]).reshape(grid),
                    np.concatenate([o["decoded"] for o in held]).reshape(grid))
    return out


def posterior_features_numpy(agent, episode: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """:func:`posterior_features` in eval mode without gradients, as float64 numpy arrays."""
    import torch

    was_training = agent.wm.training
    agent.wm.eval()
    try:
        with torch.no_grad():
            return {key: value.double().numpy() if torch.is_tensor(value) else value
                    for key, value in posterior_features(agent, episode).items()}
    finally:
        agent.wm.train(was_training)


def squash_inverse(values: np.ndarray, transform: str) -> np.ndarray:
    """The agent's reward units from the head's squashed space (symexp, atanh or identity)."""
    if transform == "symlog":
        return np.sign(values) * np.expm1(np.abs(values))
    if transform == "tanh":
        return np.arctanh(np.clip(values, -0.999999, 0.999999))
    return values


def open_loop_scores(agent, windows: Dict, threshold: float, train_eps: Sequence[Dict],
                     probe_feats: Sequence[Dict]) -> Dict[str, float]:
    """:func:`mwm.diagnostics.open_loop` on the held-out windows, with the sign accuracy; where
    the windows carry ``probe_targets`` (B, T, 3), the probe of the open loop: the ridge probe
    fitted on the posterior features of ``train_eps`` (as in :func:`closed_loop`), applied at
    every predicted step to the prior's features (``probe_r2_*_by_step``, what the reward
    head reads in imagination) and to the posterior's (``post_probe_r2_*_by_step``, every
    step observed). ``post_sign_acc`` and ``post_reward_corr_by_step`` score the reward head
    on the posterior of the same steps. Every score reads one sampled rollout.
    ``probe_feats``: :func:`probe_features` of ``train_eps`` (none: no probe)."""
    import torch

    from mwm import diagnostics

    with torch.no_grad():
        was_training = agent.wm.training
        agent.wm.eval()
        try:
            predicted = diagnostics.predict(agent, windows)
        finally:
            agent.wm.train(was_training)
    result = diagnostics.open_loop(agent, windows, threshold=threshold, prediction=predicted)
    pred = predicted["reward"].numpy()  # (B, H)
    truth = windows["reward"][:, diagnostics.CONTEXT:].float().numpy()
    keys = ("reward_corr", "reward_precision", "reward_recall", "reward_events_true", "reward_events_predicted",
            "kl", "post_entropy", "recon_error_observed")
    out = {key: float(result[key]) for key in keys}
    out["reward_corr_by_step"] = result["reward_corr_by_step"]
    out["recon_error_h15"] = float(result["recon_error_by_step"][-1])
    out["sign_acc"] = event_sign_accuracy(pred, truth, threshold)
    # the reward head on the posterior of the same steps (every frame observed): what it can
    # read off the frames, against what it predicts in imagination
    with torch.no_grad():
        post_reward = agent.wm.reward(predicted["post_feat"][:, diagnostics.CONTEXT:]).float().numpy()  # (B, H)
    out["post_sign_acc"] = event_sign_accuracy(post_reward, truth, threshold)
    out["post_reward_corr_by_step"] = [diagnostics.pearson(post_reward[:, h], truth[:, h])
                                       for h in range(truth.shape[1])]
    if "probe_targets" in windows and probe_feats:
        probe_eps = train_eps[:PROBE_EPISODES]
        probe = ridge_fit(np.concatenate([part["feat"] for part in probe_feats]),
                          np.concatenate([probe_targets(ep) for ep in probe_eps]))
        targets = windows["probe_targets"][:, diagnostics.CONTEXT:]  # (B, H, 3)
        events = np.abs(truth) >= threshold  # (B, H): where a catch or miss is decided
        for prefix, feat in (("probe", predicted["feat"]),
                             ("post_probe", predicted["post_feat"][:, diagnostics.CONTEXT:])):
            feat = feat.double().numpy()  # (B, H, F)
            by_step = r2_by_step(probe, feat, targets)  # [h][paddle, object, offset]
            for k, name in enumerate(("paddle", "object", "offset")):
                out[f"{prefix}_r2_{name}_by_step"] = [step[k] for step in by_step]
            if events.any():  # the steps where the reward head must know the offset
                r2 = r2_scores(targets[events], probe(feat[events]))
                out.update({f"{prefix}_r2_{name}_at_events": r2[k]
                            for k, name in enumerate(("paddle", "object", "offset"))})
    return out


# ------------------------------------------------------------------ training


def held_out_windows(held_eps: Sequence[Dict], args) -> Dict:
    """The open loop's windows (5 observed + 15 predicted steps) cut from the held-out
    episodes, ``args.sequences`` of them, the same for every variant and run (``args.seed``)."""
    import torch

    from mwm import diagnostics

    positions = ("paddle_pos", "object_pos") if probe_targets(held_eps[0]) is not None else ()
    windows = diagnostics.cut_windows(held_eps, diagnostics.CONTEXT + diagnostics.HORIZON, args.sequences,
                                      np.random.default_rng(args.seed), (*diagnostics.SEQUENCE_KEYS, *positions))
    out = {key: torch.as_tensor(windows[key]) for key in diagnostics.SEQUENCE_KEYS}
    if positions:  # (B, T, 3): paddle column, object column, offset, for the probe of the open loop
        lead = windows["reward"].shape  # (B, T)
        flat = probe_targets({key: windows[key].reshape(-1, windows[key].shape[-1]) for key in positions})
        out["probe_targets"] = flat.reshape(*lead, flat.shape[-1])
    return out


@contextmanager
def replay_of(episodes: Sequence[Dict], seed: int):
    """A replay in a temporary folder holding ``episodes`` (nothing saved to disk), removed on exit."""
    from replay import Replay

    with tempfile.TemporaryDirectory() as folder:
        replay = Replay(folder, capacity=10 ** 9, seed=seed)
        for episode in episodes:
            replay.add_episode(episode, save=False)
        yield replay


def train_variant(name: str, flags: List[str], args, train: List, held: List, pretrained: Dict) -> Dict:
    """Train one fresh world model on the training episodes; score it every ``args.every`` updates."""
    from agents.world_model_agent import WM_KEYS
    from mwm.heads import squash

    cfg = build_config(args.agent, args.setting, args.env, [*flags, *args.overrides])
    agent = make_world_model_agent(cfg, args.seed)
    if args.encoder_pool == "flatten":
        use_flatten_pool(agent, cfg)
    train_eps, held_eps = [ep for _, ep in train], [ep for _, ep in held]
    windows = held_out_windows(held_eps, args)
    curve, start = [], time.time()
    with replay_of(train_eps, args.seed) as replay:
        try:
            pretrain = int(cfg.run.pretrain) if hasattr(agent, "pretrain") else 0
            if pretrain > 1:  # an autoencoder to pre-train (DreamerV2's one update is no pre-training)
                key = json.dumps({"mae": dict(cfg.mae), "updates": pretrain}, sort_keys=True, default=str)
                if key not in pretrained:
                    print(f"{name}: pre-training the autoencoder, {pretrain} updates ...", flush=True)
                    agent.pretrain(replay, pretrain)
                    pretrained[key] = {"mae": agent.representation.mae.state_dict(), "opt": agent.rep_opt.state_dict()}
                agent.representation.mae.load_state_dict(pretrained[key]["mae"])
                agent.rep_opt.load_state_dict(pretrained[key]["opt"])
            losses, zeros = [], []
            for update in range(1, args.updates + 1):
                if args.representation_updates:
                    agent.representation_update(replay)
                batch = agent.batches(replay, "wm", cfg.replay.batch, cfg.replay.length)
                batch = {key: batch[key] for key in WM_KEYS}
                metrics, _ = agent.world_model_step(batch)
                losses.append(float(metrics["wm/reward_loss"]))
                zeros.append(float(squash(batch["reward"].float(), cfg.wm.reward_transform).pow(2).mean()))
                if update % args.every == 0 or update == args.updates:
                    point = {"updates": update, "seconds": time.time() - start,
                             "train_reward_loss": float(np.mean(losses)), "train_zero_loss": float(np.mean(zeros)),
                             **score_point(agent, windows, train_eps, held_eps, args.threshold)}
                    curve.append(point)
                    print_row(name, point, flush=True)
                    losses, zeros = [], []
        finally:
            agent.close()
    return {"name": name, "flags": flags, "config_overrides": [*flags, *args.overrides],
            "seconds": time.time() - start, "curve": curve}


def run_labels(runs: Sequence[str]) -> List[str]:
    """Row labels of scored runs: the end of each run folder's name, which tells runs of one
    logdir apart (agent, seed); where two folders of that name are scored (from two
    logdirs), the logdir's name and the last part of the run's (``def16b/seed3``)."""
    names = [Path(run).name for run in runs]
    return [f"{Path(run).parent.name}/{name.rsplit('-', 1)[-1]}" if names.count(name) > 1 else name[-22:]
            for run, name in zip(runs, names)]


def score_run(run: str, args, train: List, held: List, label: str) -> Dict:
    """A trained run's world model (its newest checkpoint), scored once as a variant would be."""
    from mwm.checkpoint import load_latest

    state, path = load_latest(str(Path(run) / "checkpoints"))
    if state is None:
        raise UserError(f"no checkpoint in {run}/checkpoints: pass the folder of a run of mwm.train")
    cfg = build_config(args.agent, args.setting, args.env, args.overrides)
    agent = make_world_model_agent(cfg, args.seed)
    try:
        try:
            agent.load_state_dict(state["agent"])
        except (RuntimeError, KeyError) as error:
            raise UserError(f"{path} is not a {args.agent} of setting {args.setting} with flags {args.overrides} "
                            f"({str(error).splitlines()[0]}): pass --agent and, after --, the flags the run was "
                            "trained with") from None
        held_eps = [ep for _, ep in held]
        windows = held_out_windows(held_eps, args)
        point = {"updates": int(state["counters"].get("updates", 0)), "seconds": 0.0,
                 "train_reward_loss": float("nan"), "train_zero_loss": float("nan"),
                 **score_point(agent, windows, [ep for _, ep in train], held_eps, args.threshold)}
    finally:
        agent.close()
    print_row(label, point, flush=True)
    return {"name": Path(run).name, "label": label, "checkpoint": str(path), "flags": [], "config_overrides": list(args.overrides),
            "seconds": 0.0, "curve": [point]}


# ------------------------------------------------------------------ output


def token_rows(result: Dict) -> List[Tuple[str, Dict]]:
    """(label, closed-loop scores of the last point) of each variant whose inputs are tokens
    (the ones :func:`token_positions` scored)."""
    rows = [(v.get("label", v["name"]), v["curve"][-1]["closed_loop"]) for v in result["variants"]]
    return [(label, closed) for label, closed in rows if "tokens" in closed]


def token_summary(tokens: Dict[str, List[float]], name: str = "paddle") -> Dict[str, float]:
    """:func:`token_positions` in four figures: the fewest positions that hold half of what
    ``name`` explains of the tokens (``positions``), their share of the token variance
    (``var``), the decoder's R^2 there and at the other positions, each weighted by the
    positions' variance (``recon_r2``, ``recon_r2_rest``), and the share of the decoder's
    squared error there (``error``)."""
    share, var, r2 = (np.asarray(tokens[key]) for key in (name, "var", "recon_r2"))
    order = np.argsort(-share)
    count = int(np.searchsorted(np.cumsum(share[order]), share.sum() / 2) + 1)
    chosen = np.zeros(len(share), dtype=bool)
    chosen[order[:count]] = True

    def weighted(mask):
        mask = mask & np.isfinite(r2)  # a position that never changes has no R^2, and weighs nothing
        return float((var[mask] * r2[mask]).sum() / var[mask].sum()) if var[mask].sum() > 0 else float("nan")

    return {"positions": count, "var": float(var[chosen].sum()), "recon_r2": weighted(chosen),
            "recon_r2_rest": weighted(~chosen), "error": float(np.asarray(tokens["error"])[chosen].sum())}


def fmt(value, width: int = 6, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{value:{width}.{digits}f}"


HEADER = (f"{'variant':<22} {'upd':>5} | {'train r/0':>9} | closed: {'r/0':>5} {'recall':>6} {'sign':>5} "
          f"{'R2 pad':>6} {'R2 obj':>6} {'R2 off':>6} {'em off':>6} {'in off':>6} "
          f"| open: {'corr':>5} {'prec':>5} {'recall':>6} {'sign':>5} {'kl':>5}")


def print_row(name: str, point: Dict, flush: bool = False) -> None:
    c, o = point["closed_loop"], point["open_loop"]
    ratio = point["train_reward_loss"] / point["train_zero_loss"] if point["train_zero_loss"] else float("nan")
    print(f"{name[:22]:<22} {point['updates']:>5} | {fmt(ratio, 9)} | closed: {fmt(c['loss_ratio'], 5)} "
          f"{fmt(c['reward_recall'])} {fmt(c['sign_acc'], 5)} {fmt(c.get('probe_r2_paddle'))} "
          f"{fmt(c.get('probe_r2_object'))} {fmt(c.get('probe_r2_offset'))} {fmt(c.get('embed_r2_offset'))} "
          f"{fmt(c.get('inputs_r2_offset'))} "
          f"| open: {fmt(o['reward_corr'], 5)} {fmt(o['reward_precision'], 5)} {fmt(o['reward_recall'])} "
          f"{fmt(o['sign_acc'], 5)} {fmt(o['kl'], 5)}"
          f"{encoder_columns(c)}{open_probe_columns(o)}",
          flush=flush)


def encoder_columns(c: Dict) -> str:
    """The encoder's paddle R^2 and, with a reward head on the encoder's output, its reward loss
    over predicting 0 and sign at events; empty where not measured."""
    if "embed_r2_paddle" not in c:
        return ""
    text = f" | encoder: pad {fmt(c['embed_r2_paddle'], 5)}"
    if "embed_r2s_paddle" in c:  # the near-unregularised probe
        text += f" (small ridge: pad {fmt(c['embed_r2s_paddle'], 5)} off {fmt(c['embed_r2s_offset'], 5)})"
    if "decoded_r2_paddle" in c:
        text += f" | decoded: pad {fmt(c['decoded_r2_paddle'], 5)} off {fmt(c['decoded_r2_offset'], 5)}"
    if "embed_head_loss_ratio" in c:
        text += f" r/0 {fmt(c['embed_head_loss_ratio'], 5)} sign {fmt(c['embed_head_sign_acc'], 5)}"
    return text


def open_probe_columns(o: Dict) -> str:
    """The offset's R^2 in the open loop's prior features at predicted steps 1, 8 and 15 and at
    the reward events, and in the posterior's at the events; empty where not measured."""
    if "probe_r2_offset_by_step" not in o:
        return ""
    prior = o["probe_r2_offset_by_step"]
    steps = " ".join(f"h{h + 1} {fmt(prior[h], 5)}" for h in sorted({0, len(prior) // 2, len(prior) - 1}))
    return (f" | open-loop offset R2: prior {steps}, at events prior {fmt(o.get('probe_r2_offset_at_events'), 5)}"
            f" posterior {fmt(o.get('post_probe_r2_offset_at_events'), 5)}")


def print_table(result: Dict) -> None:
    trained = (f"{result['updates']} updates on {result['train_episodes']} episodes of {result['replay']}"
               if result["updates"] else f"trained runs' (probes fitted on {result['train_episodes']} episodes "
               f"of {result['replay']})")
    print(f"\n{result['agent']} world model, {trained}; scored on {result['held_out_episodes']} held-out episodes")
    print("train r/0, closed r/0: reward loss over the loss of predicting 0 (below 1: it learned something); "
          "recall / sign: reward events found / of the right sign; R2: probe of paddle, object, object - paddle "
          "from the posterior features; em off, in off: of object - paddle from the encoder's embedding, "
          "from the inputs")
    print(HEADER)
    for variant in result["variants"]:
        for point in variant["curve"]:
            print_row(variant.get("label", variant["name"]), point)
    tokens = token_rows(result)
    if tokens:
        print("\ntokens, position by position (last point): the fewest positions holding half the token variance "
              "the paddle's column explains, their share of all token variance, and the decoder's R^2 there and "
              "elsewhere, and their share of the decoder's squared error")
        for label, closed in tokens:
            summary = token_summary(closed["tokens"])
            print(f"{label[:22]:<22} paddle explains {fmt(closed['inputs_var_paddle'], 4)} of the tokens, half of it "
                  f"in {summary['positions']} of {len(closed['tokens']['var'])} positions ({fmt(summary['var'], 4)} "
                  f"of the variance) | decoder R^2 there {fmt(summary['recon_r2'], 4)}, elsewhere "
                  f"{fmt(summary['recon_r2_rest'], 4)}; {fmt(summary['error'], 4)} of its error")


def plot(result: Dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("closed_loop", "loss_ratio", "closed loop: reward loss / predict-0\n(lower is better)"),
              ("closed_loop", "probe_r2_offset", "probe R^2, object - paddle column\n"
                                                 "posterior -, encoder output --, inputs :"),
              ("open_loop", "reward_corr", "open loop, 15 steps: reward corr.\n(higher is better)"),
              ("open_loop", "reward_recall", "open loop: reward-event recall\n(higher is better)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, (part, key, title) in zip(axes, panels):
        extra = [("embed_r2_offset", "--"), ("inputs_r2_offset", ":")] if key == "probe_r2_offset" else []
        for i, variant in enumerate(result["variants"]):
            xs = [p["updates"] for p in variant["curve"]]
            for line_key, style in [(key, "-"), *extra]:
                ys = [p[part].get(line_key) for p in variant["curve"]]
                if all(y is None for y in ys):
                    continue
                ys = [np.nan if y is None else y for y in ys]
                axis.plot(xs, ys, style, marker="o", markersize=3, color=colours[i % len(colours)],
                          label=variant["name"] if style == "-" else None)
        axis.set(title=title, xlabel="world-model updates")
    axes[0].axhline(1.0, color="grey", linewidth=0.8)
    axes[1].set_ylim(0.0, 1.05)
    axes[-1].legend(fontsize=7)
    save_png(fig, path)


def plot_tokens(result: Dict, path: str) -> None:
    """Per variant (its last point) a row of square maps over the patch grid (the class token's
    value in the title): each position's share of the token variance, the shares the
    paddle's column and the object's position explain, and the decoder's R^2 there."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(label, closed["tokens"]) for label, closed in token_rows(result)]
    panels = [("var", "share of token variance", "viridis", None),
              ("paddle", "explained by the paddle's column", "viridis", None),
              ("object", "explained by the object's position", "viridis", None),
              ("recon_r2", "decoder R^2 (held out)", "RdYlGn", (0.0, 1.0))]
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(3.4 * len(panels), 3.0 * len(rows)), squeeze=False)
    for row, (label, tokens) in zip(axes, rows):
        side = math.isqrt(len(tokens["var"]) - 1)  # the class token first, then a square grid of patches
        top = max(float(np.asarray(tokens["var"])[1:].max()), 1e-12)  # the shares on one scale
        for axis, (key, title, cmap, limits) in zip(row, panels):
            values = np.asarray(tokens[key])
            vmin, vmax = limits or (0.0, top)
            image = axis.imshow(values[1:].reshape(side, side), cmap=cmap, vmin=vmin, vmax=vmax)
            axis.set_title(f"{label}\n{title}\n(class token {values[0]:.2f})", fontsize=8)
            axis.set_xticks([])
            axis.set_yticks([])
            fig.colorbar(image, ax=axis, fraction=0.046)
    save_png(fig, path)


def token_plot_path(plot_path: str) -> str:
    """Where the token maps go: beside ``plot_path`` with ``-tokens`` added."""
    path = Path(plot_path)
    return str(path.with_name(f"{path.stem}-tokens{path.suffix}"))


def parse_variant(text: str) -> Tuple[str, List[str]]:
    """'NAME: --key value ...' -> (NAME, flags)."""
    name, sep, flags = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"a variant is 'NAME: FLAGS', got {text!r}")
    flags = shlex.split(flags)
    if len(flags) % 2 or any(not key.startswith("--") for key in flags[::2]):
        raise argparse.ArgumentTypeError(f"variant {name!r}: flags must be '--key value' pairs, got {flags}")
    return name.strip(), flags


def add_replay_arguments(p: argparse.ArgumentParser, agents: Sequence[str]) -> None:
    """The options of a script that trains fresh agents on a fixed replay: the replay, the
    agent, its env and setting, and the variants (also benchmarks/mae_plateau.py)."""
    p.add_argument("--replay", required=True, help="a replay folder of mwm.train (<run>/replay), never written")
    p.add_argument("--agent", default="mwm", choices=agents)
    p.add_argument("--env", default="toy_catch", help="the env the episodes come from (for its spaces)")
    p.add_argument("--setting", default="cpu", choices=sorted(SETTINGS), help="benchmarks/learning.py setting")
    p.add_argument("--variant", dest="variants", action="append", type=parse_variant,
                   help="'NAME: FLAGS' (repeatable); default one variant 'setting' with no extra flags")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_replay_arguments(p, DREAMER_FAMILY)
    p.add_argument("--score", nargs="+", metavar="RUN",
                   help="train nothing: score the world model of each trained run (its newest checkpoint, built "
                        "at --setting with the flags after --) on the held-out episodes")
    p.add_argument("--updates", type=int, default=2000, help="world-model updates per variant")
    p.add_argument("--every", type=int, default=250, help="score every this many updates")
    p.add_argument("--representation-updates", type=int, default=1, choices=(0, 1),
                   help="1: the representation (MWM's autoencoder) trains beside the world model, as in a run; "
                        "0: it stays as pre-trained (faster, and every variant reads the same inputs)")
    p.add_argument("--encoder-pool", default="mean", choices=("mean", "flatten"),
                   help="mean: the library's flat-ViT encoder; flatten: FlattenPoolEncoder (an experiment)")
    p.add_argument("--holdout-every", type=int, default=5, help="every this-many-th episode is held out")
    p.add_argument("--sequences", type=int, default=256, help="held-out windows of 5 + 15 steps (open loop)")
    p.add_argument("--threshold", type=float, default=0.5, help="|reward| of a reward event")
    p.add_argument("--seed", type=int, default=0, help="network initialisation, replay sampling and windows")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default="world_model_offline.json")
    p.add_argument("--plot", help="PNG path (default: --out with .png), or 'none'")
    p.add_argument("overrides", nargs="*", help="flags for every variant, after --, e.g. -- --replay.batch 32")
    args = p.parse_args(argv)
    if args.score and args.variants:
        p.error("--score scores trained runs as they are: drop --variant (flags after -- say how they were built)")
    args.variants = args.variants or [("setting", [])]
    if min(args.updates, args.every, args.sequences) < 1 or args.holdout_every < 2:
        p.error("--updates, --every and --sequences must be at least 1, --holdout-every at least 2")
    if args.agent not in SETTINGS[args.setting]:
        p.error(f"setting {args.setting} has no {args.agent}")
    if len(args.overrides) % 2:
        p.error("flags after -- must be '--key value' pairs")
    args.plot = args.plot or str(Path(args.out).with_suffix(".png"))
    return args


def write_outputs(result: Dict, args) -> None:
    """The table, the JSON, the figure and, for token inputs, the token maps."""
    print_table(result)
    write_result(result, args.out, plot, args.plot)
    if args.plot != "none" and token_rows(result):
        plot_tokens(result, token_plot_path(args.plot))


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    named = load_episodes(args.replay)
    train, held = split_episodes(named, args.holdout_every)
    result = {"replay": str(args.replay), "agent": args.agent, "setting": args.setting, "updates": args.updates,
              "every": args.every, "representation_updates": args.representation_updates,
              "encoder_pool": args.encoder_pool, "seed": args.seed,
              "threshold": args.threshold, "overrides": args.overrides,
              "train_episodes": len(train), "held_out_episodes": len(held),
              "held_out_files": [name for name, _ in held], "variants": []}
    print(f"{len(train)} training and {len(held)} held-out episodes from {args.replay}")
    print(HEADER)
    if args.score:
        result["updates"] = None  # trained runs: nothing trained here
        result["variants"] = [score_run(run, args, train, held, label)
                              for run, label in zip(args.score, run_labels(args.score))]
        write_outputs(result, args)
        return 0
    pretrained: Dict = {}  # autoencoders pre-trained in this process, by their flags
    for name, flags in args.variants:
        result["variants"].append(train_variant(name, flags, args, train, held, pretrained))
        atomic_write_text(args.out, json.dumps(to_json(result), indent=2))  # a partial result survives a stop
    write_outputs(result, args)
    return 0


if __name__ == "__main__":
    from mwm import cli

    cli.run_main(lambda: main())
