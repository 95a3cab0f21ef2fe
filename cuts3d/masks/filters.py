"""Mask filters of MaskCut (spec 2.4) shared by both cut methods, and patch-grid upsampling.

A round's mask is dropped when its IoU with the previous round's mask is above 0.5 (the same object again)
or when it covers at most 1 % of the patch grid (noise). Patch masks and Spatial Confidence maps go to pixel
resolution by nearest-neighbour upsampling (spec 2.4 and 3.5).
"""

from __future__ import annotations

import numpy as np


def mask_iou(a: np.ndarray | None, b: np.ndarray) -> float:
    """IoU of two boolean masks of equal shape; 0 when ``a`` is None or both are empty."""
    if a is None:
        return 0.0
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def passes_maskcut_filters(previous: np.ndarray | None, mask: np.ndarray, max_iou: float, min_area: float) -> bool:
    """MaskCut's keep rule for a round k >= 1.

    Args:
        previous: (h, w) bool mask of round k - 1 (None in round 0, which always passes).
        mask: (h, w) bool mask of round k.
        max_iou: drop when IoU(previous, mask) > max_iou (0.5).
        min_area: drop when mask.sum() / mask.size <= min_area (0.01).
    """
    if previous is None:
        return True
    return not (mask_iou(previous, mask) > max_iou or mask.sum() / mask.size <= min_area)


def upsample_nearest(grid_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of an (h, w) array to ``shape`` = (H, W), like F.interpolate(mode="nearest")."""
    h, w = grid_map.shape
    H, W = shape
    rows = np.minimum((np.arange(H) * h) // H, h - 1)
    cols = np.minimum((np.arange(W) * w) // W, w - 1)
    return grid_map[np.ix_(rows, cols)]
