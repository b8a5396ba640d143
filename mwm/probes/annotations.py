"""Ground truth for the probes: object boxes and state variables of every frame.

Two sources:

- toy_catch reports its falling object's box and position itself (``object_box``,
  ``object_pos``, ``paddle_pos``; envs/toy.py).
- Atari frames carry the console RAM (``ram``, uint8 (128,)). Which byte holds which
  variable follows the AtariARI annotations (Anand et al., 2019,
  atariari/benchmark/ram_annotations.py); the byte-to-pixel offsets of the tracked
  object were measured here on the raw 210x160 ALE screen and are checked by
  :func:`verify_object` (tests/test_probe_atari.py runs it on real frames).

Boxes are ``(top, left, bottom, right)`` with bottom/right exclusive, in the pixels of
the observation (64x64 by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

SCREEN = (210, 160)  # raw ALE screen (H, W)
POSITION, CATEGORICAL = "position", "categorical"


@dataclass(frozen=True)
class ScreenObject:
    """Where one object is on the raw 210x160 screen, read from RAM.

    ``left = ram[x_byte] + x_offset`` (``x_byte=None``: the object never moves sideways
    and ``left = x_offset``); ``top = y_sign * ram[y_byte] + y_offset``. The object is on
    screen when ``ram[y_byte] != absent_y`` (None: always) and its box lies inside
    ``field`` (top, left, bottom, right). ``colour`` (RGB) is what :func:`detect_object`
    looks for to check the mapping.
    """

    name: str
    x_byte: Optional[int]
    x_offset: int
    y_byte: int
    y_offset: int
    y_sign: int
    width: int
    height: int
    field: Tuple[int, int, int, int]
    colour: Tuple[int, int, int]
    absent_y: Optional[int] = None
    tolerance: int = 1  # raw pixels the measured offsets may be off by (sprite timing, arms)
    static_rows: Tuple[int, ...] = ()  # rows where scenery shares the colour (ignored by detect_object)


@dataclass(frozen=True)
class GameAnnotation:
    """RAM variables of one game (AtariARI indices) and its verified object, if any.

    ``variables`` maps a name to (RAM byte, kind): ``position`` targets are regressed,
    ``categorical`` ones classified (see :mod:`mwm.probes.linear`). ``object_variables``
    are the object's own coordinates, only meaningful while it is on screen. ``large`` marks games whose
    object is big (the control group of the small-object study).
    """

    game: str
    variables: Mapping[str, Tuple[int, str]]
    obj: Optional[ScreenObject] = None
    object_variables: Tuple[str, ...] = ()
    large: bool = False


# Offsets measured on ale-py 0.12 screens (tests/test_probe_atari.py re-checks them):
# Pong ball left = ram49 - 49, top = ram54 - 14 (2x4 px, ram54 = 0 when off screen);
# Breakout ball left = ram99 - 49, top = ram101 + 9 (2x4 px, ram101 = 0 before a serve);
# Freeway chicken left = 44, top = 193 - ram14 (7x8 px);
# Boxing white boxer's body left = ram32 + 5, top = ram34 + 38 (14x46 px, arms extend it).
# Tennis has AtariARI variables but no verified pixel mapping (its ball flickers and
# changes height), so it serves linear probes only.
GAMES: Mapping[str, GameAnnotation] = {
    "pong": GameAnnotation(
        "pong",
        {"ball_x": (49, POSITION), "ball_y": (54, POSITION), "player_y": (51, POSITION),
         "enemy_y": (50, POSITION), "player_score": (14, CATEGORICAL), "enemy_score": (13, CATEGORICAL)},
        ScreenObject("ball", 49, -49, 54, -14, 1, 2, 4, (34, 0, 194, 160), (236, 236, 236), absent_y=0),
        object_variables=("ball_x", "ball_y"),
    ),
    "breakout": GameAnnotation(
        "breakout",
        {"ball_x": (99, POSITION), "ball_y": (101, POSITION), "player_x": (72, POSITION),
         "score": (84, CATEGORICAL), "blocks_hit_count": (77, CATEGORICAL)},
        ScreenObject("ball", 99, -49, 101, 9, 1, 2, 4, (93, 8, 189, 152), (200, 72, 72), absent_y=0),
        object_variables=("ball_x", "ball_y"),
    ),
    "freeway": GameAnnotation(
        "freeway",
        {"player_y": (14, POSITION), "score": (103, CATEGORICAL)},
        ScreenObject("chicken", None, 44, 14, 193, -1, 7, 8, (15, 40, 196, 56), (252, 252, 84), tolerance=2,
                     static_rows=(102, 104)),
        object_variables=("player_y",),
    ),
    "boxing": GameAnnotation(
        "boxing",
        {"player_x": (32, POSITION), "player_y": (34, POSITION), "enemy_x": (33, POSITION),
         "enemy_y": (35, POSITION), "player_score": (18, CATEGORICAL), "enemy_score": (19, CATEGORICAL),
         "clock": (17, CATEGORICAL)},
        ScreenObject("player", 32, 5, 34, 38, 1, 14, 46, (30, 0, 182, 160), (214, 214, 214), tolerance=2),
        object_variables=("player_x", "player_y"),
        large=True,
    ),
    "tennis": GameAnnotation(
        "tennis",
        {"ball_x": (16, POSITION), "ball_y": (17, POSITION), "player_x": (26, POSITION),
         "player_y": (24, POSITION), "enemy_x": (27, POSITION), "enemy_y": (25, POSITION),
         "player_score": (69, CATEGORICAL), "enemy_score": (70, CATEGORICAL)},
    ),
}


@dataclass
class Labels:
    """Per-frame ground truth for N frames.

    ``boxes`` (N, 4) int32 and ``present`` (N,) bool describe the tracked object (all
    absent when the env has none or its mapping is unverified); ``targets`` maps each
    probe variable to (N,) float32 values, ``valid`` to where they are defined and
    ``kinds`` to ``position`` or ``categorical``.
    """

    boxes: np.ndarray
    present: np.ndarray
    sizes: Optional[np.ndarray] = None  # (N,) the object's own side, sqrt(area), in image pixels (no margin)
    targets: Dict[str, np.ndarray] = field(default_factory=dict)
    valid: Dict[str, np.ndarray] = field(default_factory=dict)
    kinds: Dict[str, str] = field(default_factory=dict)
    object_name: str = ""
    object_targets: Tuple[str, ...] = ()  # targets that are the object's own coordinates
    large: bool = False

    @staticmethod
    def empty(n: int) -> "Labels":
        """No object and no targets (e.g. DMC)."""
        return Labels(np.zeros((n, 4), np.int32), np.zeros(n, bool))


def game_of(env_name: str) -> Optional[GameAnnotation]:
    """The annotation of an ``atari_<game>`` env, or None."""
    if not env_name.startswith("atari_"):
        return None
    return GAMES.get(env_name[len("atari_"):])


def screen_boxes(ram: np.ndarray, obj: ScreenObject) -> Tuple[np.ndarray, np.ndarray]:
    """RAM (N, 128) uint8 -> raw-screen boxes (N, 4) int32 and on-screen flags (N,) bool."""
    ram = ram.astype(np.int64)  # (N, 128)
    n = ram.shape[0]
    left = np.full(n, obj.x_offset) if obj.x_byte is None else ram[:, obj.x_byte] + obj.x_offset  # (N,)
    top = obj.y_sign * ram[:, obj.y_byte] + obj.y_offset  # (N,)
    boxes = np.stack([top, left, top + obj.height, left + obj.width], axis=1)  # (N, 4)
    f_top, f_left, f_bottom, f_right = obj.field
    inside = (boxes[:, 0] >= f_top) & (boxes[:, 1] >= f_left) & (boxes[:, 2] <= f_bottom) & (boxes[:, 3] <= f_right)
    present = inside if obj.absent_y is None else inside & (ram[:, obj.y_byte] != obj.absent_y)
    return boxes.astype(np.int32), present


def scale_boxes(boxes: np.ndarray, size: Tuple[int, int], margin: int, screen: Tuple[int, int] = SCREEN) -> np.ndarray:
    """Raw-screen boxes (N, 4) -> boxes in a ``size`` (H, W) image resized from ``screen``.

    Every image pixel the raw box touches is included (floor of the top-left, ceiling
    of the bottom-right), then ``margin`` pixels on each side, clipped to the image.
    """
    sy, sx = size[0] / screen[0], size[1] / screen[1]
    top = np.floor(boxes[:, 0] * sy) - margin
    left = np.floor(boxes[:, 1] * sx) - margin
    bottom = np.ceil(boxes[:, 2] * sy) + margin
    right = np.ceil(boxes[:, 3] * sx) + margin
    out = np.stack([np.clip(top, 0, size[0]), np.clip(left, 0, size[1]),
                    np.clip(bottom, 0, size[0]), np.clip(right, 0, size[1])], axis=1)  # (N, 4)
    return out.astype(np.int32)


def atari_labels(game: GameAnnotation, ram: np.ndarray, size: Tuple[int, int], margin: int) -> Labels:
    """Labels of N Atari frames of ``size`` (H, W) from their RAM (N, 128)."""
    n = ram.shape[0]
    if game.obj is not None:
        raw, present = screen_boxes(ram, game.obj)
        scale = size[0] * size[1] / (SCREEN[0] * SCREEN[1])
        sides = np.full(n, math.sqrt(game.obj.width * game.obj.height * scale), np.float32)  # (N,)
        labels = Labels(scale_boxes(raw, size, margin), present, sides, object_name=game.obj.name,
                        object_targets=game.object_variables, large=game.large)
    else:
        labels = Labels.empty(n)
    for name, (byte, kind) in game.variables.items():
        labels.targets[name] = ram[:, byte].astype(np.float32)  # (N,)
        labels.valid[name] = labels.present.copy() if name in game.object_variables else np.ones(n, bool)
        labels.kinds[name] = kind
    return labels


def toy_labels(steps: Mapping[str, np.ndarray]) -> Labels:
    """Labels of N toy_catch frames from their ``object_box``, ``object_pos`` and ``paddle_pos``."""
    boxes = np.asarray(steps["object_box"], np.int32)  # (N, 4)
    n = boxes.shape[0]
    sides = np.sqrt(np.prod(np.asarray(steps["object_size"], np.float32), axis=1))  # (N,)
    labels = Labels(boxes, np.ones(n, bool), sides, object_name="object", object_targets=("object_row", "object_col"))
    columns = {"object_row": ("object_pos", 0), "object_col": ("object_pos", 1), "paddle_col": ("paddle_pos", 1)}
    for name, (key, column) in columns.items():
        labels.targets[name] = np.asarray(steps[key], np.float32)[:, column]  # (N,)
        labels.valid[name] = np.ones(n, bool)
        labels.kinds[name] = POSITION
    return labels


def labels_for(env_name: str, steps: Mapping[str, np.ndarray], margin: int) -> Labels:
    """Labels of the N frames in ``steps`` (arrays with a leading N axis, ``image`` included).

    ``margin`` pads Atari boxes: an Atari observation is the max of the last two frames
    of a step, so it can show the object one frame earlier than the RAM says.
    """
    n, height, width = steps["image"].shape[:3]
    if "object_box" in steps:
        return toy_labels(steps)
    game = game_of(env_name)
    if game is not None and "ram" in steps:
        return atari_labels(game, np.asarray(steps["ram"]), (height, width), margin)
    return Labels.empty(n)


def object_size(labels: Labels) -> float:
    """The tracked object's typical side in image pixels, sqrt(area) without the box
    margin (a 2x4 Atari ball is ~1 px at 64x64): the median over frames where it is on
    screen, NaN when it never is or the env has no object."""
    if labels.sizes is None or not labels.present.any():
        return math.nan
    return float(np.median(labels.sizes[labels.present]))


# ----------------------------------------------------------------------------- verification


def detect_object(screen: np.ndarray, obj: ScreenObject) -> Optional[Tuple[int, int, int, int]]:
    """Bounding box (top, left, bottom, right) of ``obj.colour`` pixels inside ``obj.field``
    of a raw RGB screen (210, 160, 3), or None when there are none."""
    top, left, bottom, right = obj.field
    region = screen[top:bottom, left:right]  # (h, w, 3)
    match = np.all(region == np.asarray(obj.colour, np.uint8), axis=-1)  # (h, w)
    for row in obj.static_rows:
        if top <= row < bottom:
            match[row - top] = False
    rows, cols = np.nonzero(match)
    if rows.size == 0:
        return None
    return top + int(rows.min()), left + int(cols.min()), top + int(rows.max()) + 1, left + int(cols.max()) + 1


def verify_object(screens: np.ndarray, ram: np.ndarray, obj: ScreenObject) -> Dict[str, float]:
    """Compare the RAM-derived boxes with the pixels of real screens.

    Args:
        screens: (N, 210, 160, 3) raw RGB screens, each with the RAM read after it.
        ram: (N, 128) uint8.
    Returns:
        ``presence_agreement``: fraction of frames where "RAM says on screen" equals
        "the colour is found"; ``position_agreement``: among frames with both, the
        fraction whose detected top-left corner is within ``obj.tolerance`` pixels of
        the RAM's; ``frames_with_both``.
    """
    boxes, present = screen_boxes(ram, obj)
    agree, close, both = 0, 0, 0
    for screen, box, on in zip(screens, boxes, present):
        found = detect_object(screen, obj)
        agree += int((found is not None) == bool(on))
        if found is not None and on:
            both += 1
            close += int(abs(found[0] - box[0]) <= obj.tolerance and abs(found[1] - box[1]) <= obj.tolerance)
    return {"presence_agreement": agree / max(len(boxes), 1), "position_agreement": close / max(both, 1),
            "frames_with_both": float(both)}
