"""Data-parallel training (mwm/distributed.py): 2 CPU ranks over gloo, against one process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from helpers_runs import ROOT, child_env, one_error_line, override, run_train
from helpers_distributed import AGENTS, deterministic_sampling, scenario_split, spawn
from mwm import distributed
from mwm.errors import UserError


def test_every_agent_keeps_bitwise_identical_parameters_over_ranks(tmp_path):
    """Each rank samples its own replay shard (different episodes); after 3 updates both ranks hold
    exactly the same parameters (and optimiser states), which moved from where they started."""
    ranks = spawn("identical", tmp_path)
    for name in AGENTS:
        zero, one = ranks[0][name], ranks[1][name]
        assert all(torch.equal(a, b) for a, b in zip(zero["first"], one["first"])), name  # rank 0's start
        assert all(torch.equal(a, b) for a, b in zip(zero["params"], one["params"])), name
        assert any(not torch.equal(a, b) for a, b in zip(zero["first"], zero["params"])), name
        assert zero["losses"] == one["losses"], name  # the loss each optimiser reports is the ranks' mean


def test_a_nonfinite_loss_on_one_rank_skips_the_update_on_every_rank(tmp_path):
    """A NaN in rank 1's batch makes the averaged gradient non-finite: both ranks skip the world-model update
    (weights as they were, streak 1) and still take the same actor-critic update."""
    zero, one = spawn("nonfinite", tmp_path)
    for rank in (zero, one):
        assert rank["model_nonfinite"] == 1 and rank["model_loss"] != rank["model_loss"]  # NaN on both ranks
        assert all(torch.equal(rank["before"][k], rank["after"][k]) for k in rank["before"] if k.startswith("wm."))
    assert all(torch.equal(zero["after"][k], one["after"][k]) for k in zero["after"])
    assert any(not torch.equal(zero["before"][k], zero["after"][k]) for k in zero["after"] if k.startswith("ac.actor"))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_nccl_ranks_with_cuda_graphs_keep_identical_parameters(tmp_path):
    """The GPU path: NCCL, fused Adam and the all-reduce captured in CUDA graphs (the config's speed block)."""
    ranks = spawn("identical", tmp_path, backend="cpu:gloo,cuda:nccl", cuda=True)
    for name in AGENTS:
        assert all(torch.equal(a, b) for a, b in zip(ranks[0][name]["params"], ranks[1][name]["params"])), name
        assert any(not torch.equal(a, b) for a, b in zip(ranks[0][name]["first"], ranks[0][name]["params"])), name


def test_each_ranks_replay_sampler_is_saved_by_rank_0_and_resumes_where_it_was(tmp_path):
    """Rank 0's checkpoint holds every rank's replay sampler (rng["replay_ranks"]); on resume each rank
    continues its own stream, not its seed's start over again nor rank 0's."""
    zero, one = spawn("replay_resume", tmp_path)
    assert zero["gathered"] == one["gathered"] == [zero["saved"], one["saved"]]
    assert zero["saved"] != one["saved"]
    for rank in (zero, one):
        assert rank["resumed"] == rank["saved"] != rank["fresh"]
        assert rank["counters"] == {"step": 40}


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("overrides", [(), ("wm.token_norm=true", "ac.return_norm=true")],
                         ids=["plain", "running-statistics"])
def test_two_ranks_of_batch_b_update_like_one_process_of_batch_2b(tmp_path, monkeypatch, overrides):
    """World model and actor-critic: one update with 2 sequences on each of 2 ranks equals one update with
    the 4 sequences in one process (same weights, same data, sampling made deterministic), and differs
    from an update on one rank's half alone. With token standardisation and return normalisation on,
    their running statistics are those of the whole batch too."""
    ranks = spawn("split", tmp_path, per_rank=2, overrides=overrides)
    from mwm.distributions import OneHotCategorical

    monkeypatch.setattr(OneHotCategorical, "sample", OneHotCategorical.sample)  # undone after the test
    deterministic_sampling()
    whole = scenario_split(0, 1, tmp_path, per_rank=4, overrides=overrides)
    half = scenario_split(0, 1, tmp_path, per_rank=2, overrides=overrides)
    params = ranks[0]["params"]
    assert all(torch.equal(params[k], ranks[1]["params"][k]) for k in params)
    for prefix in ("wm.", "ac.actor.", "ac.critic."):
        names = [k for k in params if k.startswith(prefix)]
        assert names, prefix
        assert all(_close(params[k], whole["params"][k]) for k in names), prefix
        assert not all(_close(params[k], half["params"][k]) for k in names), prefix
    for key in ("model/loss", "actor/loss", "critic/loss", "model/grad_norm"):
        assert _close(ranks[0]["metrics"][key], whole["metrics"][key]), key
    for name, value in whole["buffers"].items():
        assert _close(ranks[0]["buffers"][name], value), name
    if overrides:
        assert not _close(half["buffers"]["representation.token_norm.mean"], whole["buffers"]["representation.token_norm.mean"])


def test_start_up_agreement_flags_and_logged_scalars_over_ranks(tmp_path):
    """An error met on one rank stops all: rank 0 names it in one line, the others exit 2 quietly. Ranks
    started with different settings are refused, naming the key. Stop / start flags agree over ranks;
    logged scalars are reduced over ranks before rank 0 writes them."""
    zero, one = spawn("startup", tmp_path)
    assert zero["agree"] == "UserError: rank 1: cannot open the env" and one["agree"] == "PeerFailed 2"
    assert zero["config"].startswith("UserError: rank 1 was started with replay.batch=5, rank 0 with 4")
    assert one["config"] == "PeerFailed 2"
    assert zero["same"] == one["same"] == "ok"
    # rank 0: loss (0 + 0) / 2 = 0, rank 1: (1 + 2) / 2 = 1.5 -> 0.75; replay steps 10 + 20; a return rank 1 alone had
    assert zero["logged"] == one["logged"] == {"loss": 0.75, "replay/steps": 30.0, "train/return": 7.0}
    assert zero["flags"] == one["flags"] == (True, False, True)


def test_torchrun_start_up_error_is_one_line_from_rank_0(tmp_path):
    """Under torchrun a refused start (here NCCL asked for on CPU) prints one error line for both ranks, every
    rank exits 2 (torchrun then exits 1 with its own summary) and the logdir is not created."""
    logdir = tmp_path / "run"
    done = torchrun(logdir, 100, extra=("--device", "cpu", "--dist.backend", "nccl"))
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: dist.backend nccl needs CUDA devices, but this run's device is cpu: use "
                      "--dist.backend gloo (or auto) for CPU processes"], done.stderr[-3000:]
    assert done.returncode == 1 and "exitcode  : 2" in done.stderr and not logdir.exists()
    done = torchrun(logdir, 100, extra=("--steps", "5"))  # a command-line error: said once too
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--steps is given 2 times" in errors[0], done.stderr[-3000:]


def test_a_rank_that_never_joins_is_one_line_after_the_timeout(monkeypatch):
    import time

    from helpers_distributed import free_port

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    start = time.time()
    with pytest.raises(UserError, match="could not join the 2-process group .* within 2 s"):
        distributed.init(distributed.World(0, 2, 0), "gloo", timeout=2)
    assert time.time() - start < 30 and not distributed.world().active


# ----------------------------------------------------------------------------- torchrun, end to end

TORCHRUN_RUN = ["--env", "toy_catch", "--preset", "tiny", "--run.prefill", "40", "--run.pretrain", "2",
                "--run.train_every", "10", "--run.log_every", "20", "--run.checkpoint_every", "40",
                "--run.parallel", "false", "--env.time_limit", "8", "--run.report_every", "0"]


def torchrun(logdir, steps: int, ranks: int = 2, extra=(), **env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
           "-m", "mwm.train", "--logdir", str(logdir), "--steps", str(steps), *TORCHRUN_RUN, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env(**env), timeout=150)


def shard_steps(logdir) -> dict:
    """rank -> {episode file: steps}, from the names ``<time>-<index>-<length>.npz``."""
    return {k: {p.name: int(p.stem.rsplit("-", 1)[1]) for p in (logdir / "replay" / f"rank{k}").glob("*.npz")}
            for k in (0, 1)}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_rank_run_killed_then_resumed_continues_with_both_replay_shards(tmp_path):
    logdir = tmp_path / "run"
    # rank 1 dies inside the atomic write of its 4th episode (about step 72): a temp file is left in its shard
    killed = torchrun(logdir, 120, MWM_KILL_AT="write:*-3-*.npz", MWM_KILL_RANK="1")
    assert killed.returncode != 0 and "SIGKILL at write:" in killed.stderr, killed.stderr[-3000:]
    assert sorted(p.name for p in (logdir / "checkpoints").glob("*.pt")) == ["checkpoint-40.pt"]
    assert [p for p in (logdir / "replay" / "rank1").iterdir() if p.name.startswith(".")]
    before = shard_steps(logdir)
    assert before[0] and before[1] and not list((logdir / "replay").glob("*.npz"))

    resumed = torchrun(logdir, 120)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "at step 40" in resumed.stdout
    assert "removed 1 unfinished temp file(s) left in" in resumed.stderr
    assert not [p for p in (logdir / "replay" / "rank1").iterdir() if p.name.startswith(".")]
    assert "done: 120 agent steps" in resumed.stdout and resumed.stdout.count("done:") == 1  # rank 0 speaks
    assert (logdir / "checkpoints" / "checkpoint-120.pt").exists()
    after = shard_steps(logdir)
    for k in (0, 1):  # each rank kept its shard and added to it
        assert before[k].items() <= after[k].items() and len(after[k]) > len(before[k]), k
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    first = [row for row in rows if row["step"] == 60][-1]  # the resumed run's first log (20 new steps)
    # replay/steps sums the ranks' replays: both shards were loaded back
    assert first["replay/steps"] >= sum(sum(s.values()) for s in before.values()), first
    assert sorted(p.name for p in logdir.iterdir() if not p.name.startswith("events.")) == [
        ".lock", "checkpoints", "config.yaml", "metrics.jsonl", "replay"]

    single = run_train(logdir, "--steps", "160", *TORCHRUN_RUN)  # one process cannot take over 2 ranks' run
    assert single.returncode == 2
    one_error_line(single.stderr, ["dist.world_size=2, not 1"])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_to_torchrun_stops_every_rank_at_one_step_with_a_checkpoint(tmp_path):
    """torchrun forwards SIGINT to every rank; they agree on the step to stop at, rank 0 writes its checkpoint."""
    import re
    import signal
    import time

    logdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mwm.train",
           "--logdir", str(logdir), "--steps", "100000", *override(TORCHRUN_RUN, "--run.checkpoint_every", "100000")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=child_env())
    lines = []
    for line in proc.stdout:  # rank 0's console
        lines.append(line)
        if line.startswith("step 60 |"):
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    stdout = "".join(lines) + out
    done = re.search(r"done: (\d+) agent steps.*stopped by SIGINT", stdout)
    assert done, stdout[-2000:] + err[-3000:]
    step = int(done.group(1))
    assert [p.name for p in (logdir / "checkpoints").glob("*.pt")] == [f"checkpoint-{step}.pt"] and step > 60
    assert "Traceback" not in err.split("SignalException")[0].split("Received")[0]  # the ranks stopped cleanly


# ----------------------------------------------------------------------------- one process, no group


def test_one_process_is_untouched():
    """Without torchrun's variables the world is one process and every hook returns its input."""
    assert distributed.from_environment({}) == distributed.World()
    assert not distributed.world().active
    grad = torch.ones(3)
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = grad
    loss = torch.tensor(2.0)
    assert distributed.average_gradients([param], loss) is loss and param.grad is grad
    assert distributed.replay_dir("x/replay").as_posix() == "x/replay"
    assert distributed.rank_seed(5, 4) == 5 and distributed.agent_steps(3) == 3
    assert distributed.any_rank(True) and not distributed.all_ranks(False)


def test_torchrun_variables_are_read_and_checked():
    world = distributed.from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert world == distributed.World(3, 4, 1) and world.active and not world.writer
    assert distributed.rank_seed.__defaults__ == (1,)
    for env in ({"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "x", "WORLD_SIZE": "2"}):
        with pytest.raises(UserError):
            distributed.from_environment(env)


def test_nccl_on_cpu_is_one_clear_error():
    with pytest.raises(UserError, match="nccl needs CUDA devices"):
        distributed.backend_for("nccl", torch.device("cpu"))
    assert distributed.backend_for("auto", torch.device("cpu")) == "gloo"


def test_global_batch_splits_over_ranks_or_is_refused():
    from mwm import config

    cfg = config.build("toy_catch", "dreamerv2", "tiny", ["dist.global_batch=8"])
    four = distributed.World(0, 4, 0)
    assert distributed.resolve_overrides(cfg, ["dist.global_batch=8"], four) == [
        "dist.global_batch=8", "dist.world_size=4", "replay.batch=2"]
    with pytest.raises(UserError, match="does not split over 3 ranks"):
        distributed.resolve_overrides(cfg, [], distributed.World(0, 3, 0))
    cfg = config.build("toy_catch", "dreamerv2", "tiny", ["dist.global_batch=8", "replay.batch=3"])
    with pytest.raises(UserError, match="disagree"):
        distributed.resolve_overrides(cfg, ["dist.global_batch=8", "replay.batch=3"], four)
    with pytest.raises(UserError, match="set by torchrun|number of processes"):
        distributed.resolve_overrides(cfg, ["dist.world_size=2"], four)


def test_quiet_logger_takes_every_call_the_logger_takes_and_writes_nothing(tmp_path, monkeypatch):
    """Ranks other than 0 log into a QuietLogger: every Logger call works (as pre-training's
    ``write(..., tensorboard_step=)``), scalars queue for the reduction, and nothing is written."""
    monkeypatch.chdir(tmp_path)
    logger = distributed.QuietLogger()
    logger.scalars({"loss": 1.0}, prefix="model")
    logger.scalar("model/loss", 3.0)
    assert logger.queued() == {"model/loss": 2.0}  # what reduce_logged reads
    logger.image("img", torch.zeros(2, 2, 3))
    logger.video("vid", torch.zeros(1, 2, 2, 2, 3))
    assert logger.write(5, tensorboard_step=2, console=False) == {} and logger.queued() == {}
    logger.close()
    assert not list(tmp_path.iterdir())
