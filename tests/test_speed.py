"""Speed paths (mwm/speed.py): each computes what the eager reference computes.

CUDA is not needed: the CUDA-graph wrapper is driven through a CPU stand-in that
replays the recorded step on its static buffers, as a graph does; the compiled path
uses the aot_eager backend (dynamo + AOTAutograd, without Inductor's slow C++ build);
host synchronisations are found with meta tensors, which refuse any host read.
"""

import copy
import tempfile
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import agents.world_model_agent as world_model_agent
from agents.registry import agent_class
from mwm import config, speed
from mwm.errors import UserError
from mwm.optim import Optimizer
from mwm.speed import GraphedStep, SpeedSettings, compile_modules, flatten, speed_settings, unflatten
from mwm.vit import Transformer
from replay import Replay
from replay.prefetch import DeviceEpisodes, DeviceSampler

OBS = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)})
DISCRETE = gym.spaces.Discrete(3)
CONTINUOUS = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and stay fast when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class RerunCapture:
    """CPU stand-in for :class:`mwm.speed.CudaGraphCapture`.

    ``capture`` records the step and its static input buffers without running it;
    ``replay`` runs it on those same buffers and writes the results into fixed output
    buffers, as a CUDA graph's replay does. A wrapper that forgot to refresh the
    inputs, or handed out the output buffers themselves, gives wrong results here.
    """

    syncs: list = []

    def __init__(self):
        self.fn = self.inputs = self.outputs = None
        self.replays = 0

    def warmup(self, fn, inputs, detect_syncs):
        return fn(inputs), list(self.syncs) if detect_syncs else []

    def capture(self, fn, inputs):
        self.fn, self.inputs = fn, inputs

    def replay(self):
        packed, others = self.fn(self.inputs)
        if self.outputs is None:
            self.outputs = (packed, others)
        else:
            if packed is not None:
                self.outputs[0].copy_(packed)
            for static, new in zip(self.outputs[1], others):
                static.copy_(new)
        self.replays += 1


class SyncingCapture(RerunCapture):
    syncs = ["called a synchronizing CUDA operation"]


class FailingCapture(RerunCapture):
    def capture(self, fn, inputs):
        raise RuntimeError("operation not permitted when stream is capturing")


# ----------------------------------------------------------------- settings and helpers


def test_cuda_only_switches_are_off_on_cpu_and_compile_follows_its_choice():
    on = dict(precision="bf16", fused_optim=True, pin_memory=True, cuda_graph=True, replay_on_device=True)
    cpu = speed_settings("cpu", compile="auto", **on)
    assert not (cpu.bf16 or cpu.fused_optim or cpu.pin_memory or cpu.cuda_graph or cpu.replay_on_device)
    assert not cpu.compile and speed_settings("cpu", compile="always").compile
    cuda = speed_settings("cuda", compile="auto", compile_backend="aot_eager", **on)
    assert cuda.bf16 and cuda.fused_optim and cuda.cuda_graph and cuda.compile and cuda.replay_on_device
    assert not speed_settings("cuda", compile="never").compile
    with pytest.raises(UserError):
        speed_settings("cuda", cuda_graph=True, fused_optim=False)
    with pytest.raises(UserError):
        speed_settings("cpu", compile="on")


def test_inductor_without_triton_runs_uncompiled_with_a_warning(monkeypatch):
    monkeypatch.setattr(speed, "_has_triton", lambda: False)
    with pytest.warns(UserWarning, match="Triton"):
        assert not speed_settings("cuda", compile="auto", compile_backend="inductor").compile
    monkeypatch.setattr(speed, "_has_triton", lambda: True)
    assert speed_settings("cuda", compile="auto", compile_backend="inductor").compile


def test_speed_keys_are_in_the_config_and_checked():
    cfg = config.build("toy_catch", "mwm", "tiny")
    assert set(cfg.speed) >= {"precision", "fused_optim", "pin_memory", "cuda_graph", "compile",
                              "compile_backend", "replay_on_device"}
    with pytest.raises(UserError, match="speed.compile"):
        config.build("toy_catch", "mwm", "tiny", ["speed.compile=sometimes"])


def test_flatten_round_trips_nested_outputs():
    tree = ({"a": torch.ones(2), "b": {"c": torch.zeros(())}}, [torch.arange(3), 7, None])
    leaves, spec = flatten(tree)
    assert len(leaves) == 3
    rebuilt = unflatten(spec, [leaf + 1 for leaf in leaves])
    assert torch.equal(rebuilt[0]["b"]["c"], torch.ones(())) and rebuilt[1][1:] == [7, None]
    assert isinstance(rebuilt, tuple) and isinstance(rebuilt[1], list)


def test_compile_modules_compiles_outermost_transformers_only():
    model = torch.nn.Sequential(Transformer(8, 1, 2), torch.nn.Linear(8, 8), Transformer(8, 1, 2))
    keys = list(model.state_dict())
    assert compile_modules(model, (Transformer,), backend="eager") == ["0", "2"]
    assert list(model.state_dict()) == keys  # checkpoints do not see the compilation


# ----------------------------------------------------------------- the graph-safe optimizer


def run_optimizer(capturable: bool, losses) -> tuple:
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(5))
    opt = Optimizer("m", [param], lr=0.1, wd=0.01, warmup=3, fused=True, capturable=capturable)
    streaks = []
    for scale in losses:
        if capturable:
            opt.schedule()  # the host half, outside what a graph would hold
        opt.step((param**2).sum() * scale + param.sum())
        streaks.append(int(opt.nonfinite_in_row))
    return param.detach(), opt, streaks


def test_capturable_optimizer_makes_the_eager_update():
    losses = [1.0, 2.0, float("nan"), float("inf"), 0.5, 1.0]  # warm-up, skips, decay
    eager, eager_opt, eager_streaks = run_optimizer(False, losses)
    graph, graph_opt, graph_streaks = run_optimizer(True, losses)
    assert torch.allclose(eager, graph, rtol=1e-6, atol=1e-7)
    assert eager_streaks == graph_streaks == [0, 0, 1, 2, 0, 0]
    assert eager_opt.updates == graph_opt.updates == len(losses)
    state = graph_opt.adam.state[graph_opt.params[0]]
    assert torch.allclose(state["exp_avg_sq"], eager_opt.adam.state[eager_opt.params[0]]["exp_avg_sq"])


def test_capturable_optimizer_keeps_its_counter_tensor_in_place():
    param = torch.nn.Parameter(torch.ones(2))
    opt = Optimizer("m", [param], lr=0.1, fused=True, capturable=True)
    counter = opt.nonfinite_in_row  # a captured graph holds this address
    opt.schedule()
    opt.step(param.sum() * float("nan"))
    opt.load_state_dict(opt.state_dict())
    assert opt.nonfinite_in_row is counter and int(counter) == 1


@pytest.mark.parametrize("source, target", [(False, True), (True, False)])
def test_optimizer_state_moves_between_the_two_forms(source, target):
    def make(capturable, value):
        param = torch.nn.Parameter(torch.full((3,), value))
        return param, Optimizer("m", [param], lr=0.1, wd=0.01, warmup=5, fused=True, capturable=capturable)

    def step(param, opt):
        if opt.capturable:
            opt.schedule()
        opt.step((param**2).sum())

    param, opt = make(source, 1.0)
    for _ in range(2):
        step(param, opt)
    twin, twin_opt = make(target, 0.0)
    twin.data.copy_(param.detach())
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # as read back from a checkpoint
    assert twin_opt.capturable == target and twin_opt.adam.param_groups[0]["capturable"] == target
    step(param, opt)
    step(twin, twin_opt)
    assert torch.allclose(param, twin, rtol=1e-6) and twin_opt.current_lr() == opt.current_lr()


def test_graph_form_needs_fused_adam():
    with pytest.raises(ValueError, match="fused"):
        Optimizer("m", [torch.nn.Parameter(torch.ones(1))], lr=0.1, fused=False, capturable=True)


# ----------------------------------------------------------------- GraphedStep


def affine_step():
    """A step with device state (an accumulator) and host-side preparation (a counter)."""
    weight = torch.tensor([2.0, 3.0])
    total = torch.zeros(())
    prepared = []

    def fn(inputs):
        y = inputs["x"] * weight + inputs["shift"]["b"]  # (2,)
        total.add_(y.sum())  # in place: replay updates the same buffer
        return {"y": y, "sum": y.sum(), "total": total + 0}

    return fn, total, prepared


def test_graphed_step_warms_up_captures_then_replays_fresh_inputs():
    fn, total, prepared = affine_step()
    step = GraphedStep(fn, "affine", prepare=lambda: prepared.append(1), warmup=2, make_capture=RerunCapture)
    outputs = []
    for i in range(5):
        outputs.append(step({"x": torch.full((2,), float(i)), "shift": {"b": torch.tensor(1.0)}}))
    assert step.captured and step._backend.replays == 3 and len(prepared) == 5
    for i, out in enumerate(outputs):  # each call saw its own input, and kept its own outputs
        assert torch.equal(out["y"], torch.tensor([2.0 * i + 1, 3.0 * i + 1]))
        assert out["sum"].dtype == torch.float32 and float(out["sum"]) == 5.0 * i + 2
    assert float(total) == sum(5.0 * i + 2 for i in range(5))
    with pytest.raises(ValueError, match="static shapes"):
        step({"x": torch.zeros(3), "shift": {"b": torch.tensor(1.0)}})


def test_graphed_step_reset_captures_again():
    fn, _, _ = affine_step()
    step = GraphedStep(fn, "affine", warmup=1, make_capture=RerunCapture)
    inputs = {"x": torch.ones(2), "shift": {"b": torch.tensor(0.0)}}
    step(inputs), step(inputs)
    assert step.captured
    step.reset()
    assert not step.captured
    assert torch.equal(step(inputs)["y"], torch.tensor([2.0, 3.0])) and not step.captured


@pytest.mark.parametrize("backend, reason", [(SyncingCapture, "synchronises"), (FailingCapture, "capture failed")])
def test_graphed_step_falls_back_to_eager_with_one_warning(backend, reason):
    fn, total, _ = affine_step()
    step = GraphedStep(fn, "affine", warmup=1, make_capture=backend)
    inputs = {"x": torch.ones(2), "shift": {"b": torch.tensor(0.0)}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [step(inputs) for _ in range(4)]
    assert [str(w.message) for w in caught if reason in str(w.message)] and len(caught) == 1
    assert reason.split()[0] in step.eager_reason and not step.captured
    assert all(torch.equal(r["y"], torch.tensor([2.0, 3.0])) for r in results) and float(total) == 20.0


# ----------------------------------------------------------------- agents: graph and compiled paths


def random_replay(seed: int = 1, discrete: bool = True) -> Replay:
    rng = np.random.default_rng(0)
    replay = Replay(tempfile.mkdtemp(), 10_000, seed=seed)
    for _ in range(3):
        length = 40
        action = (np.eye(3, dtype=np.float32)[rng.integers(0, 3, length)] if discrete
                  else rng.uniform(-1, 1, (length, 2)).astype(np.float32))
        replay.add_episode({"image": rng.integers(0, 256, (length, 64, 64, 3), dtype=np.uint8), "action": action,
                            "reward": rng.normal(size=length).astype(np.float32),
                            "is_first": np.arange(length) == 0, "is_last": np.arange(length) == length - 1,
                            "is_terminal": np.arange(length) == length - 1}, save=False)
    return replay


def build_agent(name: str, act_space, *overrides: str):
    torch.manual_seed(0)
    cfg = config.build("toy_catch", name, "tiny", list(overrides))
    return agent_class(name)(cfg, OBS, act_space, torch.device("cpu"))


def graph_settings(device, **_ignored) -> SpeedSettings:
    """The CUDA switches of the graph path, on the CPU."""
    return SpeedSettings(device=torch.device(device), bf16=False, fused_optim=True, pin_memory=False,
                         cuda_graph=True, compile=False, compile_backend="inductor", replay_on_device=False)


def train(agent, updates: int, act_space):
    torch.manual_seed(1)  # the same draws (masks, latents, actions) for every agent trained
    replay = random_replay(discrete=hasattr(act_space, "n"))
    metrics = [agent.update(replay) for _ in range(updates)]
    obs = {"image": torch.zeros(2, 64, 64, 3, dtype=torch.uint8, device=agent.device),
           "is_first": torch.tensor([True, False], device=agent.device)}
    state = None
    for _ in range(5):  # warm-up, capture, replays of the policy graph
        action, state = agent.policy(obs, state)
    return metrics, action, state


def assert_same_training(reference, other, tolerance: float) -> None:
    (ref_metrics, ref_action, ref_state), (metrics, action, state) = reference, other
    assert set(ref_metrics[-1]) == set(metrics[-1])
    for step, (a, b) in enumerate(zip(ref_metrics, metrics)):
        for key in a:
            assert torch.allclose(a[key].float(), b[key].float(), rtol=tolerance, atol=tolerance), (step, key)
    assert torch.allclose(ref_action, action, atol=tolerance)
    assert torch.allclose(ref_state[0]["deter"], state[0]["deter"], atol=tolerance)


@pytest.mark.parametrize("name, act_space", [("dreamerv2", DISCRETE), ("dreamerv2", CONTINUOUS), ("mwm", DISCRETE)])
def test_cuda_graph_path_trains_like_the_eager_path(name, act_space, monkeypatch):
    reference = train(build_agent(name, act_space), 6, act_space)
    monkeypatch.setattr(world_model_agent, "speed_settings", graph_settings)
    agent = build_agent(name, act_space)
    agent.graph_capture = RerunCapture
    graphed = train(agent, 6, act_space)  # 3 eager warm-up updates, a capture, replays
    assert all(step.captured for step in agent._graphs.values()) and len(agent._graphs) == 3
    assert_same_training(reference, graphed, tolerance=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="real CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("name", ["dreamerv2", "mwm"])
def test_real_cuda_graphs_train_like_the_eager_path(name):
    """On a GPU: the captured steps (random draws included: a graph replay continues the
    generator's stream as the eager kernels would) match the eager ones."""
    def make(graphs: bool):
        torch.manual_seed(0)
        cfg = config.build("toy_catch", name, "tiny", ["speed.precision=fp32", "speed.compile=never",
                                                       f"speed.cuda_graph={str(graphs).lower()}"])
        return agent_class(name)(cfg, OBS, DISCRETE, torch.device("cuda"))

    reference = train(make(False), 6, DISCRETE)
    agent = make(True)
    with warnings.catch_warnings(record=True):  # MWM: steps that synchronise run eagerly, with a warning
        warnings.simplefilter("always")
        graphed = train(agent, 6, DISCRETE)
    assert agent._graphs["actor_critic"].captured
    assert_same_training(reference, graphed, tolerance=1e-3)


def test_loading_a_checkpoint_drops_the_captured_graphs(monkeypatch):
    monkeypatch.setattr(world_model_agent, "speed_settings", graph_settings)
    agent = build_agent("dreamerv2", DISCRETE)
    agent.graph_capture = RerunCapture
    replay = random_replay()
    for _ in range(5):
        agent.update(replay)
    assert agent._graphs["world_model"].captured
    agent.load_state_dict(agent.state_dict())
    assert not any(step.captured for step in agent._graphs.values())


def test_compiled_path_trains_like_the_eager_path():
    eager = build_agent("mwm", DISCRETE)
    agent = build_agent("mwm", DISCRETE, "speed.compile=always", "speed.compile_backend=aot_eager")
    compiled = [m for m in agent.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert {type(m) for m in compiled} == {Transformer} and len(compiled) == 4  # MAE enc/dec, flat ViT, decoder
    assert list(agent.state_dict()["modules"]) == list(eager.state_dict()["modules"])
    reference = train(eager, 2, DISCRETE)
    assert_same_training(reference, train(agent, 2, DISCRETE), tolerance=1e-4)


# ----------------------------------------------------------------- no host synchronisation


def meta_batch(agent, batch: int = 4, length: int = 8) -> dict:
    meta = torch.device("meta")
    return {"image": torch.zeros(batch, length, 64, 64, 3, dtype=torch.uint8, device=meta),
            "action": torch.zeros(batch, length, agent.action_dim, device=meta),
            "reward": torch.zeros(batch, length, device=meta),
            "is_first": torch.zeros(batch, length, dtype=torch.bool, device=meta),
            "is_terminal": torch.zeros(batch, length, dtype=torch.bool, device=meta)}


def losses_and_policy_on_meta(name: str, act_space) -> None:
    """Forward and backward of the world-model and actor-critic losses, and a policy step,
    on meta tensors: any host read of a tensor value raises."""
    agent = build_agent(name, act_space)
    agent.to("meta")
    agent.device = torch.device("meta")
    batch = meta_batch(agent)
    inputs = agent.representation.inputs(batch["image"])
    loss, post, _ = agent.wm.loss(inputs, batch["action"], batch["reward"], batch["is_first"], batch["is_terminal"])
    loss.backward()
    actor_loss, critic_loss, _ = agent.ac.loss(agent.wm, post, batch["is_terminal"])
    (actor_loss + critic_loss).backward()
    n = 2
    state = agent.wm.rssm.initial(n, "meta")
    agent.policy_step({"image": batch["image"][:n, 0], "is_first": batch["is_first"][:n, 0], "latent": state,
                       "action": torch.zeros(n, agent.action_dim, device="meta")}, "train")


@pytest.mark.parametrize("act_space", [DISCRETE, CONTINUOUS])
def test_dreamerv2_update_and_policy_make_no_host_sync(act_space):
    losses_and_policy_on_meta("dreamerv2", act_space)


def test_mwm_update_and_policy_make_no_host_sync():
    losses_and_policy_on_meta("mwm", DISCRETE)


# ----------------------------------------------------------------- replay on the device


@pytest.mark.parametrize("prioritize_ends", [False, True])
def test_device_sampler_draws_the_batches_the_host_replay_draws(prioritize_ends):
    host, mirrored = random_replay(seed=3), random_replay(seed=3)
    episodes = DeviceEpisodes("cpu")
    sampler = DeviceSampler(mirrored, episodes, batch=5, length=10, prioritize_ends=prioritize_ends)
    for _ in range(3):
        expected = host.sample(5, 10, prioritize_ends)
        batch = next(sampler)
        assert set(batch) == set(expected)
        for key, value in expected.items():
            assert torch.equal(batch[key], torch.as_tensor(value)), key
    assert episodes.nbytes == mirrored.stats()["ram_bytes"]


def test_device_episodes_follow_the_replays_evictions():
    replay = random_replay()
    episodes = DeviceEpisodes("cpu")
    sampler = DeviceSampler(replay, episodes, batch=2, length=5)
    next(sampler)
    first = episodes.nbytes
    small = Replay(tempfile.mkdtemp(), capacity=50, seed=0)  # holds one 40-step episode at a time
    sampler = DeviceSampler(small, episodes, batch=2, length=5)
    with pytest.raises(UserError):
        next(sampler)
    for episode in random_replay()._store.snapshot()[0][:2]:
        small.add_episode(episode, save=False)
        next(sampler)
    assert small.num_episodes == 1 and episodes.nbytes == small.stats()["ram_bytes"] < first


# ----------------------------------------------------------------- the benchmark


def test_throughput_benchmark_smoke_run(tmp_path):
    from benchmarks import throughput

    out = tmp_path / "bench.json"
    results = throughput.main(["--preset", "tiny", "--repeats", "2", "--warmup", "1", "--agents", "mwm", "dreamerv2",
                               "--env", "toy_catch", "--env-names", "toy_catch", "--env-steps", "3", "--workers", "2",
                               "--replay-steps", "1000", "--update-replay-steps", "600", "--threads", "1",
                               "--out", str(out)])
    assert out.exists() and "targets" in out.read_text()
    rows = {row["variant"]: row for row in results["update"]["mwm"]["variants"]}
    eager = rows["eager_fp32"]
    for part in ("autoencoder", "world_model", "actor_critic", "train_step", "policy"):
        assert eager[part]["n"] == 2 and 0 < eager[part]["min_ms"] <= eager[part]["median_ms"] <= eager[part]["max_ms"]
    assert eager["speedup"]["train_step"] == 1.0 and eager["peak_rss_bytes"] > 0
    assert "no effect on cpu" in rows["cuda_graph"]["skipped"]
    assert "autoencoder" not in results["update"]["dreamerv2"]["variants"][0]
    mae = results["mae"]["eager_fp32"]
    assert mae["encoder_flop_ratio"] > 1 and mae["update_flop_ratio"] > 1  # SimMIM encodes every token
    assert results["replay"]["sample_wm_16x50"]["n"] == 2 and results["replay"]["store_over_images"] >= 1
    assert results["envs"]["toy_catch"]["workers"]["agent_steps_per_s"] > 0


def test_throughput_benchmark_help(capsys):
    from benchmarks import throughput

    with pytest.raises(SystemExit) as exit_info:
        throughput.main(["--help"])
    assert exit_info.value.code == 0
    assert "--preset" in capsys.readouterr().out
