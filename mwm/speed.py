"""Speed paths: CUDA-graph and compiled forms of the update, as wrappers around the eager one.

The eager update (``agents/world_model_agent.py``) is the reference: written once, over
static shapes, meant to make no host synchronisation. Each switch of the ``speed``
config block wraps it and computes the same update (bf16 up to its rounding):

- ``precision: bf16``: autocast to bfloat16 (CUDA: tensor cores).
- ``fused_optim``: one fused Adam kernel per optimiser (CUDA).
- ``pin_memory``: page-locked replay batches, copied asynchronously (CUDA).
- ``cuda_graph``: each part of the update (world model; actor-critic) and the policy
  step is captured once as a CUDA graph (:class:`GraphedStep`) and replayed, so that
  thousands of kernel launches become one. The 50-step observe loop and the 15-step
  imagination are launch-bound at batch 16 (CUDA).
- ``compile``: ``torch.compile`` of every transformer stack (:func:`compile_modules`),
  fusing the attention blocks; the MAE update is kernel-bound, so fusion pays there.
- ``replay_on_device``: episodes mirrored on the GPU, batches gathered there (CUDA,
  when the replay fits in GPU memory).

A switch that does not apply to the device is off (:func:`speed_settings`), so the
same config runs on a CPU. Equivalence with the eager path is tested in
tests/test_speed.py; the throughput of each form is measured by
``python -m benchmarks.throughput``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from mwm.errors import UserError

# Eager calls before a capture: lazy initialisation (cuBLAS handles, Adam state, compiled
# kernels, autotuning) must happen outside the graph (PyTorch's CUDA-graph notes use 3).
WARMUP_CALLS = 3
COMPILE_CHOICES = ("auto", "always", "never")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class SpeedSettings:
    """The speed paths in force on one device (CUDA-only switches are off elsewhere)."""

    device: torch.device
    bf16: bool
    fused_optim: bool
    pin_memory: bool
    cuda_graph: bool
    compile: bool
    compile_backend: str
    replay_on_device: bool


def speed_settings(device: torch.device | str, precision: str = "fp32", fused_optim: bool = False,
                   pin_memory: bool = False, cuda_graph: bool = False, compile: str = "never",
                   compile_backend: str = "inductor", replay_on_device: bool = False) -> SpeedSettings:
    """Resolve the ``speed`` config block for ``device``.

    bf16, fused Adam, pinned memory, CUDA graphs and device replay apply on CUDA only;
    ``compile="auto"`` compiles on CUDA only, ``"always"`` on every device. CUDA graphs need
    fused Adam (its skip of non-finite updates is the graph-safe one).
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise UserError(f"speed.precision '{precision}' is not one of {', '.join(PRECISIONS)}")
    if compile not in COMPILE_CHOICES:
        raise UserError(f"speed.compile '{compile}' is not one of {', '.join(COMPILE_CHOICES)}")
    cuda = device.type == "cuda"
    if cuda and cuda_graph and not fused_optim:
        raise UserError("speed.cuda_graph needs speed.fused_optim (the graph-safe Adam); turn one on or the other off")
    compiled = compile == "always" or (compile == "auto" and cuda)
    if compiled and cuda and compile_backend == "inductor" and not _has_triton():
        warnings.warn("speed.compile: Inductor needs Triton on CUDA and it is not installed; "
                      "running without torch.compile (pip install triton, or set speed.compile never)", stacklevel=2)
        compiled = False
    return SpeedSettings(
        device=device, bf16=cuda and precision == "bf16", fused_optim=cuda and fused_optim,
        pin_memory=cuda and pin_memory, cuda_graph=cuda and cuda_graph, compile=compiled,
        compile_backend=compile_backend, replay_on_device=cuda and replay_on_device)


def _has_triton() -> bool:
    """Whether Inductor can generate GPU kernels here."""
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return bool(has_triton())


def compile_modules(root: nn.Module, types: Sequence[type], backend: str = "inductor") -> list[str]:
    """``torch.compile`` in place every outermost submodule of ``root`` that is one of ``types``.

    Uses ``nn.Module.compile`` (parameter names and ``state_dict`` keys stay the same)
    with static shapes (``dynamic=False``): each input shape gets its own specialised
    kernels. Returns the names of the modules compiled.
    """
    names = []
    inside: list[str] = []
    for name, module in root.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if isinstance(module, tuple(types)):
            module.compile(backend=backend, dynamic=False)
            names.append(name)
            inside.append(name)
    return names


# ----------------------------------------------------------------------------- trees of tensors


def flatten(tree: Any) -> tuple[list[torch.Tensor], Any]:
    """Tensors of a nest of dicts, lists and tuples, in order, and a spec to rebuild it.

    Other leaves (numbers, strings, None) are kept in the spec as constants.
    """
    leaves: list[torch.Tensor] = []

    def walk(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            leaves.append(node)
            return ("tensor",)
        if isinstance(node, dict):
            return ("dict", tuple((key, walk(value)) for key, value in node.items()))
        if isinstance(node, (list, tuple)):
            return (type(node).__name__, tuple(walk(value) for value in node))
        return ("const", node)

    return leaves, walk(tree)


def unflatten(spec: Any, leaves: Sequence[torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    it = iter(leaves)

    def build(node: Any) -> Any:
        kind = node[0]
        if kind == "tensor":
            return next(it)
        if kind == "dict":
            return {key: build(value) for key, value in node[1]}
        if kind in ("list", "tuple"):
            items = [build(value) for value in node[1]]
            return items if kind == "list" else tuple(items)
        return node[1]

    return build(spec)


def signature(tree: Any) -> tuple:
    """What a captured graph depends on: the structure, and each tensor's shape, dtype, device."""
    leaves, spec = flatten(tree)
    return spec, tuple((tuple(t.shape), t.dtype, t.device) for t in leaves)


# ----------------------------------------------------------------------------- CUDA graphs


class CudaGraphCapture:
    """One ``torch.cuda.CUDAGraph``: eager warm-up on a side stream, capture, replay.

    ``capture_error_mode="thread_local"``: the replay prefetch thread may pin memory
    while the learner thread captures.
    """

    def __init__(self):
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.outputs: Any = None

    def warmup(self, fn: Callable[[Any], Any], inputs: Any, detect_syncs: bool) -> tuple[Any, list[str]]:
        """Run ``fn(inputs)`` eagerly on a side stream; with ``detect_syncs`` also return the
        host synchronisations it made (CUDA's sync-debug warnings), which a graph cannot hold."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        syncs: list[str] = []
        with torch.cuda.stream(side):
            if not detect_syncs:
                outputs = fn(inputs)
            else:
                previous = torch.cuda.get_sync_debug_mode()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        outputs = fn(inputs)
                    finally:
                        torch.cuda.set_sync_debug_mode(previous)
                syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
                for w in caught:  # hand the other warnings on
                    if "synchroniz" not in str(w.message):
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        torch.cuda.current_stream().wait_stream(side)
        return outputs, syncs

    def capture(self, fn: Callable[[Any], Any], inputs: Any) -> None:
        """Record ``fn(inputs)`` (nothing runs); ``outputs`` are its static output tensors."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            outputs = fn(inputs)
        self.graph, self.outputs = graph, outputs

    def replay(self) -> None:
        """Run the recorded kernels again on the same buffers (``outputs`` are overwritten)."""
        self.graph.replay()


class GraphedStep:
    """A step function over static-shape tensors, run as one CUDA graph.

    ``fn(inputs)`` takes a nest (dicts, lists, tuples) of tensors and returns one; it must
    keep its host-side state unchanged (a graph replays device work only) and make no
    host synchronisation. Calls:

    1. the first ``warmup`` calls run ``fn`` eagerly (real updates); the last of them
       also checks for host synchronisations: if ``fn`` makes any, it can never be
       captured, and every later call runs it eagerly (one warning says why);
    2. the next call copies its inputs into static buffers, captures ``fn`` on them,
       and replays the graph;
    3. later calls copy their inputs into the static buffers and replay.

    ``prepare()`` runs before every call, outside the graph: host-side work such as the
    optimisers' learning-rate schedules (:meth:`mwm.optim.Optimizer.schedule`).

    Outputs are detached copies, safe to keep across calls; 0-d outputs come back as
    float32 views of one packed tensor (one copy for all metrics). A capture that fails
    is reported once, and the step runs eagerly from then on. :meth:`reset` drops the
    graph (needed after tensors it reads are replaced, e.g. a loaded optimizer state).

    Args:
        fn: the eager step.
        name: for messages.
        prepare: host-side work before each call.
        warmup: eager calls before the capture.
        make_capture: factory of the capture backend (:class:`CudaGraphCapture`).
    """

    def __init__(self, fn: Callable[[Any], Any], name: str, prepare: Optional[Callable[[], None]] = None,
                 warmup: int = WARMUP_CALLS, make_capture: Callable[[], Any] = CudaGraphCapture):
        if warmup < 1:
            raise ValueError(f"GraphedStep needs at least one warm-up call, got {warmup}")
        self.fn = fn
        self.name = name
        self.prepare = prepare
        self.warmup = warmup
        self.make_capture = make_capture
        self.eager_reason: Optional[str] = None  # why this step runs eagerly for good
        self.reset()

    def reset(self) -> None:
        """Forget the graph: the next calls warm up and capture again."""
        self.calls = 0
        self.captured = False
        self._backend = self.make_capture()
        self._static_inputs: list[torch.Tensor] = []
        self._signature: Optional[tuple] = None
        self._layout: Optional[tuple] = None

    def __call__(self, inputs: Any) -> Any:
        if self.prepare is not None:
            self.prepare()
        if self.eager_reason is not None:
            return self.fn(inputs)
        if not self.captured and self.calls < self.warmup:
            self.calls += 1
            return self._warm_up(inputs, detect_syncs=self.calls == self.warmup)
        if not self.captured:
            return self._capture_and_replay(inputs)
        self._load(inputs)
        return self._replay()

    # ------------------------------------------------------------------ phases

    def _warm_up(self, inputs: Any, detect_syncs: bool) -> Any:
        outputs, syncs = self._backend.warmup(self.fn, inputs, detect_syncs)
        if syncs:
            self._give_up(f"it synchronises with the host ({syncs[0]}; {len(syncs)} in all)")
        return outputs

    def _capture_and_replay(self, inputs: Any) -> Any:
        leaves, spec = flatten(inputs)
        self._signature = signature(inputs)
        self._static_inputs = [leaf.detach().clone() for leaf in leaves]
        try:
            self._backend.capture(self._packed, unflatten(spec, self._static_inputs))
        except Exception as error:  # any failure: fall back to the eager reference
            self.reset()
            self._give_up(f"its capture failed ({type(error).__name__}: {str(error).splitlines()[0]})")
            return self.fn(inputs)
        self.captured = True
        return self._replay()

    def _give_up(self, why: str) -> None:
        self.eager_reason = why
        warnings.warn(f"CUDA graph for '{self.name}' is off because {why}; this step runs eagerly "
                      "(correct, but launch-bound). Set speed.cuda_graph false to silence this.", stacklevel=4)

    def _load(self, inputs: Any) -> None:
        """Copy the call's inputs into the static buffers the graph reads."""
        if signature(inputs) != self._signature:
            raise ValueError(f"'{self.name}' was captured for inputs {self._signature[1]}, "
                             f"got {signature(inputs)[1]}: a CUDA graph needs static shapes")
        leaves, _ = flatten(inputs)
        with torch.no_grad():
            for static, leaf in zip(self._static_inputs, leaves):
                if static.data_ptr() != leaf.data_ptr():
                    static.copy_(leaf.detach(), non_blocking=True)

    def _packed(self, inputs: Any) -> tuple[Optional[torch.Tensor], list[torch.Tensor]]:
        """``fn`` with its 0-d outputs stacked into one float32 tensor, all outputs detached."""
        leaves, spec = flatten(self.fn(inputs))
        scalars = [i for i, leaf in enumerate(leaves) if leaf.dim() == 0]
        others = [leaf.detach() for leaf in leaves if leaf.dim() != 0]
        packed = torch.stack([leaves[i].detach().float() for i in scalars]) if scalars else None
        self._layout = (spec, scalars, len(leaves))
        return packed, others

    def _replay(self) -> Any:
        self._backend.replay()
        packed, others = self._backend.outputs
        spec, scalars, count = self._layout
        packed = packed.clone() if packed is not None else None
        others = iter([t.clone() for t in others])
        position = {index: j for j, index in enumerate(scalars)}
        leaves = [packed[position[i]] if i in position else next(others) for i in range(count)]
        return unflatten(spec, leaves)


def schedule_all(optimizers: Iterable) -> Callable[[], None]:
    """A ``prepare`` callable that schedules each optimizer's next update (host side)."""
    chosen = list(optimizers)

    def prepare() -> None:
        for opt in chosen:
            opt.schedule()

    return prepare
