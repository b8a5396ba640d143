"""Train an agent: ``python -m mwm.train --env atari_pong``.

The loop reads like the algorithm box of the papers: prefill replay with a random
policy, pre-train (MWM: the autoencoder alone), then alternate policy steps in the envs
with scheduled updates, evaluating, logging and checkpointing on their own schedules.

Stopping and resuming. SIGINT or SIGTERM finishes the current step (or pre-training
update), writes a final checkpoint and exits 0; a second signal stops at once. After a
crash (SIGKILL, power cut) re-running the same command resumes from the newest intact
checkpoint. A checkpoint is one consistent snapshot: ``checkpoint-<S>.pt`` holds
``counters["step"] == S`` together with the weights and optimiser states after exactly
``counters["updates"]`` updates and the RNG states of that moment. Work done after it is
redone, except that episodes finished after it stay in replay (they were saved as they
finished) and are trained on. User mistakes and a full disk exit with status 2 and one
line; too many non-finite updates in a row also exit 2, keeping the last (finite)
checkpoint.
"""

from __future__ import annotations

import errno
import signal
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch

from mwm import cli, distributed
from mwm.errors import UserError
from mwm.faults import maybe_kill
from mwm.nonfinite import TrainingDiverged
from mwm.run_dir import RunDir, prepare_run
from mwm.runtime import Every, seed_everything

EPILOG = """examples:
  python -m mwm.train --env atari_pong                     # MWM, paper sizes (GPU)
  python -m mwm.train --env toy_catch --preset small       # a usable CPU run
  python -m mwm.train --env dmc_walker_walk --agent dreamerv2 --rssm.deter 600
  python -m mwm.train --env atari_pong --logdir runs/pong  # again: resumes the run

Every config key is a flag: --mae.mask_ratio 0.9, --run.envs 4. --print-config lists
every key with the value it resolves to (the schema with each key's meaning is
mwm/config.py; values come from configs/*.yaml). Re-running with an existing --logdir
resumes from its last checkpoint. Evaluate a run with python -m mwm.eval --logdir RUN."""


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = cli.make_parser("python -m mwm.train", "Train MWM or a baseline agent from pixels.", EPILOG)
    parser.add_argument("--agent", default="mwm", help="mwm (default), dreamerv2, curl or siammae")
    parser.add_argument("--steps", help="agent steps to train for (each is env.action_repeat frames)")
    parser.add_argument("--resume", action="store_true", help="require an existing run in --logdir to continue")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (every key and its value) and exit without training")
    return cli.parse(parser, argv)


def print_config(args, overrides) -> int:
    """The config a run with these flags would use, as YAML; nothing is created or written."""
    from omegaconf import OmegaConf

    from mwm import config as config_lib

    cfg = config_lib.build(args.env, args.agent, args.preset, overrides)
    if not cfg.run.logdir:  # the default prepare_run gives
        cfg.run.logdir = f"runs/{args.env}-{args.agent}-seed{cfg.run.seed}"
    print(OmegaConf.to_yaml(cfg, resolve=True), end="")
    return 0


class StopFlag:
    """Turns SIGINT / SIGTERM into a request to stop after the current step."""

    def __init__(self):
        self.signal: Optional[int] = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, writing a checkpoint, then stopping",
              file=sys.stderr)


# Write errors that mean "the disk cannot take more", reported as one line.
DISK_ERRNOS = {getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EIO") if hasattr(errno, name)}


def disk_error(error: OSError, fallback: object) -> UserError:
    """A full or failing disk met outside the atomic writers (logs, TensorBoard) as a UserError."""
    from mwm.atomic import describe_os_error

    return UserError(describe_os_error(error, str(error.filename or fallback)))


# The learning-rate keys of each agent's optimisers (all may change on resume, mwm/run_dir.py).
LR_KEYS = {"mwm": ("mae.lr", "wm.lr", "ac.actor_lr", "ac.critic_lr"),
           "dreamerv2": ("wm.lr", "ac.actor_lr", "ac.critic_lr"),
           "siammae": ("mae.lr", "wm.lr", "ac.actor_lr", "ac.critic_lr"),
           "curl": ("curl.lr", "curl.actor_lr", "curl.critic_lr", "curl.encoder_lr")}


def divergence_advice(run: RunDir) -> str:
    """What to do after too many non-finite updates, true to what is on disk."""
    from mwm.checkpoint import list_checkpoints

    from omegaconf import OmegaConf

    cfg = run.cfg
    flags = " ".join(f"--{key} {float(OmegaConf.select(cfg, key)) / 2:.3g}" for key in LR_KEYS[cfg.run.agent])
    files = list_checkpoints(str(run.checkpoints))
    if files:
        step, path = files[-1]
        return (f"the run stopped and {path} (step {step}) is kept: re-run the same command with lower learning "
                f"rates to resume from it (e.g. half: {flags}), or check the inputs")
    return ("the run stopped before its first checkpoint, so it will start from step 0 again: re-run the same "
            f"command with lower learning rates (e.g. half: {flags}), or check the inputs")



def log_media(logger, media: dict) -> None:
    """Arrays (H, W, C) are images, (T, H, W, C) videos."""
    for name, array in media.items():
        (logger.video if np.ndim(array) == 4 else logger.image)(name, array)


# Frames of one evaluation video at most (a GIF in TensorBoard; Atari episodes run to 27,000 steps).
VIDEO_FRAMES = 500
MILESTONES = "milestones"


def log_eval_video(logger, collector, run: RunDir, step: int) -> None:
    """One episode of the evaluation policy as ``eval/video``, always from the same start (an env
    seed neither the training envs nor the evaluation env use), so videos compare over training."""
    from envs.vector import VectorEnv

    seed = run.cfg.run.seed + 20_000
    with VectorEnv(run.cfg.run.env, 1, seed=seed, parallel=False, **run.env_kwargs()) as env:
        logger.video("eval/video", collector.film(env, VIDEO_FRAMES))
    logger.write(step)


def keep_milestone(path: str, step: int, every: int) -> None:
    """Keep checkpoint ``path`` of ``step`` also as ``checkpoints/milestones/<name>`` when ``step`` is a
    multiple of ``every`` (0: never): rotation deletes the original, not the milestone (a hard link where
    the file system has them, else a copy)."""
    import os

    if path is None or not every or step % every:  # None: a rank other than 0 saves nothing
        return
    folder = os.path.join(os.path.dirname(path), MILESTONES)
    target = os.path.join(folder, os.path.basename(path))
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(target):
        os.remove(target)  # a resumed run wrote this step again
    try:
        os.link(path, target)
    except OSError:
        from mwm.atomic import atomic_write_bytes

        with open(path, "rb") as source:
            atomic_write_bytes(target, source.read())


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, overrides = distributed.parse(lambda: parse_args(argv))  # torchrun: a bad flag said once
    if args.print_config:
        return print_config(args, overrides)
    from mwm import config as config_lib

    cfg, overrides = distributed.start(lambda extra: config_lib.build(args.env, args.agent, args.preset, extra),
                                       overrides)  # torchrun: join the ranks; one process: as before
    run = distributed.open_run(lambda: prepare_run(args.env, args.agent, args.preset, overrides,
                                                   resume=args.resume), cfg)
    stop = StopFlag()
    stop.install()
    try:
        return train(run, stop)
    finally:
        run.close()
        distributed.close()


def train(run: RunDir, stop: StopFlag) -> int:
    from agents import make_agent
    from envs.vector import VectorEnv
    from mwm.collect import Collector, random_actions
    from mwm.logger import Logger, Progress
    from mwm.nonfinite import CUDA_READ_EVERY, NonFiniteGuard
    from mwm.limits import check_model
    from replay import Replay

    cfg, r = run.cfg, run.cfg.run
    seed_everything(r.seed)
    device = run.device
    # Build everything the config implies before the run directory records it (run.commit()):
    # a start that fails here leaves the directory as it was.
    env = eval_env = agent = None
    try:
        rank_seed = distributed.rank_seed(r.seed, r.envs)  # r.seed with one process
        env = VectorEnv(r.env, r.envs, seed=rank_seed, parallel=r.parallel, **run.env_kwargs())
        replay = Replay(distributed.replay_dir(run.path / "replay"), capacity=cfg.replay.capacity, seed=rank_seed)
        replay.load(image_shape=env.obs_space["image"].shape)  # episodes of another image shape: refused
        if r.eval_every and distributed.world().writer:
            eval_env = VectorEnv(r.env, 1, seed=r.seed + 10_000, parallel=False, **run.env_kwargs())
        try:
            agent = make_agent(cfg, env.obs_space, env.act_space, device)
        except (ValueError, TypeError) as error:  # model code names the bad value; the config set it
            raise UserError(f"cannot build the {r.agent} agent from this config ({error}): change the flag "
                            "that sets it") from error
        check_model(cfg, agent, device)
        counters = distributed.share_state(agent, run.restore(agent), r.seed)  # rank 0's, on every rank
        run.commit()
        logger = distributed.make_logger(lambda: Logger(run.path))
    except BaseException:
        for item in (env, eval_env):
            if item is not None:
                item.close()
        if agent is not None and hasattr(agent, "close"):
            agent.close()
        raise
    collector = Collector(env, replay, agent, logger, episodes=counters["episodes"])
    guard = NonFiniteGuard(r.max_nonfinite, read_every=CUDA_READ_EVERY if device.type == "cuda" else 1)
    rng = distributed.action_rng(r.seed, counters["step"])

    should = {name: Every(every, counters["step"]) for name, every in (
        ("train", r.train_every), ("log", r.log_every), ("report", r.report_every),
        ("eval", r.eval_every), ("checkpoint", r.checkpoint_every), ("video", r.video_every))}
    if device.type == "cpu" and r.preset == "default":
        print("warning: paper-size networks on a CPU are very slow (~13 s per update); "
              "use a GPU, or --preset small for a CPU run", file=sys.stderr)
    print(f"{r.agent} on {r.env} | device {device} | {r.preset} preset | logdir {run.path} | "
          f"step {counters['step']}/{r.steps}")
    progress = Progress(total=r.steps, keys=("return",))
    start_time, start_step, start_updates = time.time(), counters["step"], counters["updates"]
    metrics: dict = {}
    logged_step = None
    saved_step = counters["step"] if run.resumed else None
    last_eval = None  # (step, mean return) of the latest evaluation

    def write_log(step: int) -> None:
        nonlocal logged_step
        elapsed = max(time.time() - start_time, 1e-9)
        logger.scalars(metrics)
        logger.scalars(collector.pop_episode_stats())
        if collector.recent_returns:  # the console's "return": the last few episodes, even if none just ended
            logger.scalar("train/recent_return", float(np.mean(collector.recent_returns)))
        logger.scalar("train/frames", step * cfg.env.action_repeat)
        logger.scalar("speed/env_steps_per_s", (step - start_step) * cfg.env.action_repeat / elapsed)
        logger.scalar("speed/agent_steps_per_s", (step - start_step) / elapsed)
        logger.scalar("speed/updates_per_s", (counters["updates"] - start_updates) / elapsed)
        logger.scalar("replay/steps", replay.num_steps)
        logger.scalar("train/nonfinite_total", guard.total)  # updates skipped for NaN / inf so far
        distributed.reduce_logged(logger)  # over ranks (torchrun)
        logger.write(step)
        logged_step = step

    try:
        while counters["step"] < r.steps and not distributed.any_rank(stop.signal is not None):
            # 1. Act: random policy during prefill, then the agent's.
            if counters["step"] < r.prefill:
                collector.step(lambda obs: random_actions(env.act_space, env.num_envs, rng))
            else:
                collector.step(lambda obs: collector.agent_policy(obs, mode="train"))
            counters["step"] += distributed.agent_steps(env.num_envs)  # every rank's envs
            counters["episodes"] = collector.episodes
            maybe_kill("step", counters["step"])

            # 2. Learn: the one-off pre-training (one update at a time, so that a signal
            # stops it and a resume continues it), then scheduled updates.
            if counters["step"] >= r.prefill and distributed.all_ranks(replay.num_episodes > 0):
                if not counters["pretrained"]:
                    if r.pretrain:
                        print(f"\npre-training: {r.pretrain - counters['pretrain_updates']} of {r.pretrain} "
                              f"updates on {replay.num_steps} replay steps")
                        bar = Progress(total=r.pretrain, keys=("loss",), unit="updates")
                        while counters["pretrain_updates"] < r.pretrain and not distributed.any_rank(
                                stop.signal is not None):
                            metrics = guard.check(agent.pretrain(replay, 1), counters["step"])
                            maybe_kill("update", counters["updates"])
                            counters["updates"] += 1
                            counters["pretrain_updates"] += 1
                            # the representation's own loss (mae/loss, siammae/loss); read only when drawn
                            bar.update(counters["pretrain_updates"],
                                       **{"loss": v for k, v in metrics.items() if k.endswith("/loss")})
                        bar.close()
                    counters["pretrained"] = counters["pretrain_updates"] >= r.pretrain
                if counters["pretrained"] and should["train"](counters["step"]):
                    for _ in range(r.train_steps):
                        metrics = guard.check(agent.update(replay), counters["step"])
                        maybe_kill("update", counters["updates"])
                        counters["updates"] += 1

            # 3. Observe: evaluation, logs, figures, checkpoints.
            step = counters["step"]
            if eval_env is not None and counters["pretrained"] and should["eval"](step):
                last_eval = (step, collector.evaluate(eval_env, r.eval_episodes))
                logger.scalar("eval/return", last_eval[1])
            if should["log"](step):
                write_log(step)
            if r.video_every and counters["pretrained"] and should["video"](step) and distributed.world().writer:
                log_eval_video(logger, collector, run, step)
            if r.report_every and counters["pretrained"] and should["report"](step) and distributed.world().writer:
                log_media(logger, agent.report(replay))
                logger.scalars(agent.diagnostics(collector.eval_episodes, replay))
                logger.write(step)
            if should["checkpoint"](step):
                keep_milestone(run.save(agent, counters), step, r.milestone_every)
                saved_step = step
            progress.update(step, **({} if collector.last_return is None else {"return": collector.last_return}))
        if logged_step != counters["step"]:
            write_log(counters["step"])
    except OSError as error:
        if error.errno not in DISK_ERRNOS:
            raise
        raise disk_error(error, run.path) from error
    except TrainingDiverged as error:
        raise TrainingDiverged(f"{error.args[0].split(':')[0]}: {divergence_advice(run)}") from None
    finally:
        progress.close()
        collector.close()
        if hasattr(agent, "close"):  # background samplers
            agent.close()
        env.close()
        if eval_env is not None:
            eval_env.close()
        logger.close()
    if saved_step != counters["step"]:
        keep_milestone(run.save(agent, counters), counters["step"], r.milestone_every)
    print(summary_line(counters, cfg.env.action_repeat, time.time() - start_time, list(collector.recent_returns),
                       last_eval, run.path, stop.signal))
    return 0


def summary_line(counters: dict, action_repeat: int, elapsed: float, recent: list, last_eval, path,
                 stopped_by: Optional[int] = None) -> str:
    """``done: 1000 agent steps (4000 frames), 12 episodes, 200 updates in 0:05:00 | return +1.50
    (mean of the last 10 episodes) | eval +2.00 at step 1000 | logdir runs/x``."""
    from mwm.logger import format_duration

    if recent:
        train = f"return {np.mean(recent):+.2f} (mean of the last {len(recent)} episode{'s' * (len(recent) > 1)})"
    else:
        train = "no episode finished in this session"
    parts = [f"done: {counters['step']} agent steps ({counters['step'] * action_repeat} frames), "
             f"{counters['episodes']} episodes, {counters['updates']} updates in {format_duration(elapsed)}", train]
    if last_eval is not None:
        parts.append(f"eval {last_eval[1]:+.2f} at step {last_eval[0]}")
    parts.append(f"logdir {path}")
    if stopped_by:
        parts.append(f"stopped by {signal.Signals(stopped_by).name}")
    return " | ".join(parts)


if __name__ == "__main__":
    cli.run_main(main)
