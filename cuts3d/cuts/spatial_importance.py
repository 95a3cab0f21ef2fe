"""Spatial Importance sharpening (paper Sec. 3.3, Eq. 1-3; spec 3.2 and 7.1-7.3).

Eq. 1: dSI = G_sigma * D - D, the unsharp-masking residual of the depth map (large where depth changes fast).
Eq. 2: normalised to [beta, 1].
Eq. 3: the cosine affinities are re-sharpened element-wise, W'_ij = S_ij ** e_ij, with e_ij built from dSI.
Exponents below 1 raise the similarity of patch pairs away from depth edges while pairs on depth edges keep
theirs, so after MaskCut's binarisation the semantic mask grows up to the 3D border (spec 3.2).

Because the affinity is binarised right after sharpening, S ** e > tau is evaluated as S > tau ** (1 / e)
(same result for S in (0, 1], no n x n power), which is what :func:`sharpened_threshold` returns. Eq. 3
exponentiates clip(S, 0, 1), so negative similarities stay below every (positive) threshold, as they should.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


def spatial_importance(depth: np.ndarray, sigma: float, beta: float, absolute: bool = True) -> np.ndarray:
    """Normalised Spatial Importance map (Eq. 1-2).

    Args:
        depth: (h, w) float depth on the patch grid, min-max normalised, larger = farther.
        sigma: Gaussian standard deviation in patches (kernel truncated at 2 sigma: 5 taps for sigma 1).
        beta: lower bound of the output range.
        absolute: use |G*D - D| (GUESS default) instead of the signed residual.

    Returns:
        (h, w) float64 map in [beta, 1]; all ones (no sharpening) when depth has no structure.
    """
    blurred = ndimage.gaussian_filter(depth.astype(np.float64), sigma=sigma, mode="nearest", truncate=2.0)
    dsi = blurred - depth
    if absolute:
        dsi = np.abs(dsi)
    lo, hi = float(dsi.min()), float(dsi.max())
    if hi - lo < 1e-12:
        return np.ones_like(dsi)
    return beta + (1.0 - beta) * (dsi - lo) / (hi - lo)


def sharpened_threshold(importance: np.ndarray, tau: float, mode: str, device: torch.device) -> torch.Tensor:
    """Per-edge threshold on S equivalent to binarising clip(S, 0, 1) ** e_ij at tau (Eq. 3).

    Args:
        importance: (n,) node importance in [beta, 1] (flattened :func:`spatial_importance`).
        tau: tau_ncut.
        mode: ``"pair_mean"``: e_ij = (s_i + s_j) / 2; ``"column"``: e_ij = s_j as in the numpy broadcast
            ``S ** s[None, :]``, made symmetric by keeping an edge when either direction passes.
        device: where to build the (n, n) tensor.

    Returns:
        (n, n) float32 tensor T with S ** e_ij > tau  <=>  S > T_ij.
    """
    s = torch.as_tensor(importance, dtype=torch.float32, device=device)
    if mode == "pair_mean":
        exponent = 0.5 * (s[:, None] + s[None, :])
    elif mode == "column":
        # tau ** (1 / e) grows with e, so "either direction passes" is the threshold of the smaller exponent.
        exponent = torch.minimum(s[:, None], s[None, :])
    else:
        raise ValueError(f"unknown Spatial Importance exponent mode {mode!r}")
    return torch.pow(torch.tensor(tau, dtype=torch.float32, device=device), 1.0 / exponent)
