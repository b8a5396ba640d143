"""Train an agent: ``python -m mwm.train --env atari_pong``.

The loop reads like the algorithm box of the papers: prefill replay with a random
policy, pre-train (MWM: the autoencoder alone), then alternate policy steps in the envs
with scheduled updates, evaluating, logging and checkpointing on their own schedules.

Stopping and resuming. SIGINT or SIGTERM finishes the current step (or pre-training
update), writes a final checkpoint and exits 0; a second signal stops at once. After a
crash (SIGKILL, power cut) re-running the same command resumes from the newest intact
checkpoint. A checkpoint is one consistent snapshot: ``checkpoint-<S>.pt`` holds
``counters["step"] == S`` together with the weights and optimiser states after exactly
``counters["updates"]`` updates and the RNG states of that moment (the replay sampler's
included). Work done after it is redone, except that episodes finished after it stay in
replay (they were saved as they finished) and are trained on; the envs start again from
a reset, so the resumed run's env steps differ from the uninterrupted run's. Until those
reach the learner (episodes still unfinished are not sampled), the resumed run learns
bit for bit what the uninterrupted one would have (tests/test_resume.py), given
``replay.prefetch 0``: prefetching samples ahead of the learner, on a thread. User
mistakes and a full disk exit with status 2 and one line; too many non-finite updates
in a row also exit 2, keeping the last (finite) checkpoint.
"""

from __future__ import annotations

import copy
import errno
import signal
import sys
import time
from typing import Optional, Sequence

import numpy as np

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
        from mwm.logger import line_start

        lead = line_start(sys.stderr) or "\n"  # on a terminal: in place of a progress bar, which is drawn again
        print(f"{lead}{signal.Signals(signum).name}: finishing this step, writing a checkpoint, then stopping",
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
                                                   resume=args.resume, cfg=copy.deepcopy(cfg)), cfg)
    stop = StopFlag()
    stop.install()
    finished = False
    try:
        code = train(run, stop)
        finished = True
        return code
    finally:
        run.close()
        distributed.close(finished)


def train(run: RunDir, stop: StopFlag) -> int:
    """The loop of the module docstring; returns the exit status (0: done or stopped by a signal)."""
    training = Training(run)
    counters, r = training.counters, run.cfg.run
    try:
        while counters.step < r.steps and not distributed.any_rank(stop.signal is not None):
            training.act()                           # 1. prefill with a random policy, then the agent's
            if training.may_learn():
                if not counters.pretrained:
                    training.pretrain(stop)          # 2. once: pre-train (MWM: the autoencoder alone)
                if counters.pretrained and training.should["train"](counters.step):
                    training.update()                # 3. every run.train_every steps: run.train_steps updates
            training.observe()                       # 4. evaluate, log, film, report, checkpoint on schedule
        training.log_last()
    except OSError as error:
        if error.errno not in DISK_ERRNOS:
            raise
        raise disk_error(error, run.path) from error
    except TrainingDiverged as error:
        raise TrainingDiverged(f"{error.args[0].split(':')[0]}: {divergence_advice(run)}") from None
    finally:
        training.close()
    training.save_last()
    print(training.summary(stop.signal))
    return 0


class Training:
    """One process's share of a run: what the loop works with, and its phases as methods.

    Built from the run's config: envs, replay, agent (restored from the newest checkpoint),
    logger; then the collector, the updater (mwm/updater.py: the non-finite guard and the
    fault hook around each update), the schedules and the progress bar.
    """

    def __init__(self, run: RunDir):
        from mwm.collect import Collector
        from mwm.logger import Progress
        from mwm.nonfinite import CUDA_READ_EVERY, NonFiniteGuard
        from mwm.updater import Updater

        self.run, self.cfg = run, run.cfg
        r = self.cfg.run
        seed_everything(r.seed)
        self.env, self.eval_env, self.replay, self.agent, self.counters, self.logger = build(run)
        self.collector = Collector(self.env, self.replay, self.agent, episodes=self.counters.episodes)
        guard = NonFiniteGuard(r.max_nonfinite, read_every=CUDA_READ_EVERY if run.device.type == "cuda" else 1)
        self.updater = Updater(self.agent, self.replay, self.counters, guard)
        self.rng = distributed.action_rng(r.seed, self.counters.step)  # the prefill's random actions
        self.should = {name: Every(every, self.counters.step) for name, every in (
            ("train", r.train_every), ("log", r.log_every), ("report", r.report_every),
            ("eval", r.eval_every), ("checkpoint", r.checkpoint_every), ("video", r.video_every))}
        if run.device.type == "cpu" and r.preset == "default":
            print("warning: paper-size networks on a CPU are very slow (~13 s per update); "
                  "use a GPU, or --preset small for a CPU run", file=sys.stderr)
        print(f"{r.agent} on {r.env} | device {run.device} | {r.preset} preset | logdir {run.path} | "
              f"step {self.counters.step}/{r.steps}")
        self.progress = Progress(total=r.steps, keys=("return",))
        self.start_time, self.start_step, self.start_updates = time.time(), self.counters.step, self.counters.updates
        self.metrics: dict = {}  # the latest update's, logged at the next log step
        self.logged_step = None
        self.saved_step = self.counters.step if run.resumed else None
        self.last_eval = None  # (step, mean return) of the latest evaluation

    # ------------------------------------------------------------ the phases

    def act(self) -> None:
        """One policy step in every env, stored in replay: random actions during prefill."""
        from mwm.collect import random_actions

        env, collector = self.env, self.collector
        if self.counters.step < self.cfg.run.prefill:
            collector.step(lambda obs: random_actions(env.act_space, env.num_envs, self.rng))
        else:
            collector.step(lambda obs: collector.agent_policy(obs, mode="train"))
        self.counters.step += distributed.agent_steps(env.num_envs)  # every rank's envs
        self.counters.episodes = collector.episodes
        maybe_kill("step", self.counters.step)

    def may_learn(self) -> bool:
        """Prefill is over and replay holds a finished episode (on every rank's shard)."""
        return self.counters.step >= self.cfg.run.prefill and distributed.all_ranks(self.replay.num_episodes > 0)

    def pretrain(self, stop: StopFlag) -> None:
        """The rest of the ``run.pretrain`` pre-training updates, one at a time so that a signal stops
        them after the current one and a resumed run continues them; logged every ``run.log_every``
        updates and when they end (:meth:`log_pretraining`)."""
        from mwm.logger import Progress, line_start

        r, counters = self.cfg.run, self.counters
        if r.pretrain:
            print(f"{line_start(sys.stdout)}\npre-training: {r.pretrain - counters.pretrain_updates} of {r.pretrain} "
                  f"updates on {self.replay.num_steps} replay steps")
            bar = Progress(total=r.pretrain, keys=("loss",), unit="updates")
            should_log, unlogged = Every(r.log_every, counters.pretrain_updates), 0
            while counters.pretrain_updates < r.pretrain and not distributed.any_rank(stop.signal is not None):
                self.metrics = self.updater.pretrain()
                self.logger.scalars(self.metrics, prefix="pretrain")
                unlogged += 1
                if should_log(counters.pretrain_updates):
                    self.log_pretraining()
                    unlogged = 0
                # the representation's own loss (mae/loss, siammae/loss); read only when drawn
                bar.update(counters.pretrain_updates,
                           **{"loss": v for k, v in self.metrics.items() if k.endswith("/loss")})
            if unlogged:
                self.log_pretraining()
            bar.close()
        counters.pretrained = counters.pretrain_updates >= r.pretrain

    def update(self) -> None:
        """``run.train_steps`` scheduled updates."""
        for _ in range(self.cfg.run.train_steps):
            self.metrics = self.updater.update()

    def observe(self) -> None:
        """Evaluate, log, film, report and checkpoint, each on its own schedule; then the progress bar."""
        r, should, step = self.cfg.run, self.should, self.counters.step
        ready = self.counters.pretrained  # the policy and the figures mean something
        if self.eval_env is not None and ready and should["eval"](step):
            self.last_eval = (step, self.collector.evaluate(self.eval_env, r.eval_episodes))
            self.logger.scalar("eval/return", self.last_eval[1])
        if should["log"](step):
            self.write_log(step)
        writer = distributed.world().writer  # rank 0 alone films and reports
        if r.video_every and ready and should["video"](step) and writer:
            log_eval_video(self.logger, self.collector, self.run, step)
        if r.report_every and ready and should["report"](step) and writer:
            log_media(self.logger, self.agent.report(self.replay))
            self.logger.scalars(self.agent.diagnostics(self.collector.eval_episodes, self.replay))
            self.logger.write(step)
        if should["checkpoint"](step):
            self.save()
        last_return = self.collector.last_return
        self.progress.update(step, **({} if last_return is None else {"return": last_return}))

    # ------------------------------------------------------------ logging, saving, closing

    def write_log(self, step: int) -> None:
        """The latest update's metrics, the episodes finished since the last log, speeds and counts."""
        collector, logger, counters = self.collector, self.logger, self.counters
        elapsed = max(time.time() - self.start_time, 1e-9)
        logger.scalars(self.metrics)
        logger.scalars(collector.pop_episode_stats())
        if collector.recent_returns:  # the console's "return": the last few episodes, even if none just ended
            logger.scalar("train/recent_return", float(np.mean(collector.recent_returns)))
        logger.scalar("train/frames", step * self.cfg.env.action_repeat)
        logger.scalar("speed/env_steps_per_s", (step - self.start_step) * self.cfg.env.action_repeat / elapsed)
        logger.scalar("speed/agent_steps_per_s", (step - self.start_step) / elapsed)
        logger.scalar("speed/updates_per_s", (counters.updates - self.start_updates) / elapsed)
        logger.scalar("replay/steps", self.replay.num_steps)
        logger.scalar("train/nonfinite_total", self.updater.nonfinite_total)  # updates skipped for NaN / inf
        distributed.reduce_logged(logger)  # over ranks (torchrun)
        logger.write(step)
        self.logged_step = step

    def log_pretraining(self) -> None:
        """Pre-training's metrics, each the mean over the updates since the last such log, as
        ``pretrain/<metric>`` (e.g. ``pretrain/mae/loss``) with ``pretrain/updates``, the updates done.

        The agent step stands still while pre-training runs, so TensorBoard plots these against
        ``pretrain/updates``, their own x-axis under their own names; metrics.jsonl rows keep
        ``step``, the agent step, so that its steps stay in order. No console line: the bar shows
        the loss.
        """
        updates = self.counters.pretrain_updates
        self.logger.scalar("pretrain/updates", updates)
        distributed.reduce_logged(self.logger)  # over ranks (torchrun)
        self.logger.write(self.counters.step, tensorboard_step=updates, console=False)

    def log_last(self) -> None:
        """The final log line, unless the last step was just logged."""
        if self.logged_step != self.counters.step:
            self.write_log(self.counters.step)

    def save(self) -> None:
        """``checkpoint-<step>.pt`` (and its milestone copy when due)."""
        step = self.counters.step
        ranks = distributed.replay_states(self.replay)  # every rank's sampler (torchrun), for rank 0's checkpoint
        path = self.run.save(self.agent, self.counters.as_dict(), self.replay, replay_ranks=ranks)
        keep_milestone(path, step, self.cfg.run.milestone_every)
        self.saved_step = step

    def save_last(self) -> None:
        """The final checkpoint, unless the last step was just saved."""
        if self.saved_step != self.counters.step:
            self.save()

    def close(self) -> None:
        """End the progress bar; stop the collector, the agent's samplers, the envs and the logger."""
        self.progress.close()
        self.collector.close()
        self.agent.close()  # background samplers
        self.env.close()
        if self.eval_env is not None:
            self.eval_env.close()
        self.logger.close()

    def summary(self, stopped_by: Optional[int]) -> str:
        return summary_line(self.counters.as_dict(), self.cfg.env.action_repeat, time.time() - self.start_time,
                            list(self.collector.recent_returns), self.last_eval, self.run.path, stopped_by)


def build(run: RunDir):
    """Envs, replay, agent (restored from the newest checkpoint), counters and logger, in this order;
    then the run directory records the config (run.commit()). A start that fails here closes what
    it built and leaves the directory as it was."""
    from agents import make_agent
    from envs.vector import VectorEnv
    from mwm.counters import Counters
    from mwm.limits import check_model
    from mwm.logger import Logger
    from replay import Replay

    cfg, r, device = run.cfg, run.cfg.run, run.device
    env = eval_env = agent = None
    try:
        rank_seed = distributed.rank_seed(r.seed, r.envs)  # r.seed with one process
        env = VectorEnv(r.env, r.envs, seed=rank_seed, parallel=r.parallel,
                        seed_stride=r.envs * distributed.world().size, **run.env_kwargs())
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
        restored = run.restore(agent, replay)
        counters = Counters.from_dict(distributed.share_state(agent, restored, r.seed, replay, run.replay_ranks))
        run.commit()
        logger = distributed.make_logger(lambda: Logger(run.path))
    except BaseException:
        for item in (env, eval_env):
            if item is not None:
                item.close()
        if agent is not None:
            agent.close()
        raise
    return env, eval_env, replay, agent, counters, logger


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
