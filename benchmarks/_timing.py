"""Timing helpers for the benchmarks: repeated timings, their statistics, memory, GPU
busy time, the machine, and a plain-text table."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock timing covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> List[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls.

    Every call is timed alone, from an idle device to an idle device.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def summarize(seconds: Sequence[float]) -> Dict[str, float]:
    """Median, quartiles, min and max in milliseconds, and the count."""
    ms = sorted(1000.0 * s for s in seconds)
    if len(ms) == 1:
        q1 = q3 = ms[0]
    else:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    return {"median_ms": statistics.median(ms), "q1_ms": q1, "q3_ms": q3, "min_ms": ms[0], "max_ms": ms[-1],
            "n": len(ms)}


def spread(stats: Dict[str, float]) -> float:
    """Relative spread: interquartile range over the median."""
    return (stats["q3_ms"] - stats["q1_ms"]) / stats["median_ms"] if stats["median_ms"] > 0 else 0.0


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def reset_cuda_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_bytes(device: torch.device) -> Optional[int]:
    """Largest CUDA memory allocated since :func:`reset_cuda_peak` (None on CPU)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def gpu_busy(fn: Callable[[], object], device: torch.device, steps: int) -> Dict[str, float]:
    """Fraction of wall time the GPU spends in kernels over ``steps`` calls of ``fn``.

    Sum of the device time of every kernel and memory operation the profiler sees,
    divided by the wall time of the calls (GPU idle at both ends).
    """
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        synchronize(device)
        wall = time.perf_counter() - start
    kernel_us = 0.0
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernel_us += event.self_device_time_total
    launches = sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)
    return {"busy": kernel_us / 1e6 / wall, "kernel_ms_per_step": kernel_us / 1e3 / steps,
            "wall_ms_per_step": 1e3 * wall / steps, "kernels_per_step": launches / steps}


def machine() -> Dict[str, object]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:  # no /proc (not Linux): the platform's processor name stays
        pass
    info: Dict[str, object] = {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def table(rows: Sequence[Dict[str, object]], columns: Sequence[str]) -> str:
    """Rows of dicts as an aligned plain-text table (missing values shown as '-')."""
    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    body = [[cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in body)) if body else len(col) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)
