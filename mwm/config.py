"""Typed configuration: a schema of dataclasses, values from YAML blocks, dotted overrides.

The schema below fixes every key's *type*; the *values* live in one place only, the YAML
blocks of ``configs/``. A run's config is built by merging, in order:

    defaults  ->  suite block (atari | dmc | toy)  ->  agent block (mwm | dreamerv2 | curl
    | siammae)  ->  "<agent>_<suite>" block if present  ->  preset block (tiny | small;
    "default" adds none)  ->  command-line overrides (``--rssm.deter 600``)

OmegaConf's structured configs do the typed merging. Unknown keys and wrong types are
turned into :class:`mwm.errors.UserError` with the key's name and the nearest valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Sequence, Set, Tuple

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from agents.registry import AGENT_NAMES
from envs import SUITES as ENV_SUITES
from envs import suite_of as env_suite_of
from mwm.actor_critic import ACTOR_GRADS
from mwm.errors import UserError
from mwm.distributed import BACKENDS
from mwm.heads import ACTIVATIONS, TRANSFORMS
from mwm.losses.dynamics import RECON_WEIGHTS
from mwm.losses.representation import LOSS_ON
from mwm.masking import MASKING_KINDS
from mwm.world_model import DECODER_STATES, ENCODER_POOLS
from mwm.speed import COMPILE_CHOICES, PRECISIONS

# An installed wheel carries configs/ as the package data mwm/configs; a source checkout has it
# next to mwm/.
_HERE = Path(__file__).resolve().parent
CONFIG_DIR = _HERE / "configs" if (_HERE / "configs").is_dir() else _HERE.parent / "configs"
SUITES = tuple(ENV_SUITES)  # atari, dmc, toy: envs/__init__.py
AGENTS = tuple(AGENT_NAMES)  # mwm, dreamerv2, curl, siammae: agents/registry.py
PRESETS = ("tiny", "small", "default")


def choice(values: Sequence[str]) -> Any:
    """A str key whose allowed values are ``values``: the tuple the implementing module
    defines (e.g. :data:`mwm.masking.MASKING_KINDS`), so the list is written once and
    :func:`validate` checks every such key from the schema."""
    return field(default=MISSING, metadata={"choices": tuple(values)})


@dataclass
class RunConfig:
    """The run: what to train, where, for how long, and the update schedule."""

    env: str = MISSING  # env name, e.g. atari_pong, dmc_walker_walk, toy_catch
    agent: str = choice(AGENTS)  # mwm | dreamerv2 | curl | siammae
    preset: str = choice(PRESETS)  # tiny | small | default
    logdir: str = MISSING  # run directory; re-using it resumes
    seed: int = MISSING  # seeds torch, numpy, python and the envs
    device: str = MISSING  # auto | cpu | cuda | cuda:N
    steps: int = MISSING  # agent steps to train for (each is action_repeat env frames)
    envs: int = MISSING  # parallel training envs (worker processes when > 1)
    parallel: bool = MISSING  # worker processes (True) or in-process envs (False)
    prefill: int = MISSING  # agent steps of the random policy before training
    pretrain: int = MISSING  # updates before the first policy step (MWM: autoencoder only)
    train_every: int = MISSING  # agent steps between scheduled updates
    train_steps: int = MISSING  # updates at each scheduled point
    eval_every: int = MISSING  # agent steps between evaluations (0: never)
    eval_episodes: int = MISSING
    log_every: int = MISSING  # agent steps between metric writes
    report_every: int = MISSING  # agent steps between image/video reports (0: never)
    checkpoint_every: int = MISSING  # agent steps between checkpoints
    max_nonfinite: int = MISSING  # consecutive non-finite updates before the run stops
    keep_checkpoints: int = MISSING  # newest checkpoints kept in checkpoints/ (older ones are deleted)
    milestone_every: int = MISSING  # agent steps: checkpoints at multiples are also kept in checkpoints/milestones/ (0: none)
    video_every: int = MISSING  # agent steps between evaluation videos in TensorBoard (0: never)


@dataclass
class EnvConfig:
    """Environment settings; each suite reads the keys that apply to it."""

    size: List[int] = MISSING  # [H, W] of the rendered observation
    action_repeat: int = MISSING
    grayscale: bool = MISSING  # Atari: one channel instead of RGB
    sticky: float = MISSING  # Atari: repeat_action_probability
    noops: int = MISSING  # Atari: up to this many random no-ops at reset
    life_done: bool = MISSING  # Atari: losing a life ends the episode
    time_limit: int = MISSING  # agent steps per episode (0: the suite's own)
    camera: int = MISSING  # DMC: camera id (-1: 0, or 2 for quadruped)
    fast_render: bool = MISSING  # DMC: cheaper shadows / offscreen samples
    object_size: int = MISSING  # toy_catch: falling object's side in pixels (1..16)
    drift: float = MISSING  # toy_catch: the object's sideways speed, px per step (bounces off walls)
    paddle_height: int = MISSING  # toy_catch: the paddle's rows in pixels


@dataclass
class ReplayConfig:
    capacity: int = MISSING  # steps kept in RAM (all episodes stay on disk)
    batch: int = MISSING  # world-model batch: sequences
    length: int = MISSING  # world-model batch: steps per sequence
    prioritize_ends: bool = MISSING
    prefetch: int = MISSING  # batches sampled ahead on a background thread (0: off)


@dataclass
class MaeConfig:
    """Masked autoencoder (official MWM values; docs/HYPERPARAMETERS.md)."""

    stem: bool = MISSING  # conv stem (MWM); False = 8x8 pixel patches (ablation)
    stem_channels: List[int] = MISSING
    patch: int = MISSING  # pixel patch side (tokens are image_size / patch per side)
    width: int = MISSING
    depth: int = MISSING
    heads: int = MISSING
    mlp_ratio: float = MISSING
    dec_width: int = MISSING
    dec_depth: int = MISSING
    dec_heads: int = MISSING
    mask_type: str = choice(MASKING_KINDS)  # random | tube | block | grid
    mask_ratio: float = MISSING  # in [0, 1)
    simmim: bool = MISSING  # mask tokens go through the encoder (SimMIM variant)
    loss_on: str = choice(LOSS_ON)  # all | masked
    norm_pix: bool = MISSING
    reward_head: bool = MISSING
    reward_scale: float = MISSING
    lr: float = MISSING
    eps: float = MISSING
    clip: float = MISSING
    wd: float = MISSING
    warmup: int = MISSING
    batch: int = MISSING  # sequences per autoencoder batch
    length: int = MISSING  # steps per sequence (batch * length frames)


@dataclass
class RssmConfig:
    deter: int = MISSING
    hidden: int = MISSING
    stoch: int = MISSING
    classes: int = MISSING
    act: str = choice(ACTIVATIONS)
    norm: bool = MISSING
    unimix: float = MISSING


@dataclass
class WorldModelConfig:
    """RSSM world model (MWM and DreamerV2 values; docs/HYPERPARAMETERS.md)."""

    flat_width: int = MISSING  # MWM: flat ViT over the autoencoder's tokens
    flat_depth: int = MISSING
    flat_heads: int = MISSING
    flat_pool: str = choice(ENCODER_POOLS)  # MWM: mean | attend: the posterior reads the tokens by cross-attention | slots: each token its own linear map into the embedding (both not in the paper)
    dec_width: int = MISSING
    dec_depth: int = MISSING
    dec_heads: int = MISSING
    dec_state: str = choice(DECODER_STATES)  # MWM: token (the state as one token) | broadcast: added to every slot | slots: each slot its own linear map of it (both not in the paper)
    cnn_depth: int = MISSING  # DreamerV2 pixel encoder/decoder base channels
    head_layers: int = MISSING
    head_units: int = MISSING
    head_norm: bool = MISSING
    reward_transform: str = choice(TRANSFORMS)  # symlog | tanh | none
    discount_head: bool = MISSING
    kl_balance: float = MISSING
    kl_free: float = MISSING
    kl_scale: float = MISSING
    recon_scale: float = MISSING
    reward_scale: float = MISSING
    discount_scale: float = MISSING
    token_norm: bool = MISSING  # MWM: standardise the tokens the world model reads (mwm/token_norm.py)
    token_norm_decay: float = MISSING
    recon_weight: str = choice(RECON_WEIGHTS)  # uniform (paper) | change: weigh what changed (not in the paper)
    recon_change_mix: float = MISSING  # share of the weight that follows the change, in [0, 1]
    embed_reward_scale: float = MISSING  # reward head on the encoder's output (not in the paper); 0: off
    prior_reward_scale: float = MISSING  # the reward head's loss on the prior's features too (not in the paper); 0: off
    lr: float = MISSING
    eps: float = MISSING
    clip: float = MISSING
    wd: float = MISSING


@dataclass
class ActorCriticConfig:
    layers: int = MISSING
    units: int = MISSING
    norm: bool = MISSING
    horizon: int = MISSING
    discount: float = MISSING
    lam: float = MISSING
    entropy: float = MISSING
    actor_grad: str = choice(ACTOR_GRADS)  # auto | reinforce | dynamics
    slow_critic_every: int = MISSING
    return_norm: bool = MISSING
    min_std: float = MISSING
    actor_lr: float = MISSING
    critic_lr: float = MISSING
    eps: float = MISSING
    clip: float = MISSING
    wd: float = MISSING


@dataclass
class SpeedConfig:
    """GPU-path switches; each is a wrapper around the eager reference path."""

    precision: str = choice(PRECISIONS)  # fp32 | bf16 (bf16 autocast applies on CUDA only)
    fused_optim: bool = MISSING
    pin_memory: bool = MISSING
    cuda_graph: bool = MISSING  # capture each update and policy step as a CUDA graph (CUDA only)
    compile: str = choice(COMPILE_CHOICES)  # torch.compile the transformer stacks: auto (CUDA only) | always | never
    compile_backend: str = MISSING  # torch.compile backend (inductor; aot_eager for quick checks)
    replay_on_device: bool = MISSING  # keep replay episodes on the GPU, sample there (CUDA only)


@dataclass
class DistConfig:
    """Data-parallel training under torchrun (mwm/distributed.py, docs/DISTRIBUTED.md)."""

    backend: str = choice(BACKENDS)  # auto (nccl for CUDA devices, gloo for CPU) | gloo | nccl
    timeout: float = MISSING  # seconds a rank waits for the others (start-up, collectives)
    world_size: int = MISSING  # processes in the run: set by torchrun, recorded; a resume needs the same
    global_batch: int = MISSING  # main batch summed over ranks (0: the per-rank batch times world_size)


@dataclass
class CurlConfig:
    """CURL baseline (docs/HYPERPARAMETERS.md; agents/curl/README.md): Rainbow for discrete
    actions, SAC for continuous ones, both with the contrastive loss."""

    atari100k: bool = MISSING  # refuse Atari settings that break the Atari 100k protocol
    # shared: data, augmentation, contrastive loss
    batch: int = MISSING  # transitions per update
    history: int = MISSING  # frames per stacked observation
    pad: int = MISSING  # random shift: replicate-pad this many pixels, crop back (Atari 4; DMC 0)
    crop: int = MISSING  # encoder input side after a random crop (0: the env image side)
    n_step: int = MISSING  # n of the n-step return
    discount: float = MISSING
    reward_clip: float = MISSING  # clip rewards to [-c, c] (0: off)
    prioritized: bool = MISSING  # prioritised replay (else uniform)
    priority_exponent: float = MISSING  # omega
    priority_beta: float = MISSING  # initial importance-sampling exponent, annealed to 1
    aux_weight: float = MISSING  # weight of the contrastive loss
    logit_scale: float = MISSING  # multiplies the bilinear logits
    key_tau: float = MISSING  # key (momentum) encoder EMA rate: 1 - momentum
    latent: int = MISSING  # Rainbow: contrastive projection size (SAC uses feature_dim)
    target_every: int = MISSING  # Rainbow: hard target copy; SAC: soft target updates (in updates)
    channels: List[int] = MISSING  # conv encoder
    kernels: List[int] = MISSING
    strides: List[int] = MISSING
    hidden: int = MISSING  # Rainbow stream / SAC MLP width
    eps: float = MISSING  # Adam epsilon
    clip: float = MISSING  # gradient-norm clip (0: off)
    # Rainbow (discrete actions)
    atoms: int = MISSING
    v_min: float = MISSING
    v_max: float = MISSING
    noisy_std: float = MISSING  # sigma_0 of the factorised noisy layers
    lr: float = MISSING
    # SAC (continuous actions)
    feature_dim: int = MISSING  # encoder output (linear + LayerNorm)
    actor_lr: float = MISSING
    critic_lr: float = MISSING
    encoder_lr: float = MISSING  # contrastive optimiser (encoder and W)
    alpha_lr: float = MISSING
    actor_beta: float = MISSING  # Adam beta1
    critic_beta: float = MISSING
    alpha_beta: float = MISSING
    init_temperature: float = MISSING
    critic_tau: float = MISSING  # target Q EMA rate
    actor_every: int = MISSING  # actor and temperature update period (in updates)
    log_std_min: float = MISSING
    log_std_max: float = MISSING


@dataclass
class SiamMAEConfig:
    """SiamMAE baseline (docs/HYPERPARAMETERS.md; agents/siammae/README.md). The encoder, the
    loss options (loss_on, norm_pix, reward_head, reward_scale) and the optimiser come
    from the ``mae`` block, shared with MWM; mae.mask_ratio, mask_type, simmim, batch
    and length are MWM's and unused by SiamMAE."""

    mask_ratio: float = MISSING  # future frame's mask ratio (paper: 0.95); the past frame is unmasked
    gap_min: int = MISSING  # frame gap k in agent steps, drawn per pair in [gap_min, gap_max]
    gap_max: int = MISSING
    dec_width: int = MISSING  # cross-self decoder
    dec_depth: int = MISSING
    dec_heads: int = MISSING
    batch: int = MISSING  # frame pairs per update


@dataclass
class ProbeConfig:
    """Reconstruction-only probes, ``python -m mwm.probe`` (docs/PROBES.md)."""

    method: str = MISSING  # mwm | mae | simmim | siammae | dreamerv2 | curl | random
    replay: str = MISSING  # a run directory (or its replay/) to read frames from; "" collects new ones
    policy: str = MISSING  # a run directory whose newest checkpoint acts while collecting; "" random actions
    train_episodes: int = MISSING  # episodes the representation and the linear probes learn from
    eval_episodes: int = MISSING  # held-out episodes, only scored
    episode_steps: int = MISSING  # most agent steps per collected episode
    updates: int = MISSING  # representation updates per seed
    seeds: int = MISSING  # seeds run.seed, run.seed + 1, ... (frames are collected once)
    eval_frames: int = MISSING  # held-out frames scored (0: all)
    probe_frames: int = MISSING  # training frames the linear probes fit on (0: all)
    box_margin: int = MISSING  # pixels added around Atari RAM boxes (observations max-pool two frames)
    visible_threshold: float = MISSING  # colour difference (0..1) that makes a box pixel an object pixel
    ring: int = MISSING  # width of the ring around a box whose median colour is the background
    probe_l2: List[float] = MISSING  # penalties the linear probes choose from on a validation split
    probe_steps: int = MISSING  # L-BFGS iterations of the classification probes
    confidence: float = MISSING  # level of the bootstrap intervals over seeds
    figure_frames: int = MISSING  # frames in the reconstruction grid
    log_every: int = MISSING  # updates between training-loss writes


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    mae: MaeConfig = field(default_factory=MaeConfig)
    rssm: RssmConfig = field(default_factory=RssmConfig)
    wm: WorldModelConfig = field(default_factory=WorldModelConfig)
    ac: ActorCriticConfig = field(default_factory=ActorCriticConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    curl: CurlConfig = field(default_factory=CurlConfig)
    siammae: SiamMAEConfig = field(default_factory=SiamMAEConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


# ----------------------------------------------------------------------------- loading


def _load_blocks() -> dict:
    """All named blocks of every YAML file in configs/, keyed by block name."""
    blocks: dict = {}
    if not any(CONFIG_DIR.glob("*.yaml")):  # else every key would be reported as having no value
        raise UserError(f"no config files (*.yaml) in {CONFIG_DIR}: the installation is incomplete; "
                        "reinstall mwm (pip install .) or run from a source checkout")
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
        for name, block in data.items():
            if name in blocks:
                raise RuntimeError(f"config block '{name}' is defined twice ({path.name})")
            blocks[name] = block or {}
    return blocks


def valid_keys(node: Any = None, prefix: str = "") -> List[str]:
    """Every dotted key of the schema, e.g. ['run.env', ..., 'rssm.deter']."""
    node = Config if node is None else node
    keys = []
    for f in dataclasses.fields(node):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            keys += valid_keys(f.default_factory, name + ".")
        else:
            keys.append(name)
    return keys


def _nearest(key: str) -> str:
    keys = valid_keys()
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
    if not close:  # try the last part alone: --deter -> rssm.deter
        tail = key.split(".")[-1]
        close = [k for k in keys if k.split(".")[-1] == tail][:3]
    return f"; did you mean {', '.join(close)}?" if close else "; see configs/defaults.yaml for the keys"


def _user_error(exc: OmegaConfBaseException, origin: str) -> UserError:
    key = getattr(exc, "full_key", None) or ""
    if isinstance(exc, ConfigKeyError) or "Key '" in str(exc) and "not in" in str(exc):
        return UserError(f"unknown config key '{key}' ({origin}){_nearest(key)}")
    if isinstance(exc, ValidationError):
        msg = str(exc).splitlines()[0]
        return UserError(f"bad value for config key '{key}' ({origin}): {msg}; {_expected(key)}")
    return UserError(f"config error at '{key}' ({origin}): {str(exc).splitlines()[0]}")


_TYPE_HINTS = {"int": "a whole number, e.g. --{key} 3", "float": "a number, e.g. --{key} 0.5",
               "bool": "true or false, e.g. --{key} false", "str": "a word, e.g. --{key} NAME",
               "List[int]": "a list, e.g. --{key} [64,64]"}


def _expected(key: str) -> str:
    """What the schema wants for a dotted key, as a hint the user can act on."""
    node: Any = Config
    for part in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return "see configs/defaults.yaml for the expected value"
        field_ = fields[part]
        node = field_.default_factory if field_.default_factory is not dataclasses.MISSING else field_.type
    hint = _TYPE_HINTS.get(node if isinstance(node, str) else getattr(node, "__name__", ""), None)
    return f"give {hint.format(key=key)}" if hint else "see configs/defaults.yaml for the expected value"


def _merge(cfg: DictConfig, data: dict, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, data)
    except OmegaConfBaseException as exc:
        raise _user_error(exc, origin) from None


def suite_of(env: str) -> str:
    """The suite of an env name by its prefix (:func:`envs.suite_of`); a UserError if none."""
    suite = env_suite_of(env)
    if suite is None:
        raise UserError(f"unknown env '{env}': names start with one of {', '.join(s + '_' for s in SUITES)} "
                        "(e.g. atari_pong, dmc_walker_walk, toy_catch)")
    return suite


def build(env: str, agent: str = "mwm", preset: str = "default", overrides: Sequence[str] = ()) -> DictConfig:
    """Merge the YAML blocks for (env, agent, preset) and the dotted overrides.

    ``overrides`` are ``key=value`` strings (``rssm.deter=600``); values are parsed as
    YAML, so ``true``, ``3``, ``1e-4`` and ``[64,64]`` get their natural types, except
    for keys of type str (paths, names), whose text is taken as it is: ``--logdir 0x10``
    is the folder ``0x10``, not ``16``.
    """
    if agent not in AGENTS:
        raise UserError(f"unknown agent '{agent}'; choose one of {', '.join(AGENTS)}")
    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    suite = suite_of(env)
    blocks = _load_blocks()
    cfg = OmegaConf.structured(Config)
    order = ["defaults", suite, agent, f"{agent}_{suite}"]
    if preset != "default":
        order += [preset, f"{preset}_{agent}"]
    for name in order:
        if name in blocks:
            cfg = _merge(cfg, blocks[name], f"block '{name}' of configs/")
    cfg = _merge(cfg, {"run": {"env": env, "agent": agent, "preset": preset}}, "command line")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override '{item}' must look like key=value (e.g. rssm.deter=600)")
        if key not in valid_keys():
            raise UserError(f"unknown config key '{key}' (command line){_nearest(key)}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # bytes the locale could not decode (LC_ALL=C and a non-ASCII path)
            shown = value.encode("utf-8", "backslashreplace").decode("ascii", "replace")
            raise UserError(f"the value of {key} ({shown}) holds characters this locale cannot read "
                            f"(LC_ALL/LANG={os.environ.get('LC_ALL') or os.environ.get('LANG') or 'unset'}): "
                            "set a UTF-8 locale (e.g. LC_ALL=C.UTF-8) or use ASCII characters") from None
        cfg = _merge(cfg, _nested(key, value if _field_type(key) is str else _parse_value(value)), "command line")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"config key '{missing[0]}' has no value: set it with --{missing[0]} VALUE")
    validate(cfg)
    return cfg


def _field_type(key: str) -> Any:
    """The schema type of a dotted key (``str``, ``int``, ``List[int]`` ...), None if unknown."""
    node: Any = Config
    for part in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return None
        f = fields[part]
        node = f.default_factory if f.default_factory is not dataclasses.MISSING else f.type
    return {"str": str, "int": int, "float": float, "bool": bool}.get(node, node) if isinstance(node, str) else node


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def _nested(key: str, value: Any) -> dict:
    out: dict = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise UserError(f"bad value for config key '{key}': {message}")


def flat_keys(node: Any, prefix: str = "") -> dict:
    """A nested dict (a config as a container) -> ``{"dotted.key": value}`` for every leaf."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def choices_of(node: Any = None, prefix: str = "") -> dict:
    """Dotted key -> allowed values, for every key of the schema declared with :func:`choice`."""
    node = Config if node is None else node
    found = {}
    for f in dataclasses.fields(node):
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
            found.update(choices_of(f.default_factory, f"{prefix}{f.name}."))
        elif "choices" in f.metadata:
            found[f"{prefix}{f.name}"] = f.metadata["choices"]
    return found


def _check_choices(cfg: DictConfig) -> None:
    for key, allowed in choices_of().items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else ""
            _check(False, key, f"'{value}' is not one of {', '.join(allowed)}{hint}")


def validate(cfg: DictConfig) -> None:
    """Value checks the types alone cannot express; each names its key."""
    r, e, m = cfg.run, cfg.env, cfg.mae
    _check(0 <= r.seed < 2**31, "run.seed", f"must be a whole number in [0, 2**31), got {r.seed}")
    _check(r.steps > 0, "run.steps", f"must be positive, got {r.steps}")
    _check(r.envs > 0, "run.envs", f"must be positive, got {r.envs}")
    _check(r.prefill >= 0, "run.prefill", f"must be >= 0, got {r.prefill}")
    _check(r.pretrain >= 0, "run.pretrain", f"must be >= 0, got {r.pretrain}")
    _check(r.train_every > 0, "run.train_every", f"must be positive, got {r.train_every}")
    _check(r.train_steps > 0, "run.train_steps", f"must be positive, got {r.train_steps}")
    for key in ("eval_every", "eval_episodes", "log_every", "report_every", "checkpoint_every"):
        _check(r[key] >= 0, f"run.{key}", f"must be >= 0, got {r[key]}")
    _check(r.log_every > 0, "run.log_every", f"must be positive, got {r.log_every}")
    _check(r.checkpoint_every > 0, "run.checkpoint_every", f"must be positive, got {r.checkpoint_every}")
    _check(r.max_nonfinite > 0, "run.max_nonfinite", f"must be positive, got {r.max_nonfinite}")
    _check(r.keep_checkpoints > 0, "run.keep_checkpoints", f"must be at least 1, got {r.keep_checkpoints}")
    _check(r.milestone_every >= 0, "run.milestone_every", f"must be >= 0, got {r.milestone_every}")
    _check(r.video_every >= 0, "run.video_every", f"must be >= 0, got {r.video_every}")
    _check(r.device == "auto" or r.device == "cpu" or r.device.startswith("cuda"), "run.device",
           f"'{r.device}' is not a device: use auto, cpu, cuda or cuda:N")
    _check(len(e.size) == 2 and all(s > 0 for s in e.size), "env.size", f"must be [H, W] > 0, got {list(e.size)}")
    _check(e.action_repeat > 0, "env.action_repeat", f"must be positive, got {e.action_repeat}")
    _check(0.0 <= e.sticky <= 1.0, "env.sticky", f"must be in [0, 1], got {e.sticky}")
    _check(1 <= e.object_size <= 16, "env.object_size", f"must be 1..16 pixels, got {e.object_size}")
    _check(1 <= e.paddle_height <= 48, "env.paddle_height", f"must be 1..48 pixels, got {e.paddle_height}")
    _check(0.0 <= m.mask_ratio < 1.0, "mae.mask_ratio", f"must be in [0, 1), got {m.mask_ratio}")
    _check_choices(cfg)
    if r.agent in ("mwm", "siammae"):  # the agents that tokenise frames with the MAE's stem
        _check(e.size[0] % m.patch == 0 and e.size[1] % m.patch == 0, "mae.patch",
               f"{m.patch} must divide the image size {list(e.size)}")
    zero_ok = {"replay.prefetch", "mae.warmup", "rssm.unimix", "wm.kl_free", "wm.recon_change_mix",
               "dist.global_batch"}  # global_batch 0: the per-rank batch times the ranks
    for section in ("mae", "wm", "ac", "replay", "rssm", "dist"):
        for key, value in cfg[section].items():
            name = f"{section}.{key}"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if name in zero_ok or key in ("wd", "entropy") or key.endswith("_scale"):
                _check(value >= 0, name, f"must be >= 0, got {value}")
            else:
                _check(value > 0, name, f"must be positive, got {value}")
    _check(cfg.wm.token_norm_decay < 1, "wm.token_norm_decay", f"must be in (0, 1), got {cfg.wm.token_norm_decay}")
    _check(cfg.wm.recon_change_mix <= 1, "wm.recon_change_mix", f"must be in [0, 1], got {cfg.wm.recon_change_mix}")
    _check(cfg.ac.lam <= 1 and cfg.ac.discount <= 1, "ac.lam" if cfg.ac.lam > 1 else "ac.discount",
           "must be at most 1")


# ----------------------------------------------------------------------------- construction

# (class, section, prefix) of every construct() call made in this process; the schema test
# (tests/test_config_schema.py) reads it to check constructor defaults against the YAML.
CONSTRUCTED: Set[Tuple[type, Tuple[str, ...], str]] = set()


def construct(cls: Any, *sections: DictConfig, prefix: str = "", **given: Any) -> Any:
    """``cls(...)`` with each parameter read from the config ``sections`` under the key
    ``prefix + parameter`` (later sections win), except those ``given``.

    This replaces hand-written mappings from config keys to constructor arguments: a
    constructor parameter takes the name of the key it is set from (``MaskedAutoencoder(
    width=...)`` from ``mae.width``; ``FlatViTEncoder(depth=...)`` from ``wm.flat_depth``
    with ``prefix="flat_"``). Parameters that are no key keep their default or come in
    ``given``.
    """
    params = inspect.signature(cls).parameters
    kwargs: dict = {}
    CONSTRUCTED.add((cls, tuple(str(section._key()) for section in sections), prefix))
    for section in sections:
        values = OmegaConf.to_container(section, resolve=True)
        for name in params:
            if name not in given and prefix + name in values:
                kwargs[name] = values[prefix + name]
    return cls(**kwargs, **given)


def save(cfg: DictConfig, path: os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    from mwm.atomic import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


# Keys added after runs had been saved without them -> the value that does what those runs
# did (each was added as an option whose default keeps the earlier behaviour).
BEFORE_KEY_EXISTED = {
    "env.paddle_height": 2,
    "wm.flat_pool": "mean",
    "wm.dec_state": "token",
    "wm.recon_weight": "uniform",
    "wm.recon_change_mix": 0.9,
    "wm.embed_reward_scale": 0.0,
    "wm.prior_reward_scale": 0.0,
}


def load(path: os.PathLike) -> DictConfig:
    """Read a saved config back into the typed schema; a key the run was saved without
    takes its :data:`BEFORE_KEY_EXISTED` value (others stay missing: today's default may not
    be what the run did)."""
    try:
        data = OmegaConf.load(path)
        cfg = OmegaConf.merge(OmegaConf.structured(Config), data)
    except OmegaConfBaseException as exc:
        raise _user_error(exc, str(path)) from None
    for key, value in BEFORE_KEY_EXISTED.items():
        section, name = key.split(".")
        if OmegaConf.is_missing(cfg[section], name):
            cfg[section][name] = value
    return cfg
