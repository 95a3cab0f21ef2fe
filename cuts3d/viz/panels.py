"""Figure panels for pseudo-masks: coloured instance overlays with contours, depth, Spatial Confidence."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from cuts3d.masks.filters import upsample_nearest  # noqa: E402


def instance_colors(n: int) -> np.ndarray:
    """(n, 3) float RGB colours in [0, 1], distinct for small n."""
    cmap = plt.get_cmap("tab10")
    return np.array([cmap(i % 10)[:3] for i in range(n)])


def overlay(image: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.55) -> np.ndarray:
    """Image with each mask tinted in its own colour and outlined.

    Args:
        image: (H, W, 3) uint8.
        masks: (H, W) bool masks, drawn in order.
        alpha: tint strength.

    Returns:
        (H, W, 3) float RGB in [0, 1].
    """
    out = image.astype(np.float64) / 255.0
    for m, c in zip(masks, instance_colors(len(masks))):
        out[m] = (1 - alpha) * out[m] + alpha * c
        edge = m & ~ndimage.binary_erosion(m, iterations=1)
        out[edge] = c
    return out


def confidence_panel(shape: tuple[int, int], masks: Sequence[np.ndarray], maps: Sequence[np.ndarray | None]) -> np.ndarray:
    """Spatial Confidence of each instance inside its region (NaN elsewhere), nearest-upsampled to ``shape``.

    Args:
        shape: (H, W) output size.
        masks: (H, W) bool instance masks.
        maps: (h, w) confidence maps (None entries are skipped).
    """
    out = np.full(shape, np.nan)
    H, W = shape
    for m, sc in zip(masks, maps):
        if sc is None:
            continue
        up = upsample_nearest(sc, shape)
        region = m | (up < 1)
        out[region] = up[region]
    return out


def save_scene_figure(path: str | Path, panels: Sequence[tuple[str, np.ndarray, dict]], title: str = "") -> Path:
    """Write panels side by side as a PNG.

    Args:
        path: output file.
        panels: (title, array, imshow kwargs) per panel; 2-D arrays get a colour bar.
        title: figure title.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (name, arr, kwargs) in zip(np.atleast_1d(axes), panels):
        im = ax.imshow(arr, **kwargs)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
        if arr.ndim == 2:
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
