"""Mask filters of MaskCut (spec 2.4) shared by both cut methods, and patch-grid upsampling.

A round's mask is dropped when its IoU with the previous round's mask is above 0.5 (the same object again)
or when it covers at most 1 % of the patch grid (noise). Patch masks and Spatial Confidence maps go to pixel
resolution by nearest-neighbour upsampling (spec 2.4 and 3.5); :func:`align_confidence_to_mask` is Table 5d's
alternative for SC maps, with their steps moved onto the pseudo-mask border.
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


def _patch_index(n_pixels: int, n_patches: int) -> np.ndarray:
    """Patch row (or column) of each pixel row (or column), the same mapping as :func:`upsample_nearest`."""
    return np.minimum((np.arange(n_pixels) * n_patches) // n_pixels, n_patches - 1)


def align_confidence_to_mask(grid_map: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Spatial Confidence at pixel resolution with its steps on the pseudo-mask border (Table 5d, "with").

    The paper keeps SC patch-level ("patchy") and upsamples it by nearest neighbour (:func:`upsample_nearest`,
    Table 5d "without", the default). Its alternative aligns the map to the mask border: a patch that the
    border cuts through holds one SC value for pixels on both sides, so here every pixel takes the SC of the
    nearest patch on its *own* side of the border instead. Inside pixels (``mask`` True) read from patches
    whose pixels lie at least half inside the mask, outside pixels from patches at least half outside (a patch
    split exactly in two serves both sides). A pixel whose own patch qualifies keeps that patch's value; else
    the nearest qualifying patch by Euclidean distance between patch centres (a distance transform on the
    patch grid) gives it. SC's discontinuities then coincide with the mask edge rather than the patch grid
    wherever the border crosses a patch. A side with no qualifying patch at all (a mask smaller than half a
    patch everywhere, or one covering most of every patch) keeps the nearest-upsampled values.

    Args:
        grid_map: (h, w) patch-level SC map.
        mask: (H, W) bool pseudo-mask at pixel resolution; the patch grid spans the whole image, as in
            :func:`upsample_nearest`.

    Returns:
        (H, W) array of ``grid_map``'s dtype; every value is one of ``grid_map``'s values.
    """
    from scipy.ndimage import distance_transform_edt  # scipy is a dependency; imported here to keep import light

    grid_map = np.asarray(grid_map)
    mask = np.asarray(mask, dtype=bool)
    h, w = grid_map.shape
    H, W = mask.shape
    rows, cols = _patch_index(H, h), _patch_index(W, w)
    # Share of each patch's pixels inside the mask (pixels are assigned to patches as upsample_nearest does).
    patch_id = (rows[:, None] * w + cols[None, :]).ravel()
    inside = np.bincount(patch_id, weights=mask.ravel(), minlength=h * w).reshape(h, w)
    count = np.bincount(patch_id, minlength=h * w).reshape(h, w)
    frac = inside / np.maximum(count, 1)
    out = upsample_nearest(grid_map, (H, W)).copy()
    for side, pixels in ((frac >= 0.5, mask), (frac <= 0.5, ~mask)):
        if not side.any() or not pixels.any():
            continue
        # For every patch, the nearest patch of this side (itself if it qualifies).
        _, (near_r, near_c) = distance_transform_edt(~side, return_indices=True)
        side_map = grid_map[near_r, near_c]  # (h, w): the value this side's pixels in each patch take
        out[pixels] = upsample_nearest(side_map, (H, W))[pixels]
    return out
