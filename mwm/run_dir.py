"""The run directory: config, checkpoints, replay; checks that protect an existing run.

Everything a user can get wrong is checked *before* anything is written, so a bad flag
never touches an existing run directory, and ``config.yaml`` is written only once the
run's replay, envs and agent have been built from it (:meth:`RunDir.commit`): a start
that fails leaves the directory as it was (what it created is removed again), so the
corrected command is never refused as "a different run". A logdir that holds files
but no run (no ``config.yaml``) is refused unless it is empty.

    <logdir>/config.yaml        the resolved config (written once, when the first start has built everything)
    <logdir>/checkpoints/       checkpoint-<step>.pt, the newest two kept
    <logdir>/replay/            one .npz per finished episode
    <logdir>/metrics.jsonl      one JSON object per log write
    <logdir>/events.*           TensorBoard
    <logdir>/.lock              held (flock) by the one process training in it

Crash safety: config, checkpoints and episodes are written atomically; a process
killed mid-write leaves only a hidden temp file (``.<name>.mwm-tmp-<pid>-<random>.tmp``),
removed when the run restarts; no other file is ever removed. A restart resumes from
the newest intact checkpoint (damaged ones are skipped with a warning naming them;
when none is intact the start is refused, naming them); episodes finished after that
checkpoint stay in replay.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, TextIO

from omegaconf import DictConfig, OmegaConf

from mwm import config as config_lib
from mwm.errors import UserError
from mwm.runtime import resolve_device

# Keys that may change when a run is resumed; any other difference is refused.
RESUMABLE_KEYS = (
    "run.steps", "run.device", "run.logdir", "run.envs", "run.parallel", "run.eval_every",
    "run.eval_episodes", "run.log_every", "run.report_every", "run.checkpoint_every",
    "run.max_nonfinite", "replay.prefetch", "speed.precision", "speed.fused_optim", "speed.pin_memory", "speed.cuda_graph", "speed.compile",
    "speed.compile_backend", "speed.replay_on_device",
    "run.keep_checkpoints", "run.milestone_every", "run.video_every",
    "dist.backend", "dist.timeout",
)
# Optimiser settings may change on resume too (the advice after a divergence is to lower
# the learning rates): every section's lr, eps, clip, wd, warmup and CURL's *_lr / *_beta.
OPTIMISER_KEY_NAMES = ("lr", "eps", "clip", "wd", "warmup")
OPTIMISER_SECTIONS = ("mae", "wm", "ac", "curl")


def resumable(key: str) -> bool:
    """Whether config key ``key`` may differ between a run's starts."""
    section, _, name = key.partition(".")
    if key in RESUMABLE_KEYS:
        return True
    return section in OPTIMISER_SECTIONS and (name in OPTIMISER_KEY_NAMES or name.endswith("_lr")
                                              or name.endswith("_beta"))


LOCK_NAME = ".lock"

# Which env.* keys each suite's constructor takes.
SUITE_ENV_KEYS = {
    "atari": ("size", "action_repeat", "grayscale", "sticky", "noops", "life_done", "time_limit"),
    "dmc": ("size", "action_repeat", "camera", "fast_render", "time_limit"),
    "toy": ("object_size", "drift", "paddle_height", "time_limit"),  # toy_catch renders 64x64, one frame per step
}


def env_kwargs(cfg: DictConfig) -> Dict:
    """The env.* values that apply to the run's suite, as ``envs.make`` keywords."""
    suite = config_lib.suite_of(cfg.run.env)
    out = {}
    for key in SUITE_ENV_KEYS[suite]:
        value = cfg.env[key]
        if key == "time_limit" and value == 0:
            continue  # the suite's own limit
        if key == "camera" and value < 0:
            continue
        out[key] = tuple(value) if key == "size" else value
    return out


def _check_writable(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UserError(f"logdir '{path}' is a file, not a directory: pass another --logdir")
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"logdir '{path}' is not writable ({probe} refuses writes): pass a --logdir you can write to")


def _check_env(cfg: DictConfig) -> None:
    """Build the env once: unknown names and missing rendering libraries fail here."""
    import envs

    try:
        env = envs.make(cfg.run.env, seed=cfg.run.seed, **env_kwargs(cfg))
    except UserError:
        raise
    except Exception as error:  # dm_control fails to import or render in many ways
        if config_lib.suite_of(cfg.run.env) != "dmc":
            raise
        from envs.gl import INSTALL_HINT

        detail = (str(error).splitlines() or [""])[0][:300]
        backend = os.environ.get("MUJOCO_GL") or "unset"
        raise UserError(f"MuJoCo cannot render {cfg.run.env} (MUJOCO_GL={backend}; {type(error).__name__}: "
                        f"{detail}): {INSTALL_HINT}, and set MUJOCO_GL=egl or osmesa or leave it unset") from error
    env.close()


def _load_saved_config(saved: Path) -> DictConfig:
    """The config an existing run was started with; a damaged file is a UserError."""
    try:
        return config_lib.load(saved)
    except UserError as error:
        raise UserError(f"{saved} does not match the config schema ({error}): use a new --logdir") from None
    except Exception as error:  # not YAML at all, unreadable, ...
        raise UserError(f"{saved} is unreadable ({type(error).__name__}): restore it from a backup, "
                        "or use a new --logdir") from None


def _create(path: Path) -> list:
    """mkdir -p, as a UserError when the file system refuses; returns the folders it made."""
    made = [p for p in [path, *path.parents] if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        for folder in made[::-1]:
            _rmdir_quietly(folder)
        raise UserError(f"cannot create logdir '{path}' ({error.strerror}): pass a --logdir you can write to") from None
    return made


def _rmdir_quietly(path: Path) -> None:
    """Remove an empty folder this process made; never a file, never a folder with anything in it."""
    try:
        path.rmdir()
    except OSError:
        return


# What a logdir may hold besides a run (config.yaml) and still count as empty: a lock
# and empty run folders left by a start that was killed before it wrote its config.
_RUN_FOLDERS = ("checkpoints", "replay")


def _check_layout(path: Path) -> None:
    """Refuse a logdir whose run files are of the wrong kind, or that holds files but no run."""
    if not path.is_dir():
        return
    for name, want_dir in (("checkpoints", True), ("replay", True), ("config.yaml", False),
                           ("metrics.jsonl", False), (LOCK_NAME, False)):
        item = path / name
        if item.exists() or item.is_symlink():
            if want_dir and not item.is_dir():
                raise UserError(f"'{item}' is not a folder, but the run keeps its {name} there: move it away "
                                "or pass another --logdir")
            if not want_dir and item.is_dir():
                raise UserError(f"'{item}' is a folder, but the run writes a file of that name: move it away "
                                "or pass another --logdir")
    if (path / "config.yaml").exists():
        return
    from mwm.atomic import is_temp_name

    def ignorable(item: Path) -> bool:
        if item.name == LOCK_NAME or is_temp_name(item.name):
            return True
        return item.name in _RUN_FOLDERS and item.is_dir() and not any(  # empty replay/rank<k>/ shards too
            not is_temp_name(child.name) and not (child.is_dir() and not any(child.iterdir()))
            for child in item.iterdir())

    others = sorted(item.name for item in path.iterdir() if not ignorable(item))
    if not others:
        return
    if set(others) & {"checkpoints", "replay"}:
        raise UserError(f"logdir '{path}' holds {' and '.join(n + '/' for n in others if n in _RUN_FOLDERS)} "
                        "but no config.yaml: restore its config.yaml from a backup to resume, "
                        "or pass a new --logdir")
    shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
    raise UserError(f"logdir '{path}' is not empty and holds no run ({shown}): pass a new or empty --logdir")


def _lock(path: Path) -> Optional[TextIO]:
    """Hold ``<path>/.lock`` for this process's lifetime; UserError if another process holds it.

    The operating system drops the lock when the process dies, even by SIGKILL.
    Returns the open lock file (None where advisory locks do not exist).
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; two runs in one logdir are the user's care
        return None
    handle = open(path / LOCK_NAME, "a")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"logdir '{path}' is in use by another training process: stop that run first, "
                        "or pass another --logdir") from None
    except OSError as error:  # a file system without locks: carry on unprotected
        print(f"warning: cannot lock {path / LOCK_NAME} ({error.strerror}); make sure no other run uses "
              "this logdir", file=sys.stderr)
    return handle


def _clean_interrupted_writes(path: Path) -> None:
    """Remove the temp files of writes a crash interrupted (safe: this process holds the lock)."""
    from mwm.atomic import remove_stale_temp_files

    shards = sorted(p for p in (path / "replay").glob("rank*") if p.is_dir())  # torchrun: replay/rank<k>/
    for folder in (path, path / "checkpoints", path / "replay", *shards):
        removed = remove_stale_temp_files(str(folder))
        if removed:
            print(f"removed {len(removed)} unfinished temp file(s) left in {folder} by an interrupted run: "
                  f"{', '.join(removed)}", file=sys.stderr)


class RunDir:
    """A prepared run directory with its config and device."""

    def __init__(self, path: Path, cfg: DictConfig, device, resumed: bool, lock: Optional[TextIO] = None,
                 created: Sequence[Path] = ()):
        self.path = path
        self.cfg = cfg
        self.device = device
        self.resumed = resumed
        self._lock = lock
        self._created = list(created)  # what this start made, removed again if it fails before commit()
        self.committed = cfg is None or (path / "config.yaml").exists()
        self._times = None  # (atime, mtime) in ns of a folder that existed before this start
        self.replay_ranks = None  # restore(): every rank's replay sampler state, where the checkpoint has them

    def commit(self) -> None:
        """The start succeeded (replay, envs and agent built): write ``config.yaml`` if new.

        From here on the directory holds this run; before it, :meth:`close` undoes the start.
        """
        if not self.committed:
            config_lib.save(self.cfg, self.path / "config.yaml")
            self.committed = True

    def close(self) -> None:
        """Release the run directory's lock (the process exiting releases it too). A start
        that never reached :meth:`commit` removes what it created (empty folders and its lock
        file only), so the directory is left as it was."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if not self.committed:
            for item in sorted(self._created, key=lambda p: len(p.parts), reverse=True):  # deepest first
                if item.name == LOCK_NAME and item.is_file() and not item.is_symlink():
                    item.unlink(missing_ok=True)
                elif item.is_dir():
                    _rmdir_quietly(item)
            self._created = []
            if self._times is not None and self.path.is_dir():  # an existing folder: its times too
                try:
                    os.utime(self.path, ns=self._times)
                except OSError:
                    pass

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def env_kwargs(self) -> Dict:
        return env_kwargs(self.cfg)

    def restore(self, agent, replay=None) -> Dict:
        """Load the newest intact checkpoint into ``agent`` (and ``replay``'s sampler state, where the
        checkpoint holds one); returns its counters.

        Counters: ``step`` (agent steps), ``updates`` (every update, pre-training
        included), ``pretrain_updates`` (of ``run.pretrain``), ``pretrained`` and
        ``episodes`` (finished by ``step``). They are saved with the weights they
        describe, so a resumed run continues from exactly that point.
        """
        import warnings

        from mwm.checkpoint import list_checkpoints, load_latest, set_rng_state

        counters = {"step": 0, "updates": 0, "episodes": 0, "pretrained": False, "pretrain_updates": 0}

        def fits(state) -> None:  # raises for a checkpoint that is not this run's (it falls back to an older one)
            parts = ("agent", "counters", "rng")
            if not isinstance(state, dict) or not all(isinstance(state.get(k), dict) for k in parts) \
                    or not isinstance(state["counters"].get("step"), int):
                raise ValueError("no agent, counters and rng entries")
            agent.load_state_dict(state["agent"])

        with warnings.catch_warnings(record=True) as skipped:
            warnings.simplefilter("always")
            state, path = load_latest(str(self.checkpoints), check=fits)
        files = [p for _, p in list_checkpoints(str(self.checkpoints))]
        if state is None and files:  # every checkpoint damaged: refuse rather than silently start over
            names = ", ".join(Path(p).name for p in files[::-1])
            raise UserError(f"no intact checkpoint in '{self.checkpoints}' ({names}: damaged or not this run's): "
                            "restore one from a backup, or move them away to start this run over")
        for warning in skipped:
            print(f"warning: {warning.message}", file=sys.stderr)
        if state is None:
            return counters
        if state["counters"].get("pretrained") and "pretrain_updates" not in state["counters"]:
            counters["pretrain_updates"] = self.cfg.run.pretrain  # a checkpoint from before this counter
        counters.update(state["counters"])
        set_rng_state(state["rng"])
        if replay is not None and "replay" in state["rng"]:  # checkpoints from before it: the replay's seed
            replay.set_rng_state(state["rng"]["replay"])
        self.replay_ranks = state["rng"].get("replay_ranks")  # torchrun's ranks: given out by share_state
        print(f"resuming from {path} at step {counters['step']}")
        return counters

    def save(self, agent, counters: Dict, replay=None, replay_ranks=None) -> str:
        """Write ``checkpoint-<step>.pt`` (atomic, newest ``run.keep_checkpoints`` kept); returns its path.

        The RNG states saved are the process's (python, numpy, torch) and, given ``replay``, its
        sampler's (``rng["replay"]``); under torchrun also every rank's sampler, in rank order
        (``rng["replay_ranks"]``, from :func:`mwm.distributed.replay_states`).

        Weights holding NaN or inf are refused with a UserError and the previous
        checkpoints stay as they are.
        """
        from mwm.checkpoint import first_nonfinite, rng_state, save_checkpoint

        self.commit()
        state = {"agent": agent.state_dict(), "counters": dict(counters), "rng": rng_state()}
        if replay is not None:
            state["rng"]["replay"] = replay.rng_state()
        if replay_ranks is not None:
            state["rng"]["replay_ranks"] = replay_ranks
        bad = first_nonfinite(state)
        if bad is not None:
            from mwm.checkpoint import list_checkpoints

            kept = list_checkpoints(str(self.checkpoints))
            where = (f"{kept[-1][1]} is kept: re-run with lower learning rates (they may change on resume) to "
                     "resume from it" if kept else "no checkpoint was written before: re-run with lower learning "
                     "rates (they may change on resume) to start over")
            raise UserError(f"not saving a checkpoint at step {counters['step']}: '{bad}' holds NaN or inf; "
                            f"{where}, or check the inputs")
        keep = {} if self.cfg is None else {"keep": self.cfg.run.keep_checkpoints}  # run.keep_checkpoints
        return save_checkpoint(str(self.checkpoints), state, step=counters["step"], **keep)


def prepare_run(env: str, agent: str, preset: str, overrides: Sequence[str], resume: bool = False,
                check_env: bool = True, cfg: Optional[DictConfig] = None) -> RunDir:
    """Validate everything, then create (or reopen) the run directory. ``cfg``: the config of
    (env, agent, preset, overrides) where the caller built it already."""
    cfg = config_lib.build(env, agent, preset, overrides) if cfg is None else cfg
    if not cfg.run.logdir:
        cfg.run.logdir = f"runs/{env}-{agent}-seed{cfg.run.seed}"
    path = Path(cfg.run.logdir).expanduser()
    _check_writable(path)
    _check_layout(path)
    device = resolve_device(cfg.run.device)
    if check_env:
        _check_env(cfg)
    saved = path / "config.yaml"
    has_checkpoint = (path / "checkpoints").is_dir() and any((path / "checkpoints").glob("checkpoint-*.pt"))
    if resume and not has_checkpoint:
        raise UserError(f"--resume: no checkpoint in '{path / 'checkpoints'}': drop --resume to start a new run")
    if saved.exists():
        old = config_lib.flat_keys(OmegaConf.to_container(_load_saved_config(saved)))
        new = config_lib.flat_keys(OmegaConf.to_container(cfg))
        identity = ["run.env", "run.agent", "run.preset"]  # named first: they explain the rest
        for key in identity + sorted((set(old) | set(new)) - set(identity)):
            if old.get(key) == "???":  # a key added to the schema after this run started
                continue
            if not resumable(key) and old.get(key) != new.get(key):
                raise UserError(f"logdir '{path}' holds a run with {key}={old.get(key)!r}, not {new.get(key)!r}: "
                                "use a new --logdir, or the same settings to resume")
    from mwm.limits import check_config

    check_config(cfg)  # after the comparison: "another run's logdir" is the first thing to say
    times = (path.stat().st_atime_ns, path.stat().st_mtime_ns) if path.is_dir() else None
    created = _create(path)
    lock_created = not (path / LOCK_NAME).exists()
    lock = _lock(path)
    run = RunDir(path, cfg, device, resumed=has_checkpoint, lock=lock,
                 created=created + ([path / LOCK_NAME] if lock_created else []) + [
                     path / name for name in ("checkpoints", "replay") if not (path / name).exists()])
    run._times = times
    try:
        _clean_interrupted_writes(path)
    except BaseException:
        run.close()
        raise
    return run
