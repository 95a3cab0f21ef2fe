"""Semantic affinity graph (paper Sec. 3.1; MaskCut, spec 2.2).

Patch features f_i are L2-normalised and compared by cosine similarity S_ij = f_i . f_j. MaskCut binarises
the graph: W_ij = 1 where S_ij > tau_ncut, else eps. Patches found in earlier rounds are removed by zeroing
their features, which makes all their similarities 0 (their nodes stay in the graph with eps edges).

Two implementations: the torch functions below (any device; MaskCut's float32/float64 steps as CutLER takes
them) and, for CutS3D's rounds, :func:`similarity_matrix` + :func:`affinity_graph` + :func:`remove_nodes`,
which build the float32 graph once per image in place and then only overwrite the rows and columns of removed
patches (zeroed features give S = 0 <= tau_ncut, hence eps), instead of rebuilding float64 n x n copies every
round (issue 12: a third of the cut stage's time).
"""

from __future__ import annotations

import numpy as np
import torch


def cosine_similarity(features: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Cosine similarity of every pair of patches.

    Args:
        features: (C, n) float tensor, one column per patch.
        dtype: precision of the normalisation and the product (CutLER: float32 in MaskCut's first round,
            float64 after it).

    Returns:
        (n, n) tensor S of ``dtype``, S_ij = <f_i, f_j> / (|f_i| |f_j|); 0 for an all-zero feature.
    """
    f = torch.nn.functional.normalize(features.to(dtype), p=2, dim=0)
    return f.T @ f


def similarity_matrix(features: torch.Tensor) -> np.ndarray:
    """Cosine similarity as a writable float32 numpy array (the input of :func:`affinity_graph`).

    Args:
        features: (C, n) float tensor on any device.

    Returns:
        (n, n) float32 S. On the CPU the product is numpy's (OpenBLAS sgemm, about twice torch's speed here).
    """
    f = torch.nn.functional.normalize(features.detach().float(), p=2, dim=0)
    if f.device.type != "cpu":
        return (f.T @ f).cpu().numpy()
    f = f.numpy()
    return f.T @ f


def affinity_graph(
    similarity: np.ndarray,
    tau: float,
    eps: float,
    binary: bool = False,
    threshold: torch.Tensor | None = None,
    exponent: torch.Tensor | None = None,
) -> np.ndarray:
    """The NCut graph of :func:`binarize` (``binary``) or :func:`weighted`, as float32, built in place.

    Args:
        similarity: (n, n) float32 S from :func:`similarity_matrix`; it is overwritten and returned.
        tau, eps, threshold, exponent: as for :func:`weighted`.

    Returns:
        (n, n) float32 W: the values of :func:`binarize` / :func:`weighted` (which return them as float64).
    """
    if threshold is None and exponent is None:
        below = similarity <= tau
        if binary:
            similarity.fill(1.0)
        else:
            np.minimum(similarity, 1.0, out=similarity)  # above tau > 0 the lower clip is a no-op
        np.putmask(similarity, below, eps)
        return similarity
    s = torch.from_numpy(similarity)
    if binary:
        return torch.where(_above(s, tau, threshold), 1.0, torch.tensor(eps, dtype=s.dtype)).numpy()
    return _weights(s, tau, eps, threshold, exponent).numpy()


def remove_nodes(w: np.ndarray, removed: np.ndarray, eps: float) -> None:
    """Take ``removed`` patches ((n,) bool) out of the float32 graph ``w`` in place, as :func:`mask_out` does.

    Their features would be zero, so every similarity with them is 0 <= tau_ncut (tau_ncut > 0, see
    :meth:`cuts3d.CutConfig.validate`): their rows and columns become eps, the diagonal included.
    """
    idx = np.flatnonzero(removed)
    w[idx, :] = eps
    w[:, idx] = eps


def mask_out(similarity: torch.Tensor, removed: np.ndarray) -> torch.Tensor:
    """Similarity after zeroing the features of ``removed`` patches (MaskCut's graph masking).

    Equivalent to recomputing :func:`cosine_similarity` on features with those columns set to 0.

    Args:
        similarity: (n, n) tensor from :func:`cosine_similarity`.
        removed: (n,) bool, patches already assigned to an instance.
    """
    if not removed.any():
        return similarity
    keep = torch.as_tensor(~removed, device=similarity.device, dtype=similarity.dtype)
    return similarity * keep[:, None] * keep[None, :]


def binarize(similarity: torch.Tensor, tau: float, eps: float, threshold: torch.Tensor | None = None) -> np.ndarray:
    """MaskCut's binary affinity W = 1 where S > tau else eps, as float64 numpy (what the solvers take).

    Args:
        similarity: (n, n) tensor S.
        tau: tau_ncut.
        eps: weight of the edges below the threshold.
        threshold: optional (n, n) per-edge threshold replacing ``tau`` (used by Spatial Importance,
            see :func:`cuts3d.cuts.spatial_importance.sharpened_threshold`).
    """
    return np.where(_above(similarity, tau, threshold).cpu().numpy(), 1.0, eps)


def weighted(similarity: torch.Tensor, tau: float, eps: float, threshold: torch.Tensor | None = None,
             exponent: torch.Tensor | None = None) -> np.ndarray:
    """MaskCut's edges (S > tau) weighted by the similarity itself, optionally sharpened: clip(S, 0, 1) ** e_ij.

    The edge set is MaskCut's (or the one ``threshold`` gives), so an exponent can neither create nor remove an
    edge; exponents below 1 make an edge heavier. With Spatial Importance exponents (``si_apply="weights"``)
    edges in flat regions get heavier than edges across 3D borders, so NCut's cut prefers 3D borders.

    Args:
        similarity: (n, n) tensor S.
        tau: tau_ncut.
        eps: weight of the edges at or below the threshold.
        threshold: optional (n, n) per-edge threshold replacing ``tau``.
        exponent: optional (n, n) tensor e_ij (see :func:`cuts3d.cuts.spatial_importance.edge_exponents`).

    Returns:
        (n, n) float64 numpy affinity.
    """
    return _weights(similarity, tau, eps, threshold, exponent).double().cpu().numpy()


def _weights(similarity: torch.Tensor, tau: float, eps: float, threshold: torch.Tensor | None,
             exponent: torch.Tensor | None) -> torch.Tensor:
    weights = similarity.clamp(0.0, 1.0)
    if exponent is not None:
        weights = torch.pow(weights, exponent.to(device=similarity.device, dtype=similarity.dtype))
    return torch.where(_above(similarity, tau, threshold), weights, torch.full_like(weights, eps))


def _above(similarity: torch.Tensor, tau: float, threshold: torch.Tensor | None) -> torch.Tensor:
    """MaskCut's edge set: S > tau, or S > T_ij with a per-edge threshold (Spatial Importance)."""
    return similarity > (tau if threshold is None else threshold.to(similarity.device))
