"""Reconstruction metrics on synthetic frames with known answers."""

import math

import numpy as np
import pytest

from mwm.probes.annotations import Labels
from mwm.probes.metrics import background_colour, box_mse, frame_mse, object_visible, reconstruction_metrics

BACKGROUND = (16, 16, 48)
OBJECT = (255, 96, 32)
BOX = (20, 30, 24, 34)  # top, left, bottom, right: a 4x4 object


def scene(n=3, box=BOX, colour=OBJECT):
    """n identical 64x64 frames: flat background, one object drawn at ``box``."""
    images = np.empty((n, 64, 64, 3), np.uint8)
    images[:] = BACKGROUND
    top, left, bottom, right = box
    images[:, top:bottom, left:right] = colour
    boxes = np.tile(np.array(box, np.int32), (n, 1))
    return images, boxes, np.ones(n, bool)


def test_perfect_reconstruction_scores_zero_error_and_visible():
    images, boxes, present = scene()
    assert np.allclose(frame_mse(images, images), 0.0)
    assert np.allclose(box_mse(images, images, boxes, present), 0.0)
    assert np.all(object_visible(images, images, boxes, present, threshold=0.1) == 1.0)


def test_erased_object_is_not_visible_and_box_error_is_the_contrast():
    images, boxes, present = scene()
    erased = images.copy()
    erased[:] = BACKGROUND
    assert np.all(object_visible(erased, images, boxes, present, threshold=0.1) == 0.0)
    contrast = ((np.array(OBJECT) - np.array(BACKGROUND)) / 255.0) ** 2
    assert np.allclose(box_mse(erased, images, boxes, present), contrast.mean(), atol=1e-6)
    # The whole frame hardly notices: 16 of 4096 pixels differ.
    assert np.allclose(frame_mse(erased, images), contrast.mean() * 16 / 4096, atol=1e-7)


def test_object_moved_elsewhere_is_not_visible_at_its_box():
    images, boxes, present = scene()
    moved, _, _ = scene(box=(40, 10, 44, 14))
    assert np.all(object_visible(moved, images, boxes, present, threshold=0.1) == 0.0)


def test_grey_blur_is_not_visible_but_a_slightly_faded_object_is():
    images, boxes, present = scene()
    grey = np.full_like(images, 128)
    assert np.all(object_visible(grey, images, boxes, present, threshold=0.1) == 0.0)
    faded = images.astype(np.float32)
    top, left, bottom, right = BOX
    faded[:, top:bottom, left:right] = 0.7 * np.array(OBJECT) + 0.3 * np.array(BACKGROUND)
    assert np.all(object_visible(faded.round().astype(np.uint8), images, boxes, present, threshold=0.1) == 1.0)


def test_noise_that_hits_the_object_colour_is_not_visible():
    images, boxes, present = scene(box=(10, 10, 11, 11))
    noise = np.random.default_rng(0).integers(0, 256, size=images.shape, dtype=np.uint8)
    noise[:, 10, 10] = OBJECT  # the object's pixel right by chance, its surroundings garbage
    assert np.all(object_visible(noise, images, boxes, present, threshold=0.1) == 0.0)


def test_half_erased_object_is_still_visible_quarter_is_not():
    images, boxes, present = scene()
    top, left, bottom, right = BOX
    half = images.copy()
    half[:, top:top + 2, left:right] = BACKGROUND  # 8 of 16 pixels lost
    assert np.all(object_visible(half, images, boxes, present, threshold=0.1) == 1.0)
    most = images.copy()
    most[:, top:top + 3, left:right] = BACKGROUND  # 12 of 16 lost
    assert np.all(object_visible(most, images, boxes, present, threshold=0.1) == 0.0)


def test_absent_or_invisible_objects_are_left_out():
    images, boxes, present = scene()
    present[0] = False  # RAM says off screen
    hidden, _, _ = scene(colour=BACKGROUND)  # drawn in the background colour: no object pixel
    visible = object_visible(hidden, hidden, boxes, present, threshold=0.1)
    assert np.isnan(visible).all()
    assert np.isnan(box_mse(images, images, boxes, present)[0])
    metrics = reconstruction_metrics(images, images, Labels(boxes, present), threshold=0.1)
    assert metrics["object_frames"] == 2 and metrics["visible"] == 1.0


def test_background_is_the_median_of_the_ring_even_next_to_another_object():
    images, boxes, _ = scene(n=1)
    images[0, 18:26, 28] = (64, 224, 255)  # a paddle along one side of the ring
    assert np.allclose(background_colour(images[0], boxes[0], ring=2) * 255, BACKGROUND)


def test_one_pixel_object_counts():
    images, boxes, present = scene(box=(10, 10, 11, 11))
    erased = images.copy()
    erased[:, 10, 10] = BACKGROUND
    assert object_visible(images, images, boxes, present, 0.1).tolist() == [1.0] * 3
    assert object_visible(erased, images, boxes, present, 0.1).tolist() == [0.0] * 3


def test_no_object_gives_nan_means():
    images, boxes, present = scene()
    metrics = reconstruction_metrics(images, images, Labels(boxes, np.zeros(3, bool)), threshold=0.1)
    assert math.isnan(metrics["box_mse"]) and math.isnan(metrics["visible"])
    assert metrics["frame_mse"] == pytest.approx(0.0)
