"""A suite of probe experiments: data sets x methods x mask ratios, run in worker processes.

``benchmarks/small_objects.py`` describes its settings with :class:`Setting` and calls
:func:`run_suite`. Each data set (an env configuration) is collected once in one
worker and shared by all its methods and seeds; data sets run in parallel.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from mwm.probes.methods import METHODS

SWEEPABLE = ("mwm", "mae", "simmim", "siammae")  # trained methods whose mask ratio is a knob


@dataclass(frozen=True)
class Setting:
    """Sizes, data sets, methods and the mask-ratio sweep of one suite."""

    preset: str
    overrides: Tuple[str, ...]  # dotted config keys applied to every run
    sizes: Tuple[int, ...]  # toy_catch object sizes, pixels
    games: Tuple[str, ...]  # Atari games
    methods: Tuple[str, ...] = METHODS
    ratios: Tuple[float, ...] = (0.5, 0.75, 0.9, 0.95)
    sweep_methods: Tuple[str, ...] = SWEEPABLE
    sweep_datasets: Tuple[str, ...] = ()  # data sets that get the sweep; empty: every one


@dataclass(frozen=True)
class Dataset:
    """One env configuration whose frames every method of the suite shares."""

    name: str  # e.g. toy_catch-s4, atari_pong
    env: str
    overrides: Tuple[str, ...]


def datasets(setting: Setting) -> List[Dataset]:
    """toy_catch at each object size, then each Atari game."""
    out = [Dataset(f"toy_catch-s{size}", "toy_catch", (f"env.object_size={size}",)) for size in setting.sizes]
    return out + [Dataset(f"atari_{game}", f"atari_{game}", ()) for game in setting.games]


def runs_of(data: Dataset, setting: Setting) -> List[Tuple[str, Optional[float]]]:
    """(method, mask ratio) pairs for a data set; ratio None keeps the method's default."""
    runs: List[Tuple[str, Optional[float]]] = [(method, None) for method in setting.methods]
    if not setting.sweep_datasets or data.name in setting.sweep_datasets:
        runs += [(method, ratio) for method in setting.sweep_methods if method in setting.methods
                 for ratio in setting.ratios]
    return runs


def ratio_overrides(method: str, ratio: Optional[float]) -> List[str]:
    """Config overrides that set ``method``'s mask ratio (SiamMAE masks its future frame)."""
    if ratio is None:
        return []
    return [f"siammae.mask_ratio={ratio}"] if method == "siammae" else [f"mae.mask_ratio={ratio}"]


def run_dataset(data: Dataset, setting: Setting, overrides: Sequence[str], logdir: str, device_name: str,
                threads: int) -> List[Dict]:
    """Collect one data set and run every (method, ratio) on it; returns the per-seed rows,
    each tagged with ``dataset`` and ``default_ratio``. In a worker process ``threads``
    sets its torch thread count (0 leaves it alone)."""
    import torch

    from mwm import config as config_lib
    from mwm.probes.experiment import load_frames, run_probe
    from mwm.probes.methods import mask_ratio_of, method_agent
    from mwm.runtime import resolve_device

    if threads > 0:
        torch.set_num_threads(threads)
    device = resolve_device(device_name)
    base = [*setting.overrides, *data.overrides, *overrides]
    frames = load_frames(config_lib.build(data.env, "mwm", setting.preset, base), device)
    rows: List[Dict] = []
    done = set()
    for method, ratio in runs_of(data, setting):
        cfg = config_lib.build(data.env, method_agent(method), setting.preset, base + [f"probe.method={method}"])
        default = mask_ratio_of(cfg, method)
        if ratio is not None:
            cfg = config_lib.build(data.env, method_agent(method), setting.preset,
                                   base + [f"probe.method={method}"] + ratio_overrides(method, ratio))
        if (method, default if ratio is None else ratio) in done:  # the sweep's default ratio ran already
            continue
        done.add((method, default if ratio is None else ratio))
        name = method if ratio is None else f"{method}-ratio{ratio:g}"
        start = time.time()
        for row in run_probe(cfg, device, Path(logdir) / data.name / name, frames, show_progress=False):
            row.update(dataset=data.name, default_ratio=ratio is None or ratio == default)
            rows.append(row)
        print(f"[{data.name}] {name}: {time.time() - start:.0f}s", flush=True)
    return rows


def run_suite(setting: Setting, overrides: Sequence[str], logdir: Path, device_name: str, workers: int,
              threads: int, on_result: Optional[Callable[[List[Dict]], None]] = None) -> List[Dict]:
    """Every data set of ``setting`` in ``workers`` spawned processes of ``threads`` torch
    threads each (``workers=0``: one after another in this process); ``on_result`` gets
    the rows collected so far after each data set."""
    rows: List[Dict] = []
    if workers == 0:
        for data in datasets(setting):
            rows += run_dataset(data, setting, list(overrides), str(logdir), device_name, threads)
            if on_result is not None:
                on_result(rows)
        return rows
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_dataset, data, setting, list(overrides), str(logdir), device_name, threads): data
                   for data in datasets(setting)}
        for future in as_completed(futures):
            rows += future.result()
            if on_result is not None:
                on_result(rows)
            print(f"done {futures[future].name}", flush=True)
    return rows
