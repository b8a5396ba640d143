"""Atari RAM annotations checked against real ALE screens.

Each verified game is played with random actions; the object's box computed from RAM
must match the pixels of its colour on the raw 210x160 screen, and, after DreamerV2's
preprocessing (max of the last two frames, area resize to 64x64), the object's pixels
must lie inside the scaled box. A wrong offset fails these tests (checked below by
shifting one on purpose).
"""

import dataclasses

import cv2
import numpy as np
import pytest

from envs.atari import max_pool_last_two, resize_frame
from mwm.probes.annotations import GAMES, labels_for, scale_boxes, screen_boxes, verify_object

gym = pytest.importorskip("gymnasium")
ale_py = pytest.importorskip("ale_py")
gym.register_envs(ale_py)

VERIFIED = ("pong", "breakout", "freeway", "boxing")
GAME_IDS = {"pong": "Pong", "breakout": "Breakout", "freeway": "Freeway", "boxing": "Boxing"}
REPEAT = 4


def play(game: str, agent_steps: int, seed: int = 0):
    """Raw screens of the last two frames of each agent step and the RAM after it."""
    env = gym.make(f"ALE/{GAME_IDS[game]}-v5", frameskip=1, repeat_action_probability=0.0, full_action_space=False)
    env.reset(seed=seed)
    ale = env.unwrapped.ale
    rng = np.random.default_rng(seed)
    last, before, rams = [], [], []
    for _ in range(agent_steps):
        action = 1 if game == "freeway" and rng.random() < 0.7 else int(rng.integers(env.action_space.n))
        frames = []
        for _ in range(REPEAT):
            _, _, terminated, truncated, _ = env.step(action)
            frames.append(ale.getScreenRGB())
        before.append(frames[-2])
        last.append(frames[-1])
        rams.append(ale.getRAM())
        if terminated or truncated:
            env.reset()
    env.close()
    return np.array(before), np.array(last), np.array(rams)


@pytest.fixture(scope="module", params=VERIFIED)
def played(request):
    return request.param, play(request.param, agent_steps=300)


def test_ram_boxes_match_the_raw_screen(played):
    game, (_, last, ram) = played
    stats = verify_object(last, ram, GAMES[game].obj)
    assert stats["frames_with_both"] > 50, f"{game}: the object was seen too rarely to check ({stats})"
    assert stats["presence_agreement"] > 0.95, f"{game}: {stats}"
    assert stats["position_agreement"] > 0.95, f"{game}: {stats}"


def test_a_wrong_offset_is_caught(played):
    game, (_, last, ram) = played
    obj = GAMES[game].obj
    shifted = dataclasses.replace(obj, y_offset=obj.y_offset + 3 * obj.y_sign, x_offset=obj.x_offset + 3)
    assert verify_object(last, ram, shifted)["position_agreement"] < 0.5


def test_object_pixels_of_64x64_observations_lie_in_the_scaled_box(played):
    game, (before, last, ram) = played
    obj = GAMES[game].obj
    observations = np.stack([resize_frame(max_pool_last_two([a, b]), (64, 64)) for a, b in zip(before, last)])
    labels = labels_for(f"atari_{game}", {"image": observations, "ram": ram}, margin=1)
    raw, present = screen_boxes(ram, obj)
    assert np.array_equal(labels.present, present)
    inside_share = []
    for a, b, box, on in zip(before, last, labels.boxes, labels.present):
        if not on:
            continue
        colour = np.asarray(obj.colour, np.uint8)
        mask = np.zeros(a.shape[:2], np.float32)
        top, left, bottom, right = obj.field
        for screen in (a, b):  # the object's pixels in either pooled frame
            mask[top:bottom, left:right] += np.all(screen[top:bottom, left:right] == colour, axis=-1)
        for row in obj.static_rows:
            mask[row] = 0
        small = cv2.resize(mask, (64, 64), interpolation=cv2.INTER_AREA) > 0.2  # (64, 64)
        rows, cols = np.nonzero(small)
        if rows.size == 0:
            continue
        inside = (rows >= box[0]) & (rows < box[2]) & (cols >= box[1]) & (cols < box[3])
        inside_share.append(inside.mean())
    # Boxing's box is the body: a punching arm may leave it; a hit chicken jumps back
    # further than the 1-pixel margin. Nearly every frame must still be mostly inside.
    inside_share = np.array(inside_share)
    assert len(inside_share) > 30
    assert np.mean(inside_share >= 0.75) > 0.95, f"{game}: object pixels outside the scaled boxes"


def test_scale_boxes_covers_every_touched_pixel():
    raw = np.array([[15, 50, 19, 52], [0, 0, 210, 160]], np.int32)
    boxes = scale_boxes(raw, (64, 64), margin=0)
    # rows 15..19 of 210 -> 4.57..5.79 of 64: pixels 4 and 5; cols 50..52 of 160 -> 20..20.8: pixel 20
    assert boxes[0].tolist() == [4, 20, 6, 21]
    assert boxes[1].tolist() == [0, 0, 64, 64]
    assert scale_boxes(raw, (64, 64), margin=1)[0].tolist() == [3, 19, 7, 22]


def test_object_variables_are_only_valid_on_screen():
    ram = np.zeros((2, 128), np.uint8)
    ram[1, 49], ram[1, 54] = 100, 100  # ball on screen in the second frame only
    labels = labels_for("atari_pong", {"image": np.zeros((2, 64, 64, 3), np.uint8), "ram": ram}, margin=1)
    assert labels.present.tolist() == [False, True]
    assert labels.valid["ball_x"].tolist() == [False, True]
    assert labels.valid["player_y"].tolist() == [True, True]
    assert labels.object_targets == ("ball_x", "ball_y")
    assert np.allclose(labels.sizes, np.sqrt(2 * 4 * 64 * 64 / (210 * 160)))  # a 2x4 ball is ~1 px at 64x64
