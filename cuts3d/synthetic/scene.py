"""The synthetic scene record shared by every scene family (see :mod:`cuts3d.synthetic`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Scene:
    """One synthetic scene.

    Attributes:
        features: (C, h, w) float32 patch features (stand-in for DINO keys).
        depth: (H, W) float32 depth, larger = farther, all values finite and > 0. Units depend on the family
            (scene units for ``blobs``, metres for metric families, ``1 / disparity`` for disparity ones).
        image: (H, W, 3) uint8 RGB.
        masks: (K, H, W) bool visible ground-truth instance masks (K may be 0).
        classes: (K,) int object class of each instance (0 .. n_classes - 1).
        patch_size: pixels per patch side (H = h * patch_size).
    """

    features: np.ndarray
    depth: np.ndarray
    image: np.ndarray
    masks: np.ndarray
    classes: np.ndarray
    patch_size: int
