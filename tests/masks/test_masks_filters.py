"""Patch-grid -> pixel maps: nearest upsampling and the mask-aligned Spatial Confidence of Table 5d."""

import numpy as np
import pytest

from cuts3d.masks.filters import align_confidence_to_mask, upsample_nearest

# A 1 x 3 patch grid over a 3 x 9 image: patch j covers columns 3j .. 3j + 2; the middle patch is uncertain.
SC = np.array([[1.0, 0.5, 0.8]], np.float32)


def _mask(cols: slice, shape=(3, 9)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[:, cols] = True
    return m


def test_border_through_a_mostly_inside_low_patch_moves_the_step_to_the_border():
    # Columns 0-4 inside: the low patch is 2/3 inside, so it serves the inside; its outside column 5 takes the
    # nearest mostly-outside patch (patch 2, 0.8) instead of the low value.
    out = align_confidence_to_mask(SC, _mask(np.s_[0:5]))
    expected = np.array([1.0, 1.0, 1.0, 0.5, 0.5, 0.8, 0.8, 0.8, 0.8], np.float32)
    np.testing.assert_array_equal(out, np.tile(expected, (3, 1)))
    # nearest upsampling keeps the step on the patch grid (column 5 stays 0.5)
    assert upsample_nearest(SC, (3, 9))[0, 5] == 0.5


def test_border_through_a_mostly_outside_low_patch():
    # Columns 0-3 inside: the low patch is 1/3 inside, so its inside column 3 takes patch 0's 1.0; its outside
    # columns keep 0.5.
    out = align_confidence_to_mask(SC, _mask(np.s_[0:4]))
    expected = np.array([1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.8, 0.8, 0.8], np.float32)
    np.testing.assert_array_equal(out, np.tile(expected, (3, 1)))


def test_two_dimensional_nearest_patch_on_the_same_side():
    # 2 x 2 patches of 2 x 2 pixels; the mask is the top-left patch plus one pixel of the bottom-right patch.
    sc = np.array([[0.9, 0.6], [0.7, 0.5]], np.float32)
    mask = np.zeros((4, 4), bool)
    mask[0:2, 0:2] = True
    mask[2, 2] = True
    out = align_confidence_to_mask(sc, mask)
    expected = upsample_nearest(sc, (4, 4))
    expected[2, 2] = 0.9  # the only inside patch is the top-left one
    np.testing.assert_array_equal(out, expected)


def test_mask_on_the_patch_grid_changes_nothing():
    rng = np.random.default_rng(0)
    sc = rng.choice([0.5, 0.6667, 0.8333, 1.0], size=(4, 6)).astype(np.float32)
    mask = np.zeros((32, 48), bool)
    mask[8:24, 16:40] = True  # whole patches only
    np.testing.assert_array_equal(align_confidence_to_mask(sc, mask), upsample_nearest(sc, (32, 48)))


@pytest.mark.parametrize("mask", [np.zeros((3, 9), bool), np.ones((3, 9), bool), _mask(np.s_[4:5])])
def test_degenerate_masks_fall_back_to_nearest_upsampling(mask):
    # empty, full, and a sliver that is nowhere a patch majority: no side loses its values
    out = align_confidence_to_mask(SC, mask)
    assert out.dtype == SC.dtype and out.shape == (3, 9)
    np.testing.assert_array_equal(out, upsample_nearest(SC, (3, 9)))
