"""Spatial Confidence (paper Sec. 3.4, Eq. 4; spec 3.5 and 7.7).

LocalCut is repeated for T thresholds tau_knn^(t) with the semantic mask and the terminals fixed; the binary
cuts BC_t are averaged: SC = (1/T) sum_t BC_t. Patches whose membership does not depend on the threshold get
SC = 1; patches at ill-defined 3D borders get fractions k/T. Inside the confidence region (the instance and
every patch any BC_t selected) SC is lifted to the floor c_min (Table 5c: 0.5); outside it SC = 1 so the
confidence-weighted mask loss leaves those pixels unchanged (spec 4.5, Eq. 6).
"""

from __future__ import annotations

import numpy as np


def spatial_confidence(cuts: np.ndarray, instance: np.ndarray, floor: float) -> np.ndarray:
    """Spatial Confidence map of one instance.

    Args:
        cuts: (T, h, w) bool, the LocalCut results BC_t for the T thresholds.
        instance: (h, w) bool, the instance's patch mask (LocalCut at tau_knn).
        floor: minimum confidence inside the region (c_min).

    Returns:
        (h, w) float32 in [floor, 1]: values k/T (or ``floor`` where k/T < floor) inside the region, 1 outside.
    """
    cuts = np.asarray(cuts, dtype=bool)
    sc = cuts.mean(axis=0)
    region = instance | cuts.any(axis=0)
    out = np.ones(instance.shape, dtype=np.float32)
    out[region] = np.maximum(sc[region], floor)
    return out
