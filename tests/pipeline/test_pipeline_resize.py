"""Masks go back to the photo's size exactly as CutLER's MaskCut resizes them (issue 10, item 3)."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cuts3d.pipeline.extract import _resize_mask


def _cutler_resize(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    # CutLER maskcut.py, written out: PIL resize with its default filter, then threshold at upper / 2.
    pseudo_mask = Image.fromarray(np.uint8(mask * 255))
    pseudo_mask = np.asarray(pseudo_mask.resize((width, height))).astype(np.uint8).copy()
    upper, lower = np.max(pseudo_mask), np.min(pseudo_mask)
    thresh = upper / 2.0
    pseudo_mask[pseudo_mask > thresh] = upper
    pseudo_mask[pseudo_mask <= thresh] = lower
    return pseudo_mask != 0


@pytest.mark.parametrize("shape", [(427, 640), (640, 480), (333, 500), (200, 150), (960, 960)])
def test_resize_matches_cutler(shape):
    rng = np.random.default_rng(shape[0])
    for _ in range(3):
        blobs = ndimage.gaussian_filter(rng.standard_normal((480, 480)), 12) > rng.uniform(0.0, 0.05)
        blobs[:40] = False  # CutLER's RLE is only well defined when some pixel stays 0
        for mask in (blobs, blobs & ndimage.binary_erosion(blobs, iterations=30)):
            ours = _resize_mask(mask, shape)
            assert ours.shape == shape
            np.testing.assert_array_equal(ours, _cutler_resize(mask, shape[1], shape[0]))


def test_thin_masks_keep_pixels_below_127():
    # A one-pixel line shrunk 4x never reaches 255; CutLER keeps it (threshold = max / 2), a fixed 127 would not.
    mask = np.zeros((480, 480), dtype=bool)
    mask[:, 200] = True
    small = _resize_mask(mask, (120, 120))
    assert small.any()
    np.testing.assert_array_equal(small, _cutler_resize(mask, 120, 120))
    assert not _resize_mask(np.zeros((480, 480), dtype=bool), (120, 120)).any()
