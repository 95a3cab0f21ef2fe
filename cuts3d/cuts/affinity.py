"""Semantic affinity graph (paper Sec. 3.1; MaskCut, spec 2.2).

Patch features f_i are L2-normalised and compared by cosine similarity S_ij = f_i . f_j. MaskCut binarises
the graph: W_ij = 1 where S_ij > tau_ncut, else eps. Patches found in earlier rounds are removed by zeroing
their features, which makes all their similarities 0 (their nodes stay in the graph with eps edges).

Two implementations: the torch functions below (any device; MaskCut's float32/float64 steps as CutLER takes
them) and, for CutS3D's rounds, :func:`similarity_matrix` + :func:`affinity_graph` + :class:`RoundGraph`,
which build the float32 graph once per image in place and then take removed patches out inside the
eigensolver's products (zeroed features give S = 0 <= tau_ncut, hence eps edges), instead of rebuilding float64
n x n copies every round (issue 12: a third of the cut stage's time).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg.blas
import torch
from numba import njit


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
        (n, n) float32 S. On the CPU: BLAS ssyrk (one triangle, half the products of a general sgemm; the values
        of numpy's ``f.T @ f``, which calls it too) and a tiled copy of that triangle into the other.
    """
    f = torch.nn.functional.normalize(features.detach().float(), p=2, dim=0)
    if f.device.type != "cpu":
        return (f.T @ f).cpu().numpy()
    f = f.numpy()
    # f.T is Fortran-ordered (n, C): ssyrk takes it without a copy; its lower triangle in Fortran order is the
    # upper triangle of the C-ordered transpose.
    s = scipy.linalg.blas.ssyrk(1.0, f.T, trans=0, lower=1).T
    _mirror_upper(s)
    return s


@njit(cache=True)
def _mirror_upper(s):
    """s[j, i] = s[i, j] for j > i, in tiles that stay in cache (32 x 32 was fastest here, twice numpy's copy)."""
    n = s.shape[0]
    tile = 32
    for bi in range(0, n, tile):
        for bj in range(bi, n, tile):
            for i in range(bi, min(bi + tile, n)):
                for j in range(max(bj, i + 1), min(bj + tile, n)):
                    s[j, i] = s[i, j]


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
    return _graph_and_degrees(similarity, tau, eps, binary, threshold, exponent)[0]


def round_graph(
    similarity: np.ndarray,
    tau: float,
    eps: float,
    binary: bool = False,
    threshold: torch.Tensor | None = None,
    exponent: torch.Tensor | None = None,
) -> RoundGraph:
    """:func:`affinity_graph` as a :class:`RoundGraph` for CutS3D's rounds (with its degrees when they come
    from the same pass over the matrix)."""
    w, degrees = _graph_and_degrees(similarity, tau, eps, binary, threshold, exponent)
    return RoundGraph(w, eps, degrees)


def _graph_and_degrees(similarity, tau, eps, binary, threshold, exponent) -> tuple[np.ndarray, np.ndarray | None]:
    if threshold is None and exponent is None and similarity.dtype == np.float32 and similarity.flags.c_contiguous:
        # one pass, and the float64 row sums on the way. The comparison is numpy's for a float32 array and a
        # Python float (the threshold is taken as float32); eps and 1 are float32 values too.
        degrees = np.empty(similarity.shape[0], np.float64)
        _threshold_rows(similarity, np.float32(tau), np.float32(eps), binary, degrees)
        return similarity, degrees
    if threshold is None and exponent is None:
        below = similarity <= tau
        if binary:
            similarity.fill(1.0)
        else:
            np.minimum(similarity, 1.0, out=similarity)  # above tau > 0 the lower clip is a no-op
        np.putmask(similarity, below, eps)
        return similarity, None
    s = torch.from_numpy(similarity)
    if binary:
        return torch.where(_above(s, tau, threshold), 1.0, torch.tensor(eps, dtype=s.dtype)).numpy(), None
    return _weights(s, tau, eps, threshold, exponent).numpy(), None


@njit(cache=True)
def _threshold_rows(s, tau, eps, binary, degrees):
    """In place: s_ij <= tau -> eps, else min(s_ij, 1) (1 if ``binary``); degrees[i] = sum_j of row i (float64)."""
    n, m = s.shape
    one = np.float32(1.0)
    top = one if not binary else np.float32(-np.inf)  # min(x, top), or 1 for every edge of a binary graph
    for i in range(n):
        row = s[i]
        for j in range(m):
            x = row[j]
            row[j] = eps if x <= tau else (one if x > top else x)
        degrees[i] = _sum64(row)


@njit(cache=True, fastmath={"reassoc"})
def _sum64(row):
    # Reassociation lets the sum vectorise, and it cannot change the result: every entry is a float32 >= eps
    # (a multiple of 2**-40) and a row sums to < 2**12 for n <= 4096, so every partial sum is exact in float64.
    total = 0.0
    for j in range(row.shape[0]):
        total += np.float64(row[j])
    return total


class RoundGraph:
    """The float32 NCut graph of one image across CutS3D's rounds, with found patches taken out lazily.

    Taking a patch out of the graph (MaskCut zeroes its feature) sets its row and column to eps: its
    similarities become 0 <= tau_ncut (tau_ncut > 0, see :meth:`cuts3d.CutConfig.validate`), the diagonal
    included. Writing those rows and columns costs a strided n x n pass per round; instead the graph ``w``
    stays as built and the removal enters the eigensolver's products and the degrees. With k the kept
    patches (1/0), W'_ij = k_i k_j W_ij + eps (1 - k_i k_j), so

        W' v = k * (W (k * v)) + eps * (sum(v) - k * sum(k * v)),
        deg'_i = k_i * sum_j k_j W_ij + eps * (n - k_i * |k|).

    Args:
        w: (n, n) symmetric float32 graph from :func:`affinity_graph` (kept, not modified).
        eps: the weight of a removed patch's edges.
        degrees: (n,) float64 row sums of ``w`` if already known.
    """

    def __init__(self, w: np.ndarray, eps: float, degrees: np.ndarray | None = None) -> None:
        self.w = w
        self.eps = float(np.float32(eps))  # the value a written float32 graph would hold
        self.keep = np.ones(w.shape[0], dtype=bool)
        # (n,) float64 sum_j k_j W_ij: the degrees of ``w`` when given, else built on first use
        self._kept_sums: np.ndarray | None = None if degrees is None else np.array(degrees, np.float64)

    @property
    def n(self) -> int:
        return self.w.shape[0]

    def remove(self, patches: np.ndarray) -> None:
        """Take the patches ``patches`` ((n,) bool) out of the graph; patches already out are ignored."""
        new = np.flatnonzero(patches & self.keep)
        if new.size == 0:
            return
        if self._kept_sums is not None:
            # W is symmetric: the columns of the new patches are their rows, read contiguously
            self._kept_sums -= _row_sum(self.w, new)
        self.keep[new] = False

    def degrees(self) -> np.ndarray:
        """(n,) float64 degrees of the graph with the removed patches' edges at eps."""
        if self._kept_sums is None:
            self._kept_sums = self.w.sum(axis=1, dtype=np.float64)
            if not self.keep.all():
                self._kept_sums -= _row_sum(self.w, np.flatnonzero(~self.keep))
        kept = int(self.keep.sum())
        return np.where(self.keep, self._kept_sums + self.eps * (self.n - kept), self.eps * self.n)

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """W' v for a float64 (n,) vector, with one float32 symmetric product (one triangle of W read)."""
        if self.keep.all():
            return _symv(self.w, v.astype(np.float32)).astype(np.float64)
        k = self.keep
        kv = np.where(k, v, 0.0)
        product = _symv(self.w, kv.astype(np.float32)).astype(np.float64)
        return np.where(k, product, 0.0) + self.eps * (v.sum() - np.where(k, kv.sum(), 0.0))

    def dense(self) -> np.ndarray:
        """W' as a new (n, n) float32 array (for the solvers that take the matrix)."""
        out = self.w.copy()
        out[~self.keep, :] = self.eps
        out[:, ~self.keep] = self.eps  # exact: self.eps is a float32 value
        return out

    def is_constant(self) -> bool:
        """True when every edge of W' has the same weight (the graph carries no partition)."""
        kept = np.flatnonzero(self.keep)
        if kept.size == 0:
            return True
        first = self.w[kept[0], kept]
        lo, hi = first.min(), first.max()
        if lo != hi or (kept.size < self.n and lo != self.eps):
            return False
        if kept.size == self.n:
            return bool(self.w.min() == lo and self.w.max() == lo)
        block = self.w[np.ix_(kept, kept)]
        return bool(block.min() == lo and block.max() == lo)


@njit(cache=True)
def _row_sum(w, rows):
    """sum over ``rows`` of w[r, :] in float64 ((n,)); numpy's float64 sum of float32 rows is several times slower."""
    total = np.zeros(w.shape[1], np.float64)
    for r in rows:
        for j in range(w.shape[1]):
            total[j] += w[r, j]
    return total


def _symv(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    # ssymv on the Fortran-ordered view of the symmetric graph: BLAS takes it without a copy and reads one triangle
    return scipy.linalg.blas.ssymv(1.0, w.T, v, lower=1)


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
