"""Depth on the patch grid and its orthographic point cloud (paper Sec. 3.2; spec 3.1 and 7.4).

The depth map is adapted to the resolution of the patch feature map and unprojected orthographically: patch
(r, c) becomes p = (c / s, r / s, z) with s = max(h, w), so x and y span [0, 1) and tau_knn ~ 0.1 is
meaningful. No camera intrinsics are used (as in the paper). How depth D becomes z is a GUESS (spec 3.1):

- ``"log"`` (default): z = gain * ln(D / median D). A depth step between two surfaces becomes their depth
  *ratio*, which is what a camera sees (neighbouring patches at depth D lie about D / f apart, so a step dD
  matters as dD / D), and it does not depend on how far the farthest pixel is: a sky 50x deeper than the
  objects only moves its own points away. It is invariant to the unknown scale of relative depth models;
  inverted disparity (Depth Anything, see :func:`cuts3d.depth.models.disparity_to_depth`) and metric depth
  (ZoeDepth) both work. Depth with values <= 0 (e.g. a min-max normalised map) is shifted so that its
  minimum sits at 1/20 of its range above 0, the same 20:1 range the disparity conversion allows.
- ``"minmax"``: z = (D - min D) / (max D - min D) over the image, the spec's first recommendation. A far
  backdrop compresses the objects' depth gaps to a few thousandths, below tau_knn, and LocalCut stops
  cutting (kept for comparison).
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


def depth_to_grid(
    depth: np.ndarray, grid: tuple[int, int], pool: str = "median", scale: str = "minmax", gain: float = 1.0
) -> tuple[np.ndarray, bool]:
    """Resample depth to the patch grid and scale it to the point cloud's z (see the module docstring).

    Args:
        depth: (H, W) float depth, larger = farther, any resolution; NaN/inf are missing values.
        grid: (h, w) patch grid.
        pool: ``"median"`` or ``"avg"`` over each patch's pixels, or ``"center"`` (the centre pixel).
        scale: ``"minmax"`` (z in [0, 1]) or ``"log"`` (z = gain * ln(D / median D)).
        gain: multiplier of ``"log"`` z (unused by ``"minmax"``).

    Returns:
        ``(z, has_3d)``: z (h, w) float64; patches without any valid pixel take the value of the nearest
        valid patch. ``has_3d`` is False when the depth is constant or entirely missing (then z is 0).
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
    if scale == "minmax":
        return (z - lo) / (hi - lo), True
    if scale == "log":
        return gain * log_depth(z), True
    raise ValueError(f"unknown depth scale {scale!r}; choose log or minmax")


# Smallest depth as a fraction of the depth range when depth must be shifted to be positive (the 20:1 range
# of Depth Anything's disparity conversion, DISPARITY_EPS = 0.05).
_SHIFT_FLOOR = 0.05


def log_depth(z: np.ndarray) -> np.ndarray:
    """ln(z / median z) of a finite, non-constant depth array; values <= 0 are shifted first.

    Args:
        z: float depth, larger = farther, any units (metres, 1 / disparity, or a normalised map).

    Returns:
        float64 array of the same shape, 0 at the median depth; differences are log depth ratios.
    """
    z = np.asarray(z, dtype=np.float64)
    lo, hi = float(z.min()), float(z.max())
    if lo <= 0:
        # Depth known only up to an offset (e.g. min-max normalised): put the nearest point at 1/20 of the
        # range, as the disparity conversion does, rather than at 0 where the logarithm diverges.
        z = z - lo + _SHIFT_FLOOR * (hi - lo)
    logz = np.log(z)
    return logz - float(np.median(logz))


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
