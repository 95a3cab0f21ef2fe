"""Spatial Importance (paper Sec. 3.3, Eq. 1-3; spec 3.2 and 7.1-7.3).

Eq. 1: dSI = G_sigma * D - D, the unsharp-masking residual of the depth map (large where depth changes fast).
Eq. 2: normalised to [beta, 1].
Eq. 3: the cosine affinities are re-sharpened element-wise, W'_ij = S_ij ** e_ij, with e_ij built from dSI.

The paper gives two purposes: "make cuts along object boundaries more likely" (Sec. 1) and "include the
spatially important areas of the object in the semantic mask for LocalCut to find the accurate 3D boundary"
(Sec. 3.3). How the map is used is :attr:`cuts3d.CutConfig.si_apply`:

- ``"grow"`` (default, in :mod:`cuts3d.cuts.segment`): the semantic mask is grown into neighbouring patches of
  high importance before LocalCut (the second purpose, without touching NCut's graph).
- ``"binarize"``: Eq. 3, then MaskCut's binarisation. With the literal exponents (flat regions get beta < 1)
  similarities below tau_ncut are raised above it (0.05 ** 0.6 = 0.17 > 0.15), so edges appear between objects
  and background; measured to cost about 12 AP50 on the synthetic families. Because the affinity is binarised
  right after sharpening, S ** e > tau is evaluated as S > tau ** (1 / e) (:func:`sharpened_threshold`).
- ``"weights"``: Eq. 3 re-weights the edges of the similarity-weighted graph only (no edge created or removed).

Eq. 3 exponentiates clip(S, 0, 1), so negative similarities stay below every (positive) threshold.
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


SI_FORMS = ("literal", "inverted", "reciprocal")


def si_exponents(importance: np.ndarray, beta: float, form: str) -> np.ndarray:
    """Node exponents of Eq. 3 from the normalised Spatial Importance (values in [beta, 1]).

    Args:
        importance: Spatial Importance from :func:`spatial_importance`, in [beta, 1].
        beta: its lower bound.
        form: ``"literal"``: e = importance, in [beta, 1]: flat regions get beta < 1, which *raises* their
            similarities, so pairs below tau_ncut can cross it (new edges appear anywhere away from depth
            edges). ``"inverted"``: e = 1 + beta - importance: 3D borders get beta and their similarities
            are raised ("include the spatially important areas of the object in the semantic mask").
            ``"reciprocal"``: e = 1 / importance, in [1, 1 / beta]: flat regions keep their similarities and
            pairs at 3D borders are lowered, so an edge can only disappear where depth jumps ("make cuts
            along object boundaries more likely"); it can never create an edge.

    Returns:
        float64 array of the same shape: the exponents.
    """
    if form == "literal":
        return np.asarray(importance, dtype=np.float64)
    if form == "inverted":
        return 1.0 + beta - np.asarray(importance, dtype=np.float64)
    if form == "reciprocal":
        return 1.0 / np.asarray(importance, dtype=np.float64)
    raise ValueError(f"unknown Spatial Importance form {form!r}; choose one of {SI_FORMS}")


def edge_exponents(exponents: np.ndarray, mode: str, device: torch.device | str) -> torch.Tensor:
    """(n, n) float32 exponent e_ij of Eq. 3 from (n,) node exponents.

    ``"pair_mean"``: e_ij = (e_i + e_j) / 2. ``"column"``: the numpy broadcast ``S ** e[None, :]`` uses e_j,
    which is not symmetric; an edge is kept when either direction passes, i.e. with min(e_i, e_j) (S <= 1,
    so the smaller exponent gives the larger power).
    """
    e = torch.as_tensor(exponents, dtype=torch.float32, device=device)
    if mode == "pair_mean":
        return 0.5 * (e[:, None] + e[None, :])
    if mode == "column":
        return torch.minimum(e[:, None], e[None, :])
    raise ValueError(f"unknown Spatial Importance exponent mode {mode!r}; choose pair_mean or column")


def sharpened_threshold(exponents: np.ndarray, tau: float, mode: str, device: torch.device | str) -> torch.Tensor:
    """Per-edge threshold on S equivalent to binarising clip(S, 0, 1) ** e_ij at tau (Eq. 3, then MaskCut).

    Args:
        exponents: (n,) positive node exponents (flattened :func:`si_exponents`).
        tau: tau_ncut.
        mode: see :func:`edge_exponents`.
        device: where to build the (n, n) tensor.

    Returns:
        (n, n) float32 tensor T with clip(S, 0, 1) ** e_ij > tau  <=>  S > T_ij.
    """
    e = edge_exponents(exponents, mode, device)
    return torch.pow(torch.tensor(tau, dtype=torch.float32, device=e.device), 1.0 / e)
