"""Depth on the patch grid and its orthographic point cloud (paper Sec. 3.2; spec 3.1 and 7.4).

The depth map is adapted to the resolution of the patch feature map and unprojected orthographically: patch
(r, c) becomes p = (c / s, r / s, z) with s = max(h, w) and z the per-image min-max normalised depth, so the
cloud has unit scale and tau_knn ~ 0.1 is meaningful. No camera intrinsics are used (as in the paper).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _block_view(depth: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(h, k, w, k) view of ``depth`` resampled (nearest) so that every patch holds k x k samples."""
    h, w = grid
    H, W = depth.shape
    k = max(1, int(round(min(H / h, W / w))))
    rows = np.minimum((np.arange(h * k) * H) // (h * k), H - 1)
    cols = np.minimum((np.arange(w * k) * W) // (w * k), W - 1)
    return depth[np.ix_(rows, cols)].reshape(h, k, w, k)


def depth_to_grid(depth: np.ndarray, grid: tuple[int, int], pool: str = "median") -> tuple[np.ndarray, bool]:
    """Resample depth to the patch grid and min-max normalise it.

    Args:
        depth: (H, W) float depth, larger = farther, any resolution; NaN/inf are missing values.
        grid: (h, w) patch grid.
        pool: ``"median"`` or ``"avg"`` over each patch's pixels, or ``"center"`` (the centre pixel).

    Returns:
        ``(z, has_3d)``: z (h, w) float64 in [0, 1]; patches without any valid pixel take the value of the
        nearest valid patch. ``has_3d`` is False when the depth is constant or entirely missing (then z is 0).
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    depth = np.where(np.isfinite(depth), depth, np.nan)
    h, w = grid
    if pool == "center":
        H, W = depth.shape
        rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(int), H - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(int), W - 1)
        z = depth[np.ix_(rows, cols)]
        if np.isnan(z).any():
            # A missing centre pixel falls back to the patch median, which sees all its pixels.
            med = _nan_reduce(_block_view(depth, grid), np.nanmedian)
            z = np.where(np.isnan(z), med, z)
    elif pool == "median":
        z = _nan_reduce(_block_view(depth, grid), np.nanmedian)
    elif pool == "avg":
        z = _nan_reduce(_block_view(depth, grid), np.nanmean)
    else:
        raise ValueError(f"unknown depth pooling {pool!r}; choose median, avg or center")
    missing = np.isnan(z)
    if missing.all():
        return np.zeros(grid), False
    if missing.any():
        idx = ndimage.distance_transform_edt(missing, return_distances=False, return_indices=True)
        z = z[tuple(idx)]
    lo, hi = float(z.min()), float(z.max())
    if hi - lo < 1e-9 * max(1.0, abs(hi)):
        return np.zeros(grid), False
    return (z - lo) / (hi - lo), True


def _nan_reduce(blocks: np.ndarray, fn) -> np.ndarray:
    """Reduce (h, k, w, k) blocks over their pixels, NaN where a block has no valid pixel."""
    h, k, w, _ = blocks.shape
    flat = blocks.transpose(0, 2, 1, 3).reshape(h, w, k * k)
    out = np.full((h, w), np.nan)
    valid = ~np.isnan(flat).all(axis=2)
    if valid.any():
        out[valid] = fn(flat[valid], axis=1)
    return out


def unproject(z: np.ndarray) -> np.ndarray:
    """Orthographic unprojection of the (h, w) normalised depth grid into an (h*w, 3) point cloud.

    Point of patch (r, c): (c / s, r / s, z[r, c]), s = max(h, w); row-major order like the features.
    """
    h, w = z.shape
    s = float(max(h, w))
    rows, cols = np.mgrid[0:h, 0:w]
    return np.stack([cols.ravel() / s, rows.ravel() / s, z.ravel()], axis=1)
