"""Metrics to TensorBoard, ``metrics.jsonl`` and the console; a progress bar for long runs.

Values are kept as given (torch tensors included) until :meth:`Logger.write`, so the
training loop never waits for the GPU to log a loss.
"""

import io
import json
import math
import os
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional, TextIO

import numpy as np

from mwm.errors import UserError


class Logger:
    """One logger for every agent.

    Args:
        logdir: run folder; receives ``metrics.jsonl`` and TensorBoard event files.
        step_fn: returns the current step, used by ``write()`` when no step is given.
        use_tensorboard: also write TensorBoard event files.
        console: print one concise line per ``write()``.
        stream: where console lines go (default ``sys.stdout``).

    Several values logged under one scalar name between two writes are averaged.
    """

    def __init__(
        self,
        logdir: str,
        step_fn: Optional[Callable[[], int]] = None,
        use_tensorboard: bool = True,
        console: bool = True,
        stream: Optional[TextIO] = None,
    ):
        try:
            os.makedirs(logdir, exist_ok=True)
            drop_torn_tail(os.path.join(logdir, "metrics.jsonl"))
            self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a", encoding="utf-8")
        except OSError as error:
            raise UserError(
                f"cannot write logs to {logdir} ({error.strerror}): choose a writable folder"
            ) from error
        self.logdir = logdir
        self._step_fn = step_fn
        self._console = console
        self._stream = stream
        self._writer = None
        if use_tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import, only when used

            self._writer = SummaryWriter(log_dir=logdir)
        self._scalars: Dict[str, List[object]] = {}
        self._images: Dict[str, object] = {}
        self._videos: Dict[str, object] = {}

    def scalar(self, name: str, value) -> None:
        """Queue a number (python, numpy or a one-element torch tensor on any device)."""
        self._scalars.setdefault(name, []).append(value)

    def scalars(self, values: Dict[str, object], prefix: str = "") -> None:
        """Queue every entry of a metrics dict, names prefixed with ``prefix/`` if given."""
        for name, value in values.items():
            self.scalar(f"{prefix}/{name}" if prefix else name, value)

    def image(self, name: str, array) -> None:
        """Queue an image ``(H, W, C)``: uint8, or float in [0, 1]."""
        self._images[name] = array

    def video(self, name: str, array) -> None:
        """Queue a video ``(T, H, W, C)``: uint8, or float in [0, 1]; stored as an animated GIF."""
        self._videos[name] = array

    def queued(self) -> Dict[str, float]:
        """The queued scalars, each the mean of its values: what :meth:`write` would log."""
        return {name: _mean(values) for name, values in self._scalars.items()}

    def replace_queued(self, scalars: Dict[str, float]) -> None:
        """Queue ``scalars`` in place of everything queued so far (e.g. their values over ranks)."""
        self._scalars = {name: [value] for name, value in scalars.items()}

    def write(self, step: Optional[int] = None, tensorboard_step: Optional[int] = None,
              console: bool = True) -> Dict[str, float]:
        """Flush queued values at ``step`` to every sink; returns the scalars written.

        ``tensorboard_step``: TensorBoard's x value when it is not ``step`` (a series whose
        ``step`` stands still, such as pre-training's); metrics.jsonl rows keep ``step``.
        ``console=False``: no console line for this write.
        """
        if step is None:
            if self._step_fn is None:
                raise ValueError("Logger.write needs a step (or a step_fn at construction)")
            step = self._step_fn()
        step = int(step)
        scalars = self.queued()
        images = {name: to_uint8(array) for name, array in self._images.items()}
        videos = {name: to_uint8(array) for name, array in self._videos.items()}
        self._scalars, self._images, self._videos = {}, {}, {}
        if scalars:
            record = {"step": step}
            record.update({k: (v if math.isfinite(v) else None) for k, v in scalars.items()})
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._writer is not None:
            self._write_tensorboard(step if tensorboard_step is None else int(tensorboard_step), scalars, images,
                                    videos)
        if self._console and console and scalars:
            stream = self._stream or sys.stdout
            print(line_start(stream) + format_line(step, scalars), file=stream, flush=True)
        return scalars

    def close(self) -> None:
        """Flush and close every sink; queued but unwritten values are dropped."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self._jsonl.closed:
            self._jsonl.close()

    def __enter__(self) -> "Logger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write_tensorboard(self, step, scalars, images, videos) -> None:
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, step)
        for name, array in images.items():
            self._writer.add_image(name, array, step, dataformats="HWC")
        for name, frames in videos.items():
            self._writer._get_file_writer().add_summary(gif_summary(name, frames), step)
        self._writer.flush()


class Progress:
    """Console progress: steps done / total, steps per second, ETA and a few metrics.

    On a terminal the line is redrawn in place (``\\r``) at most every
    ``redraw_s`` seconds; otherwise (CI logs, files) a plain line is printed every
    ``line_every_s`` seconds. ``update`` is cheap enough to call every step. Other
    console lines start with :func:`line_start`, which erases a bar left mid-line on a
    terminal, so that no stale copy of it stays on the screen; ``close`` adds no plain line
    that would repeat the last one.
    """

    def __init__(
        self,
        total: int,
        keys: Iterable[str] = ("return",),
        stream: Optional[TextIO] = None,
        redraw_s: float = 0.2,
        line_every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        unit: str = "steps",
    ):
        self.total = total
        self.unit = unit
        self.keys = tuple(keys)
        self._stream = stream or sys.stdout
        self._tty = _isatty(self._stream)
        self._interval = redraw_s if self._tty else line_every_s
        self._clock = clock
        self._start_time = clock()
        self._start_step = None
        self._last_draw = -math.inf
        self._step = 0
        self._metrics: Dict[str, float] = {}
        self._drawn = None  # (step, metrics) of the last line drawn

    def update(self, step: int, **metrics) -> None:
        """Record the step count and any metrics (floats or scalar tensors); draw if it is time to."""
        if self._start_step is None:
            self._start_step = step
        self._step = step
        # kept as given (a device tensor stays one): converted only when a line is drawn, so
        # that calling this every update costs no host sync
        self._metrics.update({k: v for k, v in metrics.items() if k in self.keys})
        now = self._clock()
        if now - self._last_draw >= self._interval:
            self._last_draw = now
            self._draw(now)

    def close(self) -> None:
        """Draw the final state and end the line (not as a plain line again when nothing changed)."""
        if self._tty or not self._unchanged():
            self._draw(self._clock())
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def render(self, now: Optional[float] = None) -> str:
        """The progress line, e.g. ``[#####.....] 50/100 50% 10.0 steps/s ETA 0:00:05 return 3.2``."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._start_time, 1e-9)
        rate = (self._step - (self._start_step or 0)) / elapsed
        fraction = min(self._step / self.total, 1.0) if self.total else 1.0
        bar = "#" * int(20 * fraction) + "." * (20 - int(20 * fraction))
        eta = (self.total - self._step) / rate if rate > 0 else math.inf
        parts = [
            f"[{bar}] {self._step}/{self.total} {100 * fraction:.0f}%",
            format_rate(rate, self.unit) if self._step != (self._start_step or 0) else f"- {self.unit}/s",
            f"ETA {format_duration(eta)}",
        ]
        parts += [f"{k} {_format_number(float(self._metrics[k]))}" for k in self.keys if k in self._metrics]
        return " ".join(parts)

    def _unchanged(self) -> bool:
        """Whether the last line drawn shows the current step and metrics."""
        if self._drawn is None:
            return False
        step, metrics = self._drawn
        return step == self._step and metrics.keys() == self._metrics.keys() and all(
            metrics[k] is v for k, v in self._metrics.items())

    def _draw(self, now: float) -> None:
        self._drawn = (self._step, dict(self._metrics))
        line = self.render(now)
        if self._tty:
            self._stream.write("\r" + line + "\x1b[K")
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


ERASE_LINE = "\r\x1b[K"  # carriage return, then erase to the end of the line


def line_start(stream) -> str:
    """What a console line on ``stream`` starts with: on a terminal, erasing the line the cursor is
    on (a :class:`Progress` bar drawn in place, which draws itself again at its next update);
    elsewhere nothing."""
    return ERASE_LINE if _isatty(stream) else ""


def drop_torn_tail(path: str) -> int:
    """Cut a last line that a crash left without its newline (a half record) off ``path``.

    Appending after it would glue the next record onto the fragment. Returns the bytes cut.
    """
    try:
        f = open(path, "rb+")
    except FileNotFoundError:
        return 0
    with f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        end = size
        while end > 0:  # find the last newline, reading backwards
            start = max(0, end - 65536)
            f.seek(start)
            chunk = f.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                end = start + cut + 1
                break
            end = start
        f.truncate(end)
    print(f"warning: {path} ended in a half-written line (a crash); dropped its {size - end} bytes",
          file=sys.stderr)
    return size - end


def format_line(step: int, scalars: Dict[str, float], limit: int = 8) -> str:
    """``step 1000 | frames 4000 | return 3.2 | eval 4.1 | mae/loss 0.01 | ... | fps 120 | 2.5 s/update``.

    In this order: step, frames, train return (``train/recent_return``, the mean of the
    last episodes, else ``train/return``, those since the last line),
    eval return, the first CONSOLE_LOSSES main losses (``loss`` and ``*/loss``, in the
    order they were logged: one per optimiser), env frames per second and the update
    rate. Everything else is in TensorBoard and metrics.jsonl. A logger with none of
    these names (another tool) shows its first ``limit`` scalars, sorted.
    """
    parts = []
    for keys, label in CONSOLE_FIRST:
        key = next((k for k in keys if k in scalars), None)
        if key is not None:
            value = scalars[key]
            parts.append(f"{label} {value:.0f}" if label == "frames" and math.isfinite(value)
                         else f"{label} {_format_number(value)}")
    parts += [f"{key} {_format_number(scalars[key])}"
              for key in [k for k in scalars if k == "loss" or k.endswith("/loss")][:CONSOLE_LOSSES]]
    if FPS_KEY in scalars:
        fps = scalars[FPS_KEY]
        parts.append(f"fps {fps:.0f}" if math.isfinite(fps) and fps >= 10 else f"fps {_format_number(fps)}")
    if UPDATES_KEY in scalars:
        parts.append(format_rate(scalars[UPDATES_KEY], "updates"))
    if not parts:
        parts = [f"{n} {_format_number(scalars[n])}" for n in sorted(scalars)[:limit]]
    return " | ".join([f"step {step}"] + parts)


# The console line, in this order: what people look for first. (metrics, the first present is shown; label)
CONSOLE_FIRST = ((("train/frames",), "frames"), (("train/recent_return", "train/return"), "return"),
                 (("eval/return",), "eval"))
FPS_KEY, UPDATES_KEY = "speed/env_steps_per_s", "speed/updates_per_s"
CONSOLE_LOSSES = 5


def format_rate(per_second: float, unit: str = "updates") -> str:
    """``12.5 updates/s``, or below one per second ``2.5 s/update`` (never ``0.0 updates/s``)."""
    if not math.isfinite(per_second) or per_second <= 0:
        return f"0 {unit}/s"
    if per_second >= 1:
        return f"{per_second:.1f} {unit}/s"
    single = unit[:-1] if unit.endswith("s") else unit
    return f"{1.0 / per_second:.1f} s/{single}"


def format_duration(seconds: float) -> str:
    """``h:mm:ss``, or ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def to_uint8(array) -> np.ndarray:
    """A torch tensor or numpy array as uint8 numpy (floats taken as [0, 1])."""
    array = _to_numpy(array)
    if array.dtype == np.uint8:
        return array
    return (np.clip(array.astype(np.float32), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def gif_summary(name: str, frames: np.ndarray, fps: int = 10):
    """A TensorBoard image summary holding ``frames`` (T, H, W, C) uint8 as an animated GIF."""
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    _, height, width, channels = frames.shape
    mode = "L" if channels == 1 else "RGB"
    pictures = [Image.fromarray(f[..., 0] if channels == 1 else f[..., :3], mode) for f in frames]
    buffer = io.BytesIO()
    pictures[0].save(
        buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=1000 // fps, loop=0
    )
    image = Summary.Image(
        height=height, width=width, colorspace=channels, encoded_image_string=buffer.getvalue()
    )
    return Summary(value=[Summary.Value(tag=name, image=image)])


def _mean(values: List[object]) -> float:
    return float(np.mean([_to_float(v) for v in values]))


def _to_float(value) -> float:
    if hasattr(value, "detach"):  # torch tensor: the one device sync happens here
        value = value.detach().float().mean().item()
    return float(np.mean(value))


def _to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _format_number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.4g}" if abs(value) < 100 else f"{value:.1f}"


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
