"""Data-parallel training over ``torch.distributed``, started by ``torchrun``.

``torchrun --nproc_per_node N -m mwm.train ...`` starts N copies of the training
process; each learns its place from torchrun's environment variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Plain
``python -m mwm.train`` sets none of them: the world is one process and every function
here returns at once (or returns its input unchanged), so a single-process run computes
exactly what it computed before this module existed.

With N ranks (docs/DISTRIBUTED.md):

- each rank steps its own envs (seeds offset by rank), keeps its own replay shard
  ``<logdir>/replay/rank<k>/`` and samples its own batches (every ``*.batch`` key is per
  rank; ``dist.global_batch`` is the sum over ranks);
- :func:`average_gradients` (called by :meth:`mwm.optim.Optimizer.step`, the one place
  where gradients are made) averages each optimiser's gradients over ranks with one
  all-reduce, the loss riding along, so that every rank clips, skips a non-finite update
  and steps Adam on the same numbers: parameters stay bitwise identical;
- rank 0 alone writes the config, logs, TensorBoard and checkpoints; on a resume the
  state it restored is broadcast to the others (a rank's own node need not see the
  checkpoint files), each rank reloading its own replay shard;
- the host-side decisions that must agree (stop after a signal, start learning once
  every shard holds an episode) and the logged scalars go over a gloo group; the
  gradients over NCCL on GPUs.

Start-up errors (a bad flag, a logdir that holds another run or another world size, a
rank started with a different config) are agreed on by all ranks: rank 0 prints one
line naming the rank and every rank exits with status 2; a rank that never joins is
waited for at most ``dist.timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from mwm.errors import UserError
from mwm.logger import Logger

BACKENDS = ("auto", "gloo", "nccl")
# Logged scalars that add up over ranks (the others are averaged over the ranks that logged them).
SUMMED = ("replay/steps",)
TORCHRUN_HINT = "start every rank with the same torchrun command (docs/DISTRIBUTED.md)"


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank ``rank`` of ``size``, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """More than one process: collectives are needed."""
        return self.size > 1

    @property
    def writer(self) -> bool:
        """The one process that writes config, logs and checkpoints."""
        return self.rank == 0


_world = World()


def world() -> World:
    """The world of this process (one process until :func:`start` joined a group)."""
    return _world


def from_environment(environ: Optional[Dict[str, str]] = None) -> World:
    """The world torchrun describes in ``environ`` (default ``os.environ``); one process if it describes none."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return World()
    try:
        size, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UserError(f"RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r}, LOCAL_RANK="
                        f"{env.get('LOCAL_RANK')!r} are not whole numbers: {TORCHRUN_HINT}") from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise UserError(f"RANK={rank} is not a rank of WORLD_SIZE={size}: {TORCHRUN_HINT}")
    return World(rank, size, local)


# ----------------------------------------------------------------------------- start-up


def backend_for(requested: str, device: torch.device) -> str:
    """The process-group backend: gloo for CPU processes, NCCL (gloo beside it for host flags) for GPUs."""
    if requested == "auto":
        requested = "nccl" if device.type == "cuda" else "gloo"
    if requested == "gloo":
        return "gloo"
    if device.type != "cuda":
        raise UserError(f"dist.backend nccl needs CUDA devices, but this run's device is {device.type}: "
                        "use --dist.backend gloo (or auto) for CPU processes")
    if not torch.distributed.is_nccl_available():
        raise UserError("dist.backend nccl: this torch build has no NCCL: install a CUDA build of torch, "
                        "or use --dist.backend gloo")
    return "cpu:gloo,cuda:nccl"


def rank_device(device: torch.device, w: Optional[World] = None) -> torch.device:
    """``cuda`` becomes ``cuda:<LOCAL_RANK>``, one GPU per rank; CPU stays CPU."""
    w = _world if w is None else w
    if device.type != "cuda" or not w.active:
        return device
    if device.index not in (None, w.local_rank):
        raise UserError(f"--device {device} would put every rank on one GPU: use --device cuda (rank k of a "
                        "node takes cuda:k)")
    if w.local_rank >= torch.cuda.device_count():
        raise UserError(f"local rank {w.local_rank} has no GPU ({torch.cuda.device_count()} visible): start at "
                        "most one process per GPU (--nproc_per_node)")
    return torch.device("cuda", w.local_rank)


def batch_key(agent: str) -> str:
    """The config key of an agent's main training batch (what ``dist.global_batch`` splits)."""
    return "curl.batch" if agent == "curl" else "replay.batch"


def resolve_overrides(cfg, overrides: Sequence[str], w: Optional[World] = None) -> List[str]:
    """``overrides`` plus what the world implies: ``dist.world_size``, and the per-rank batch when
    ``dist.global_batch`` is set (it must split evenly over the ranks)."""
    from omegaconf import OmegaConf

    w = _world if w is None else w
    given = {item.partition("=")[0]: item.partition("=")[2] for item in overrides}
    out = [item for item in overrides if not item.startswith("dist.world_size=")]
    if "dist.world_size" in given and cfg.dist.world_size != w.size:
        raise UserError(f"dist.world_size is the number of processes torchrun starts ({w.size} here), not a "
                        "flag: drop --dist.world_size and set torchrun's --nproc_per_node / --nnodes")
    if w.size != 1:
        out.append(f"dist.world_size={w.size}")
    total, key = cfg.dist.global_batch, batch_key(cfg.run.agent)
    if total:
        if total % w.size:
            raise UserError(f"dist.global_batch {total} does not split over {w.size} ranks: use a multiple of "
                            f"{w.size}, or set the per-rank --{key} instead")
        per_rank = total // w.size
        if key in given and OmegaConf.select(cfg, key) != per_rank:
            raise UserError(f"--{key} {OmegaConf.select(cfg, key)} and --dist.global_batch {total} disagree over "
                            f"{w.size} rank(s) ({per_rank} per rank): set one of them")
        out.append(f"{key}={per_rank}")
    return out


def parse(parse_args: Callable[[], Any]) -> Any:
    """``parse_args()``; under torchrun a command-line error (the same on every rank) is said once, by rank 0:
    the ranks join a gloo group just to agree on it, and every rank exits 2."""
    w = from_environment()
    if not w.active:
        return parse_args()
    try:
        return parse_args()
    except UserError as exc:
        init(w, "gloo", 600.0)
        if not w.writer:
            sys.stdout = open(os.devnull, "w")
        with _closed_on_error():
            agree(exc)
        raise  # not reached: agree raised


def start(build: Callable[[Sequence[str]], Any], overrides: Sequence[str]):
    """Join the process group torchrun set up and build the run's config on every rank.

    ``build(overrides)`` makes the config. Returns ``(config, overrides)``, the overrides
    completed by :func:`resolve_overrides`. One process: no group, nothing else changes.
    A config error met on any rank stops every rank (rank 0 says it, in one line);
    ranks started with different settings are refused, naming the first key that differs.
    """
    w = from_environment()
    if not w.active:
        cfg = build(overrides)  # validated there (mwm.config.validate), the dist block included
        completed = resolve_overrides(cfg, overrides, w)
        return (build(completed) if completed != list(overrides) else cfg), completed
    cfg, error, backend, timeout = None, None, "gloo", 600.0
    try:
        cfg = build(overrides)
        from mwm.runtime import resolve_device

        timeout = float(cfg.dist.timeout)
        device = rank_device(resolve_device(cfg.run.device), w)
        backend = backend_for(cfg.dist.backend, device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        overrides = resolve_overrides(cfg, overrides, w)
        cfg = build(overrides)
    except UserError as exc:
        error = exc
    init(w, backend, timeout)
    if not w.writer:  # one console: rank 0's (the others' warnings and errors still reach stderr)
        sys.stdout = open(os.devnull, "w")
    with _closed_on_error():
        agree(error)
        check_same_config(cfg)
    return cfg, list(overrides)


@contextlib.contextmanager
def _closed_on_error():
    """Leave the process group when the block raises (a process exiting inside one may abort)."""
    try:
        yield
    except BaseException:
        close()
        raise


def init(w: World, backend: str = "gloo", timeout: float = 600.0) -> None:
    """Join the process group as rank ``w.rank`` of ``w.size`` (address and port from ``MASTER_ADDR`` /
    ``MASTER_PORT``); one line when it fails or times out. Tests and benchmarks call it directly."""
    global _world
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        torch.distributed.init_process_group(backend, rank=w.rank, world_size=w.size,
                                             timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError, OSError) as exc:  # DistStoreError / DistNetworkError are RuntimeErrors
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"rank {w.rank}: could not join the {w.size}-process group at {where} within "
                        f"{timeout:g} s (dist.timeout) ({detail}): {TORCHRUN_HINT}") from None
    _world = w


# Seconds a quiet rank lingers before exiting, so that torchrun (which stops every rank once one has
# exited) does not cut rank 0 off before it has printed the error line.
QUIET_EXIT_DELAY_S = 2.0


class PeerFailed(SystemExit):
    """Exit status 2 without a message: another rank met the error and rank 0 reports it."""

    def __init__(self):
        super().__init__(2)


def _quiet_exit() -> PeerFailed:
    import time

    time.sleep(QUIET_EXIT_DELAY_S)
    return PeerFailed()


def agree(error: Optional[BaseException]) -> None:
    """Every rank calls this at the same point with the error it met there (None: none).

    If any rank met one, every rank stops with exit status 2 and one line in all: rank 0
    raises the first failing rank's error (as a :class:`UserError` naming that rank when
    it is not rank 0's own); the other ranks exit quietly (:class:`PeerFailed`), except
    that an error which is not a :class:`UserError` (a bug) keeps its traceback.
    """
    if not _world.active:
        if error is not None:
            raise error
        return
    message = None if error is None else (str(error) if isinstance(error, UserError)
                                          else f"{type(error).__name__}: {error}")
    messages: List[Optional[str]] = [None] * _world.size
    _collective(lambda: torch.distributed.all_gather_object(messages, message))
    failed = [(rank, text) for rank, text in enumerate(messages) if text is not None]
    if not failed:
        return
    if error is not None and not isinstance(error, UserError):
        raise error
    if not _world.writer:
        raise _quiet_exit()
    if error is not None:
        raise error
    rank, text = failed[0]
    raise UserError(f"rank {rank}: {text}")


def _collective(fn: Callable[[], Any]) -> Any:
    """A host-side collective; a peer that died or never answered is one line, not a traceback."""
    try:
        return fn()
    except RuntimeError as exc:
        detail = (str(exc).strip().splitlines() or [""])[0]
        detail = detail.split("] ", 1)[-1].split(". ")[0][:120]  # gloo: "[file:line] Read error ...: reset by peer"
        raise UserError(f"rank {_world.rank}: another rank stopped answering ({detail}); its own output names "
                        "the cause: re-run the same command to resume from the last checkpoint") from None


def check_same_config(cfg) -> None:
    """Refuse ranks started with different settings, naming the first key that differs."""
    if not _world.active:
        return
    from omegaconf import OmegaConf

    from mwm.config import flat_keys  # here: mwm.config reads BACKENDS from this module

    mine = flat_keys(OmegaConf.to_container(cfg, resolve=True))
    configs: List[Optional[dict]] = [None] * _world.size
    _collective(lambda: torch.distributed.all_gather_object(configs, mine))
    for rank, other in enumerate(configs):
        differ = sorted(key for key in set(other) | set(configs[0]) if other.get(key) != configs[0].get(key))
        if differ:
            key = differ[0]
            if _world.writer:
                raise UserError(f"rank {rank} was started with {key}={other.get(key)!r}, rank 0 with "
                                f"{configs[0].get(key)!r}: {TORCHRUN_HINT}")
            raise _quiet_exit()


def open_run(prepare: Callable[[], Any], cfg) -> Any:
    """The run directory: rank 0 prepares it (checks, creates, locks: :func:`mwm.run_dir.prepare_run`);
    the other ranks wait for that, then use it without writing to it (:class:`FollowerRun`)."""
    if not _world.active:
        return prepare()
    run, error = None, None
    if _world.writer:
        try:
            run = prepare()
        except UserError as exc:
            error = exc
    with _closed_on_error():
        agree(error)
    where = [str(run.path)] if run is not None else [None]
    _collective(lambda: torch.distributed.broadcast_object_list(where, src=0))  # the default logdir too
    if run is None:
        run = follower_run(cfg, Path(where[0]))
    else:
        key = batch_key(cfg.run.agent)
        from omegaconf import OmegaConf

        per_rank = OmegaConf.select(cfg, key)
        print(f"{_world.size} ranks ({torch.distributed.get_backend()}): {key} {per_rank} per rank, "
              f"{per_rank * _world.size} in all; rank 0 writes {run.path}")
    from mwm.runtime import resolve_device

    run.device = rank_device(resolve_device(cfg.run.device))
    return run


def follower_run(cfg, path: Path):
    """The run directory ``path`` as seen by a rank other than 0: never written (its replay shard aside)."""
    from mwm.run_dir import RunDir

    class FollowerRun(RunDir):
        def commit(self) -> None:
            self.committed = True

        def restore(self, agent, replay=None) -> Dict:
            """Nothing read here: the state, this rank's replay sampler's included, comes from
            rank 0 (share_state)."""
            return {}

        def save(self, agent, counters: Dict, replay=None, replay_ranks=None) -> None:
            return None

    return FollowerRun(path, cfg, torch.device("cpu"), resumed=False)


# ----------------------------------------------------------------------------- per-rank data


def replay_dir(folder: os.PathLike) -> Path:
    """This rank's replay shard: ``<folder>/rank<k>`` with several ranks, ``<folder>`` itself with one."""
    folder = Path(folder)
    return folder / f"rank{_world.rank}" if _world.active else folder


def rank_seed(seed: int, envs: int = 1) -> int:
    """This rank's env and replay seed: rank k's ``envs`` envs take the seeds after rank k-1's."""
    return seed + _world.rank * envs


def replay_states(replay) -> Optional[List[Dict]]:
    """Every rank's replay sampler state, in rank order, for rank 0's checkpoint (a collective:
    every rank calls it at the same step); None with one process, whose checkpoint holds its own."""
    if not _world.active:
        return None
    states: List[Optional[Dict]] = [None] * _world.size
    mine = replay.rng_state()
    _collective(lambda: torch.distributed.all_gather_object(states, mine))
    return states


def share_state(agent, counters: Dict, seed: int, replay=None, replay_ranks: Optional[List[Dict]] = None) -> Dict:
    """After rank 0 restored ``agent`` (or built it fresh): every rank takes rank 0's weights,
    optimiser states and counters, and its own replay sampler's state from ``replay_ranks``
    (rank 0's checkpoint; a fresh run has none and keeps the rank's seed); then each rank's
    torch, numpy and python generators are seeded apart (from ``seed``, the rank and the step),
    so masks and samples differ by rank."""
    if not _world.active:
        return counters
    payload = [_to_cpu(agent.state_dict()), counters, replay_ranks] if _world.writer else [None, None, None]
    _collective(lambda: torch.distributed.broadcast_object_list(payload, src=0))
    if not _world.writer:
        agent.load_state_dict(payload[0])
    counters, saved = dict(payload[1]), payload[2]
    if replay is not None and saved is not None and len(saved) == _world.size:
        replay.set_rng_state(saved[_world.rank])
    from mwm.runtime import seed_everything

    seed_everything((seed + 1_000_003 * (_world.rank + 1) + 7919 * int(counters.get("step", 0))) % 2**31)
    return counters


def _to_cpu(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return type(state)((key, _to_cpu(value)) for key, value in state.items())
    if isinstance(state, (list, tuple)):
        return type(state)(_to_cpu(value) for value in state)
    return state


def action_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of the random prefill actions: ``default_rng(seed + step)`` on rank 0 (and with one
    process), a stream of its own on every other rank."""
    if _world.rank == 0:
        return np.random.default_rng(seed + step)
    return np.random.default_rng((seed + step, _world.rank))


def agent_steps(envs: int) -> int:
    """Agent steps one loop iteration adds: every rank's envs step once."""
    return envs * _world.size


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (a stop signal seen by one rank stops all)."""
    if not _world.active:
        return bool(flag)
    value = torch.tensor([float(bool(flag))])
    _collective(lambda: torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX))
    return bool(value.item())


def all_ranks(flag: bool) -> bool:
    """True on every rank when it is true on all (every shard can be sampled)."""
    return not any_rank(not flag)


# ----------------------------------------------------------------------------- gradients and statistics


def average_gradients(params: Sequence[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
    """Average ``.grad`` of ``params`` over ranks in place (one all-reduce); returns the loss averaged too.

    Every rank passes the same parameters in the same order (the same modules, the same
    loss structure). The result is bitwise the same on every rank, so clipping, the
    non-finite skip and Adam agree everywhere; a loss that is NaN or inf on any rank is
    non-finite in the average, so every rank skips that update. One process: returns ``loss``.
    """
    if not _world.active:
        return loss
    grads = [p.grad for p in params]
    dtype = grads[0].dtype if grads else torch.float32
    if any(g.dtype != dtype for g in grads):
        raise TypeError("average_gradients: parameters of one optimiser must share a dtype")
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1).to(dtype)])
    torch.distributed.all_reduce(flat)
    flat.div_(_world.size)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[offset].to(loss.dtype)


def batch_moments(flat: torch.Tensor):
    """Mean and (biased) variance over axis 0 of ``flat`` (N, ...), pooled over every rank's batch
    (equal N per rank), so running statistics stay the same on every rank. Pooled from each rank's
    mean and variance (not from the mean square, which cancels badly for tokens far from 0)."""
    mean, var = flat.mean(0), flat.var(0, unbiased=False)
    if not _world.active:
        return mean, var
    every = gather(torch.stack([mean, var])).unflatten(0, (_world.size, 2))  # (ranks, 2, ...)
    pooled = every[:, 0].mean(0)
    return pooled, (every[:, 1] + (every[:, 0] - pooled).square()).mean(0)


def gather(values: torch.Tensor) -> torch.Tensor:
    """Every rank's ``values`` (equal shapes) concatenated along axis 0, rank order; one process: ``values``."""
    if not _world.active:
        return values
    out = values.new_empty((_world.size * values.shape[0], *values.shape[1:]))
    _all_gather_single(out, values.contiguous())
    return out


# ----------------------------------------------------------------------------- logging


# torch >= 2.8 names it all_gather_single; older versions all_gather_into_tensor
_all_gather_single = getattr(torch.distributed, "all_gather_single", None) or torch.distributed.all_gather_into_tensor


def make_logger(make: Callable[[], Any]):
    """Rank 0's logger (``make()``); a :class:`QuietLogger` on the other ranks."""
    return make() if _world.writer else QuietLogger()


class QuietLogger(Logger):
    """The logger of ranks other than 0: queues scalars (:meth:`Logger.scalar`) for
    :func:`reduce_logged`, writes nothing."""

    def __init__(self):  # no files, no TensorBoard writer
        self._scalars: Dict[str, List[Any]] = {}

    def image(self, name: str, array) -> None:
        """Dropped: rank 0 alone writes images."""

    def video(self, name: str, array) -> None:
        """Dropped: rank 0 alone writes videos."""

    def write(self, step: Optional[int] = None, tensorboard_step: Optional[int] = None,
              console: bool = True) -> Dict[str, float]:
        self._scalars = {}
        return {}

    def close(self) -> None:
        """Nothing to close: no files, no TensorBoard writer."""


def reduce_logged(logger) -> None:
    """Replace the scalars queued on every rank's logger by their values over all ranks: the mean
    over the ranks that logged each one (a sum for :data:`SUMMED` keys). Every rank calls it at
    the same point, before ``logger.write``."""
    if not _world.active:
        return
    mine = logger.queued()
    every: List[Optional[dict]] = [None] * _world.size
    _collective(lambda: torch.distributed.all_gather_object(every, mine))
    merged: Dict[str, List[float]] = {}
    for values in every:
        for name, value in values.items():
            merged.setdefault(name, []).append(value)
    logger.replace_queued({name: sum(values) if name in SUMMED else sum(values) / len(values)
                           for name, values in merged.items()})


def close(finished: bool = False) -> None:
    """Leave the process group (end of training). ``finished``: every rank got to the end, so
    they first wait for each other: a rank that tears its group down while another still
    talks to it can abort in gloo's threads ("terminate called without an active exception")."""
    global _world
    if _world.active and torch.distributed.is_initialized():
        if finished:
            _collective(torch.distributed.barrier)
        torch.distributed.destroy_process_group()
    _world = World()
