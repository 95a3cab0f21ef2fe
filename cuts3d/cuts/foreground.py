"""3D foreground evidence of a mask: is it in front of what surrounds it? (mask scoring; not in the paper)

Spatial Confidence (Eq. 4) is 1 wherever LocalCut's result does not depend on tau_knn, which is as true of a
flat wall, floor or sky as of an object, so a background mask can score 1.0 and rank above every object. Objects
stand in front of their surroundings; background surfaces do not (whatever borders them - the objects on a floor,
the buildings below a sky - is closer). The *front fraction* of a mask is the share of the patches just outside
it that lie farther away than the mask's nearby patches by more than half of tau_knn (a 3D border as LocalCut
understands it). The frame around the image counts as surroundings that are not behind, so a floor or sky that
runs out of the picture gets little credit and a mask covering the whole image gets 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def front_fraction(mask: np.ndarray, z: np.ndarray, delta: float, ring: int = 2, frame: bool = True) -> float:
    """Share of the mask's surrounding patches that lie behind it in depth.

    Args:
        mask: (h, w) bool patch mask.
        z: (h, w) float point-cloud depth of the patches (the same z LocalCut uses; larger = farther).
        delta: depth step, in z units, that counts as "behind" (e.g. tau_knn / 2).
        ring: width in patches of the surrounding band.
        frame: count the band beyond the image as surroundings that are not behind (default); False
            ignores it (then a floor cut off by the image border is judged by its inner edges alone).

    Returns:
        float in [0, 1]; 0 for an empty mask or the whole grid.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return 0.0
    # The frame beyond the image is part of the surroundings with no evidence of lying behind (z = -inf):
    # a floor or a sky that runs out of the picture is not in front of anything there.
    if frame:
        mask = np.pad(mask, ring)
        z = np.pad(np.asarray(z, dtype=np.float64), ring, constant_values=-np.inf)
    size = 2 * ring + 1
    band = ndimage.binary_dilation(mask, structure=np.ones((3, 3), dtype=bool), iterations=ring) & ~mask
    if not band.any():
        return 0.0
    # Each band patch is compared with the mean depth of the mask patches within `ring` of it, so a touching
    # object that is closer counts as "in front of the mask", a background behind it as "behind".
    inside_sum = ndimage.uniform_filter(np.where(mask, z, 0.0), size=size, mode="constant")
    inside_cnt = ndimage.uniform_filter(mask.astype(np.float64), size=size, mode="constant")
    near = band & (inside_cnt > 0)
    if not near.any():
        return 0.0
    reference = inside_sum[near] / inside_cnt[near]
    return float(np.mean(z[near] - reference > delta))
