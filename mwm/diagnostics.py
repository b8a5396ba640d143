"""World-model diagnostics: how well does the model predict, open loop, what it will see?

DreamerV2's open-loop check (Hafner et al., 2021, Fig. 5) turned into numbers. On
sequences of ``context + horizon`` steps that the model did not train on, the
posterior reads the first ``context`` (5) steps; the prior then predicts the next
``horizon`` (15) steps under the recorded actions alone. Against the truth we score:

- ``reward_corr``: Pearson correlation of predicted and true rewards over every
  open-loop step of every sequence (``reward_corr_by_step``: per horizon step);
- ``reward_precision`` / ``reward_recall``: reward *events*, steps whose reward has
  magnitude >= ``event_threshold`` (0.5: a catch or a miss in toy_catch, a point in
  Pong). A predicted event counts as right when the true step is an event of the same
  sign;
- ``recon_error_by_step``: the world model's own reconstruction loss (its decoder's
  ``loss``: tokens for MWM and SiamMAE, pixels for DreamerV2) at each horizon step,
  next to ``recon_error_observed``, the same loss on the observed context steps;
- ``pixel_mse_by_step``: mean squared pixel error in [0, 1] units after decoding to
  images, where the agent can decode (MWM through the autoencoder's decoder, DreamerV2
  directly, SiamMAE through its decoder with no past frame);
- ``kl``: KL(posterior || prior) per step on the whole sequences (nats, summed over
  the latents), and ``post_entropy`` / ``prior_entropy`` of the latents (nats);
- ``input_signal``: the variance of the world-model inputs across frames as a fraction
  of their mean square: near 0 means the frames barely move what the model reconstructs.

Everything runs under ``torch.no_grad`` in eval mode and changes no statistics.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

from mwm.distributions import OneHotCategorical
from mwm.losses.dynamics import categorical_kl

CONTEXT = 5  # observed steps before the open-loop prediction (DreamerV2's figure)
HORIZON = 15  # predicted steps (the imagination horizon of MWM and DreamerV2)
EVENT_THRESHOLD = 0.5  # |reward| at or above this is a reward event
SEQUENCE_KEYS = ("image", "action", "reward", "is_first", "is_terminal")


def cut_windows(episodes: Sequence[Dict[str, np.ndarray]], length: int, count: int,
                rng: np.random.Generator, keys: Sequence[str] = SEQUENCE_KEYS) -> Dict[str, np.ndarray]:
    """``count`` windows of ``length`` steps, each inside one episode, stacked (N, length, ...),
    of the episodes' ``keys``.

    Windows start anywhere an episode has ``length`` steps left; every episode long
    enough can be drawn. The first step of a window is marked ``is_first`` (the model
    starts from a fresh state there). Raises ValueError when no episode is long enough.
    """
    starts = [(i, s) for i, ep in enumerate(episodes) for s in range(len(ep["reward"]) - length + 1)]
    if not starts:
        longest = max((len(ep["reward"]) for ep in episodes), default=0)
        raise ValueError(f"no episode has {length} steps (the longest has {longest})")
    picks = rng.choice(len(starts), size=count, replace=len(starts) < count)
    batch = {key: np.stack([episodes[starts[p][0]][key][starts[p][1]:starts[p][1] + length] for p in picks])
             for key in keys}
    batch["is_first"] = batch["is_first"].copy()
    batch["is_first"][:, 0] = True
    return batch


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Correlation of two flat arrays; NaN when either is constant."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def event_scores(pred: np.ndarray, truth: np.ndarray, threshold: float = EVENT_THRESHOLD) -> Dict[str, float]:
    """Precision and recall of reward events (|r| >= threshold, matched with their sign).

    NaN where there is nothing to score (no predicted event for precision, no true
    event for recall); the counts come with them.
    """
    pred_sign = np.sign(pred) * (np.abs(pred) >= threshold)
    true_sign = np.sign(truth) * (np.abs(truth) >= threshold)
    hits = float(((pred_sign != 0) & (pred_sign == true_sign)).sum())
    predicted, actual = float((pred_sign != 0).sum()), float((true_sign != 0).sum())
    return {"reward_precision": hits / predicted if predicted else float("nan"),
            "reward_recall": hits / actual if actual else float("nan"),
            "reward_events_true": actual, "reward_events_predicted": predicted}


@torch.no_grad()
def predict(agent, batch: Dict[str, torch.Tensor], context: int = CONTEXT) -> Dict[str, torch.Tensor]:
    """The world model's view of sequences (B, T, ...): posterior over all T steps, and the
    open-loop prediction of steps [context, T) from the first ``context`` observations and
    the recorded actions alone (no later observation is read).

    Returns ``inputs`` (B, T, ...), ``post`` / ``prior`` logits (B, T, S, K), the posterior's
    features ``post_feat`` (B, T, F) (every step observed), ``observed_feat`` (B, context, F)
    and, for the open-loop steps, ``feat`` (B, H, F), ``reward`` (B, H) and
    ``decoded`` (B, H, ...) decoder outputs.
    """
    wm = agent.wm
    steps = batch["reward"].shape[1]
    if not 0 < context < steps:
        raise ValueError(f"context {context} must leave at least one step to predict in {steps}")
    inputs = agent.representation.inputs(batch["image"]).float()  # (B, T, ...)
    action = batch["action"].float()  # (B, T, A)
    post, prior = wm.rssm.observe(wm.encoder(inputs), action, batch["is_first"])
    # The filter is causal: its first ``context`` states read nothing later, so the open
    # loop starts from them rather than from a second pass over the context.
    observed = {key: value[:, :context] for key, value in post.items()}  # (B, k, ...)
    last = {key: value[:, -1] for key, value in observed.items()}  # (B, ...)
    imagined = wm.rssm.rollout(last, action[:, context:])  # (B, H, ...)
    feat = wm.feature(imagined)  # (B, H, F)
    post_feat = wm.feature(post)  # (B, T, F)
    return {"inputs": inputs, "post": post["logits"], "prior": prior["logits"], "post_feat": post_feat,
            "observed_feat": post_feat[:, :context], "feat": feat, "reward": wm.reward(feat).float(),
            "decoded": wm.decoder(feat)}


@torch.no_grad()
def open_loop(agent, batch: Dict[str, torch.Tensor], context: int = CONTEXT,
              threshold: float = EVENT_THRESHOLD, prediction: Dict[str, torch.Tensor] | None = None) -> Dict[str, object]:
    """Score the agent's world model on sequences (B, context + horizon, ...); see the module doc.

    ``agent`` is a Dreamer-family agent: ``agent.wm`` (:class:`mwm.world_model.WorldModel`),
    ``agent.representation`` (:class:`mwm.representation.Representation`). ``prediction``:
    :func:`predict`'s output on the same batch in eval mode, where a caller scores more of
    the same sampled rollout; by default it is made here.
    Returns floats and per-step lists (index h = horizon step h + 1).
    """
    wm = agent.wm
    was_training = wm.training
    wm.eval()
    try:
        out = predict(agent, batch, context) if prediction is None else prediction
        inputs = out["inputs"]
        kl = categorical_kl(out["post"], out["prior"])  # (B, T)
        post_ent = OneHotCategorical(out["post"]).entropy().sum(-1)  # (B, T)
        prior_ent = OneHotCategorical(out["prior"]).entropy().sum(-1)
        pred_reward = out["reward"].cpu().numpy()  # (B, H)
        true_reward = batch["reward"][:, context:].float().cpu().numpy()
        recon = wm.decoder.loss(out["decoded"], inputs[:, context:]).float()  # (B, H)
        recon_observed = wm.decoder.loss(wm.decoder(out["observed_feat"]), inputs[:, :context]).float()
        pixel_by_step = None  # for a representation whose outputs do not decode to pixels
        if agent.representation.decodes:
            images = agent.representation.to_images(out["decoded"].float())  # (B, H, H_img, W, C) uint8
            truth = batch["image"][:, context:]
            pixel = ((images.float() - truth.float()) / 255.0).pow(2).flatten(2).mean(-1)  # (B, H)
            pixel_by_step = pixel.mean(0).cpu().tolist()
        flat = inputs.flatten(0, 1).flatten(1)  # (B*T, n)
        signal = float(flat.var(0).sum() / flat.pow(2).mean(0).sum().clamp_min(1e-12))
    finally:
        wm.train(was_training)
    horizon = pred_reward.shape[1]
    return {
        "sequences": int(pred_reward.shape[0]), "context": context, "horizon": horizon,
        "reward_corr": pearson(pred_reward, true_reward),
        "reward_corr_by_step": [pearson(pred_reward[:, h], true_reward[:, h]) for h in range(horizon)],
        **event_scores(pred_reward, true_reward, threshold),
        "recon_error_by_step": recon.mean(0).cpu().tolist(),
        "recon_error_observed": float(recon_observed.mean()),
        "pixel_mse_by_step": pixel_by_step,
        "kl": float(kl.mean()), "post_entropy": float(post_ent.mean()), "prior_entropy": float(prior_ent.mean()),
        "input_signal": signal,
    }


def scalars(result: Dict[str, object], prefix: str = "diag/") -> Dict[str, float]:
    """The TensorBoard scalars of a diagnostics result: the summary figures and the
    per-step errors at the first, middle and last horizon step."""
    out = {f"{prefix}{key}": float(result[key]) for key in (
        "reward_corr", "reward_precision", "reward_recall", "recon_error_observed", "kl", "post_entropy",
        "prior_entropy", "input_signal")}
    horizon = int(result["horizon"])
    for h in sorted({1, (horizon + 1) // 2, horizon}):
        out[f"{prefix}recon_error_h{h}"] = float(result["recon_error_by_step"][h - 1])
        if result["pixel_mse_by_step"] is not None:
            out[f"{prefix}pixel_mse_h{h}"] = float(result["pixel_mse_by_step"][h - 1])
    return out

