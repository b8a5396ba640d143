"""Checks of CURL's settings that the config types cannot express; each failure is a one-line UserError."""

from __future__ import annotations

from typing import Sequence

from mwm.errors import UserError

# CURL's Atari 100k protocol (data-efficient Rainbow as run by CURL's Atari code):
# key -> (required value, what it means). Life loss is not terminal here (README).
ATARI100K_ENV = {
    "action_repeat": (4, "4 frames per agent step"),
    "sticky": (0.0, "no sticky actions"),
    "noops": (30, "up to 30 no-ops at reset"),
    "time_limit": (27000, "108k frames per episode"),
    "grayscale": (True, "grayscale frames"),
}
ATARI100K_STEPS = 100_000
ATARI100K_SIZE = [84, 84]


def check_atari100k(env, steps: int) -> None:
    """Refuse env settings (``cfg.env``) or a run length that break the Atari 100k protocol."""
    for key, (value, meaning) in ATARI100K_ENV.items():
        if env[key] != value:
            raise UserError(f"curl.atari100k needs env.{key}={value} ({meaning}), got {env[key]}: "
                            f"drop --env.{key}, or pass --curl.atari100k false")
    if list(env.size) != ATARI100K_SIZE:
        raise UserError(f"curl.atari100k needs env.size [84, 84], got {list(env.size)}: drop --env.size, "
                        "or pass --curl.atari100k false")
    if steps > ATARI100K_STEPS:
        raise UserError(f"curl.atari100k allows at most {ATARI100K_STEPS} agent steps, got run.steps={steps}: "
                        "lower --steps, or pass --curl.atari100k false")


def check_settings(curl, image_shape: Sequence[int]) -> int:
    """Validate ``cfg.curl`` against the image (H, W, C); returns the encoder input side."""
    height, width = image_shape[0], image_shape[1]
    if height != width:
        raise UserError(f"CURL needs square images, got {height}x{width}: set --env.size [S,S]")
    crop = curl.crop or height
    positive = ("batch", "history", "n_step", "hidden", "latent", "atoms", "feature_dim", "target_every",
                "actor_every", "lr", "eps", "actor_lr", "critic_lr", "encoder_lr", "alpha_lr",
                "init_temperature")
    for key in positive:
        if curl[key] <= 0:
            raise UserError(f"curl.{key} must be positive, got {curl[key]}")
    unit = ("discount", "priority_exponent", "priority_beta", "key_tau", "critic_tau", "actor_beta",
            "critic_beta", "alpha_beta")
    for key in unit:
        if not 0.0 <= curl[key] <= 1.0:
            raise UserError(f"curl.{key} must be in [0, 1], got {curl[key]}")
    for key in ("pad", "crop", "reward_clip", "aux_weight", "clip", "noisy_std"):
        if curl[key] < 0:
            raise UserError(f"curl.{key} must not be negative, got {curl[key]}")
    if crop > height + 2 * curl.pad:
        raise UserError(f"curl.crop {crop} exceeds the {height}x{width} images padded by curl.pad {curl.pad}: "
                        "lower curl.crop or raise env.size")
    if curl.atoms < 2 or curl.v_min >= curl.v_max:
        raise UserError(f"curl needs atoms >= 2 and v_min < v_max, got {curl.atoms}, [{curl.v_min}, {curl.v_max}]")
    if curl.log_std_min >= curl.log_std_max:
        raise UserError(f"curl.log_std_min {curl.log_std_min} must be below curl.log_std_max {curl.log_std_max}")
    return crop
