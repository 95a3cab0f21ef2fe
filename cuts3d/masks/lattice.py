"""Permutohedral-lattice Gaussian filtering for the dense CRF (spec 2.5; Kraehenbuehl & Koltun 2011, Adams et al. 2010).

The dense CRF's mean-field messages are Gaussian filters over (x, y) and (x, y, r, g, b) features, computed
approximately on a permutohedral lattice. pydensecrf (Kraehenbuehl's C++ code) is the reference every MaskCut
implementation uses; this module computes its lattice and its filters with the same float operations in the
same order, compiled with numba, so the messages are equal to the bit (tested against pydensecrf2):

- the lattice: pydensecrf's SSE build on x86-64 (float32 elevation, rounding half to even, rank sort,
  barycentric weights, lattice points numbered in the order they are first met, feature count padded to a
  multiple of 4 with zero features as its SSE loop does);
- the filter: its sequential ``seqCompute`` (splat, blur with a float64 half-sum, slice with the alpha factor),
  applied channel by channel, with symmetric normalisation and Potts weights as ``DenseCRF::stepInference``
  adds them up (Gaussian kernel first, then bilateral).

Why not call pydensecrf: its only entry to a filter is ``stepInference``, which also allocates and normalises
per pixel and filters both labels of a two-label problem; a mask needs one filtered channel per iteration
(:class:`cuts3d.masks.crf.DenseCRF`), and the lattice is built in a fraction of the time (issue 12: the CRF was
half of the cut stage). It also makes the CRF available without a C++ compiler.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

_HASH_MULTIPLIER = 1664525
_ROUND = np.float32(1.5 * 2**23)
_MIX = -49064778989728563  # 0xff51afd7ed558ccd as a signed 64-bit integer


@dataclass(frozen=True)
class Lattice:
    """A permutohedral lattice over N points with d-dimensional features.

    Attributes:
        offset: (N', d + 1) int32 lattice point of each simplex vertex of each feature (N' = N padded to 4).
        weights: (N', d + 1) float32 barycentric weights.
        neighbors: (d + 1, M, 2) int32 blur neighbours of each lattice point along each axis (-1: none).
        n: number of real points N.
        norm: (N,) float32 symmetric normalisation 1 / sqrt(filter(1) + 1e-20).
    """

    offset: np.ndarray
    weights: np.ndarray
    neighbors: np.ndarray
    n: int
    norm: np.ndarray

    @classmethod
    def build(cls, features: np.ndarray) -> Lattice:
        """Lattice of ``features`` ((N, d) float32, d <= 6, already divided by the kernel's standard deviations)."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        if not 1 <= features.shape[1] <= _MAX_DIMS:
            raise ValueError(f"the lattice takes features of 1 to {_MAX_DIMS} dimensions, got {features.shape[1]}")
        offset, weights, neighbors = _build(features)
        ones = np.ones((1, features.shape[0]), np.float32)
        filtered = np.zeros_like(ones)
        _filter(offset, weights, neighbors, ones[0], ones, np.float32(1.0), filtered)  # without normalisation
        norm = _symmetric_norm(filtered[0])
        return cls(offset, weights, neighbors, features.shape[0], norm)

    def filter(self, values: np.ndarray) -> np.ndarray:
        """Symmetrically normalised filter of ``values`` ((K, N) float32): norm * L(norm * values) per channel."""
        out = np.zeros(values.shape, np.float32)
        self.add_filtered(np.ascontiguousarray(values, np.float32), 1.0, out)
        return out

    def add_filtered(self, values: np.ndarray, weight: float, out: np.ndarray) -> None:
        """out += weight * filter(values), in float32 (``values``, ``out``: (K, N) float32 C-contiguous)."""
        _filter(self.offset, self.weights, self.neighbors, self.norm, values, np.float32(weight), out)


def pixel_features(image: np.ndarray, sxy: float, srgb: float | None = None) -> np.ndarray:
    """pydensecrf's ``DenseCRF2D`` kernel features of an (H, W, 3) uint8 image, row-major pixels.

    Returns:
        (H * W, 2) float32 (x / sxy, y / sxy) without ``srgb``; (H * W, 5) float32 with (r, g, b) / srgb
        appended (the bilateral kernel).
    """
    H, W = image.shape[:2]
    s = np.float32(sxy)
    x = np.broadcast_to(np.arange(W, dtype=np.float32) / s, (H, W)).ravel()
    y = np.broadcast_to((np.arange(H, dtype=np.float32) / s)[:, None], (H, W)).ravel()
    columns = [x, y]
    if srgb is not None:
        rgb = np.ascontiguousarray(image, dtype=np.uint8).reshape(-1, 3).astype(np.float32) / np.float32(srgb)
        columns += [rgb[:, 0], rgb[:, 1], rgb[:, 2]]
    return np.stack(columns, axis=1)


def potts_messages(kernels: list[tuple[Lattice, float]], q: np.ndarray) -> np.ndarray:
    """Summed Potts messages sum_k w_k * filter_k(q) per channel, as ``DenseCRF::stepInference`` sums them.

    Args:
        kernels: (lattice, weight) pairs in the order the pairwise terms were added.
        q: (K, N) float32 channel probabilities.

    Returns:
        (K, N) float32 messages (the negated pairwise energies without unary).
    """
    q = np.ascontiguousarray(q, dtype=np.float32)
    total = np.zeros_like(q)
    for lattice, weight in kernels:
        # stepInference: tmp1 -= (-w) * filter(q), i.e. tmp1 + w * filter(q), exactly, in float32
        lattice.add_filtered(q, weight, total)
    return total


def _symmetric_norm(filtered_ones: np.ndarray) -> np.ndarray:
    # pydensecrf: norm = 1.0 / sqrt(norm + 1e-20) in double, stored as float
    return (1.0 / np.sqrt(filtered_ones.astype(np.float64) + 1e-20)).astype(np.float32)


# The hash table holds each lattice point's key packed in place beside its index, so a probe reads one slot:
# (cap, 2) int64, word 0 = coordinates 0-3 (16 bits each), word 1 = coordinates 4-5 in the low 32 bits and
# index + 1 in the high 32 bits (0: empty slot). Features of up to 6 dimensions (the CRF has 2 and 5).
_MAX_DIMS = 6
_LOW32 = 0xFFFFFFFF


@njit(cache=True, inline="always")
def _pack(key):
    """The two words of ``key`` (d <= 6 int16 coordinates)."""
    w0 = 0
    w1 = 0
    for i in range(key.shape[0]):
        c = np.int64(key[i]) & 0xFFFF
        if i < 4:
            w0 |= c << (16 * i)
        else:
            w1 |= c << (16 * (i - 4))
    return w0, w1


@njit(cache=True, inline="always")
def _slot(table, w0, w1):
    """Slot of the key (w0, w1): the slot holding it, or the empty one where it belongs."""
    h = w0 * _MIX + w1
    h ^= h >> 29
    h *= _HASH_MULTIPLIER
    h ^= h >> 32
    mask = table.shape[0] - 1
    slot = h & mask
    while True:
        tag = table[slot, 1]
        if tag == 0 or (table[slot, 0] == w0 and (tag & _LOW32) == w1):
            return slot
        slot = (slot + 1) & mask


@njit(cache=True)
def _grown(table, keys, filled):
    """The table at twice its size, with the ``filled`` keys re-entered (their indices stay)."""
    bigger = np.zeros((2 * table.shape[0], 2), np.int64)
    for e in range(filled):
        w0, w1 = _pack(keys[e])
        slot = _slot(bigger, w0, w1)
        bigger[slot, 0] = w0
        bigger[slot, 1] = w1 | ((e + 1) << 32)
    return bigger


@njit(cache=True)
def _build(features):
    n, d = features.shape
    d1 = d + 1
    n_pad = (n + 3) // 4 * 4  # pydensecrf's SSE loop runs over blocks of 4 and enters the padding's zero features
    capacity = 1024
    while capacity < 2 * n_pad:
        capacity *= 2
    table = np.zeros((capacity, 2), np.int64)  # grows to stay at most half full
    keys = np.empty((n_pad * d1, d), np.int16)  # pydensecrf's keys are shorts too
    filled = 0
    simplex = np.zeros((2, d1), np.int64)  # (rem0, rank) as integers
    inv_std_dev = np.float32(np.sqrt(2.0 / 3.0) * d1)
    scale = np.empty(d, np.float32)
    for i in range(d):
        scale[i] = np.float32(1.0 / np.sqrt(np.float64((i + 2) * (i + 1))) * np.float64(inv_std_dev))
    inv_d1 = np.float32(1.0) / np.float32(d1)
    f_d1 = np.float32(d1)
    one = np.float32(1.0)
    zero = np.float32(0.0)

    offset = np.zeros((n_pad, d1), np.int32)
    weights = np.zeros((n_pad, d1), np.float32)
    elevated = np.empty(d1, np.float32)
    rem0 = np.empty(d1, np.float32)
    rank = np.empty(d1, np.float32)
    bary = np.empty(d + 2, np.float32)
    key = np.empty(d, np.int16)
    for k in range(n_pad):
        # elevate onto the hyperplane (y = E p)
        sm = zero
        for j in range(d, 0, -1):
            f = features[k, j - 1] if k < n else zero
            cf = f * scale[j - 1]
            elevated[j] = sm - np.float32(j) * cf
            sm = sm + cf
        elevated[0] = sm
        # closest zero-coloured lattice point (SSE cvtps_epi32: round half to even)
        total = zero
        for i in range(d1):
            # round half to even in float32 arithmetic (exact for |v| < 2**22, far beyond any lattice key)
            v = (inv_d1 * elevated[i] + _ROUND) - _ROUND
            rem0[i] = v * f_d1
            total = total + v
        # the simplex: rank of each coordinate's remainder
        for i in range(d1):
            rank[i] = zero
        for i in range(d):
            di = elevated[i] - rem0[i]
            for j in range(i + 1, d1):
                # branch-free, as pydensecrf's SSE code: c = (di < dj); rank_i += c; rank_j += 1 - c
                c = np.float32(di < (elevated[j] - rem0[j]))
                rank[i] = rank[i] + c
                rank[j] = rank[j] + (one - c)
        for i in range(d1):
            rank[i] = rank[i] + total
            add = f_d1 if rank[i] < zero else zero
            sub = f_d1 if rank[i] >= f_d1 else zero
            rank[i] = rank[i] + (add - sub)
            rem0[i] = rem0[i] + (add - sub)
        # barycentric coordinates
        for i in range(d + 2):
            bary[i] = zero
        for i in range(d1):
            v = (elevated[i] - rem0[i]) * inv_d1
            p = d - int(rank[i])
            bary[p] = bary[p] + v
            bary[p + 1] = bary[p + 1] - v
        bary[0] = bary[0] + (one + bary[d1])
        for r in range(d1):
            weights[k, r] = bary[r]
        # the simplex's vertices, entered in the table in the order they are met
        for i in range(d1):
            simplex[0, i] = int(rem0[i])
            simplex[1, i] = int(rank[i])
        for r in range(d1):
            for i in range(d):
                # canonical simplex: vertex r adds r to coordinates of rank <= d - r, r - (d + 1) to the others
                key[i] = simplex[0, i] + (r if simplex[1, i] <= d - r else r - d1)
            w0, w1 = _pack(key)
            slot = _slot(table, w0, w1)
            e = (table[slot, 1] >> 32) - 1
            if e == -1:  # a new lattice point: numbered in the order points are first met, as in pydensecrf
                e = filled
                keys[e] = key
                table[slot, 0] = w0
                table[slot, 1] = w1 | ((e + 1) << 32)
                filled += 1
                if 2 * filled > table.shape[0]:
                    table = _grown(table, keys, filled)
            offset[k, r] = e

    # Blur neighbours along each axis j: n1 = key - 1 + (d + 1) e_j, n2 = key + 1 - (d + 1) e_j (e_d = 0). n2 of
    # n1(p) is p again, so one lookup per point and axis fills both.
    m = filled
    neighbors = np.full((d1, m, 2), -1, np.int32)
    n1 = np.empty(d, np.int16)
    for j in range(d1):
        for i in range(m):
            for c in range(d):
                n1[c] = keys[i, c] - 1
            if j < d:
                n1[j] = keys[i, j] + d
            w0, w1 = _pack(n1)
            q = (table[_slot(table, w0, w1), 1] >> 32) - 1
            neighbors[j, i, 0] = q
            if q >= 0:
                neighbors[j, q, 1] = i
    return offset, weights, neighbors


@njit(cache=True)
def _filter(offset, weights, neighbors, norm, values_in, weight, out):
    """out += weight * norm * L(norm * values_in) for each row of ``values_in`` ((K, N) float32), L being
    pydensecrf's ``seqCompute`` (``norm``: (N,) float32, its symmetric normalisation; ones for none). Channels are
    independent in ``seqCompute``, so they are filtered one after another."""
    for c in range(values_in.shape[0]):
        _filter_channel(offset, weights, neighbors, norm, values_in[c], weight, out[c])


@njit(cache=True)
def _filter_channel(offset, weights, neighbors, norm, v, weight, out):
    n = v.shape[0]
    d1 = offset.shape[1]
    m = neighbors.shape[1]
    values = np.zeros(m + 2, np.float32)
    new_values = np.zeros(m + 2, np.float32)
    for i in range(n):
        x = v[i] * norm[i]
        for j in range(d1):
            o = offset[i, j] + 1
            values[o] = values[o] + weights[i, j] * x
    for j in range(d1):
        for i in range(m):
            a = values[neighbors[j, i, 0] + 1]
            b = values[neighbors[j, i, 1] + 1]
            # C++: old + 0.5 * (n1 + n2), the float sum promoted to double by the double literal
            new_values[i + 1] = np.float32(np.float64(values[i + 1]) + 0.5 * np.float64(a + b))
        values, new_values = new_values, values
    alpha = np.float32(1.0) / (np.float32(1.0) + np.float32(2.0 ** -(d1 - 1)))
    for i in range(n):
        acc = np.float32(0.0)
        for j in range(d1):
            acc = acc + weights[i, j] * values[offset[i, j] + 1] * alpha
        out[i] = out[i] + weight * (acc * norm[i])


def mean_field(kernels: list[tuple[Lattice, float]], neg_fg: np.ndarray, neg_bg: np.ndarray, iters: int,
               stop_at_fixed_point: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean-field inference of K independent two-label dense CRFs that share two kernels (one image, K masks).

    Each iteration is pydensecrf's ``stepInference`` for two labels with Q_bg = 1 - Q_fg: message =
    filter(Q_fg) (both kernels, as :func:`potts_messages`), then ``expAndNormalize`` of
    (-U_fg + message, -U_bg + filter(1) - message) in float32. Slicing the filtered values, the update and the
    splatting of the new Q for the next iteration run in one pass over the pixels (the lattice tables are read
    once per iteration instead of twice).

    A channel stops when an iteration leaves its Q unchanged to the bit (``stop_at_fixed_point``): every later
    iteration would repeat the same values, so the result is exactly that of all ``iters`` iterations.

    Args:
        kernels: two (lattice, weight) pairs, in the order pydensecrf adds them.
        neg_fg, neg_bg: (K, N) float32 negated unary energies of foreground and background.
        iters: mean-field iterations.

    Returns:
        ``(q_fg, q_bg, iterations)``: (K, N) float32 each, and the (K,) iterations each channel ran.
    """
    if len(kernels) != 2:
        raise ValueError(f"mean_field takes the CRF's two kernels (Gaussian, bilateral), got {len(kernels)}")
    (l1, k1), (l2, k2) = kernels
    neg_fg = np.ascontiguousarray(neg_fg, np.float32)
    neg_bg = np.ascontiguousarray(neg_bg, np.float32)
    ones = potts_messages(kernels, np.ones((1, neg_fg.shape[1]), np.float32))[0]
    q_fg, q_bg = np.empty_like(neg_fg), np.empty_like(neg_bg)
    counts = _mean_field(l1.offset, l1.weights, l1.neighbors, l1.norm, np.float32(k1),
                         l2.offset, l2.weights, l2.neighbors, l2.norm, np.float32(k2),
                         neg_fg, neg_bg, ones, iters, stop_at_fixed_point, q_fg, q_bg)
    return q_fg, q_bg, counts


@njit(cache=True, inline="always")
def _normalized_pair(a, b):
    # pydensecrf's expAndNormalize for two labels, in its order of float32 operations. The larger one is the
    # maximum subtracted: its exponential is exp(0) = 1 exactly, so only the other one is computed.
    one = np.float32(1.0)
    if a >= b:
        e_a, e_b = one, np.exp(b - a)
    else:
        e_a, e_b = np.exp(a - b), one
    total = e_b + e_a
    return e_a / total, e_b / total


@njit(cache=True, inline="always")
def _splat(offset, weights, i, x, values, c):
    """Add pixel i's value x to its simplex's vertices in channel c, as seqCompute's splat does."""
    for j in range(offset.shape[1]):
        o = offset[i, j] + 1
        values[o, c] = values[o, c] + weights[i, j] * x


@njit(cache=True, inline="always")
def _slice(offset, weights, i, values, c, alpha):
    """Pixel i's filtered value in channel c, as seqCompute's slice computes it."""
    acc = np.float32(0.0)
    for j in range(offset.shape[1]):
        acc = acc + weights[i, j] * values[offset[i, j] + 1, c] * alpha
    return acc


@njit(cache=True)
def _blur(neighbors, values, scratch):
    """pydensecrf's blur along every axis of each channel (column) of ``values`` ((M + 2, K)); the result is left
    in ``values`` (``scratch`` is overwritten)."""
    d1, m = neighbors.shape[0], neighbors.shape[1]
    n_channels = values.shape[1]
    src, dst = values, scratch
    for j in range(d1):
        for i in range(m):
            a = neighbors[j, i, 0] + 1
            b = neighbors[j, i, 1] + 1
            for c in range(n_channels):
                dst[i + 1, c] = np.float32(np.float64(src[i + 1, c]) + 0.5 * np.float64(src[a, c] + src[b, c]))
        src, dst = dst, src
    if d1 % 2 == 1:
        values[:] = scratch


@njit(cache=True)
def _mean_field(o1, w1, n1, norm1, k1, o2, w2, n2, norm2, k2, neg_fg, neg_bg, ones, iters, stop, q_fg, q_bg):
    """All K channels in one pass over the pixels per iteration: each pixel's lattice vertices are read once
    for every channel. A channel that reached its fixed point is left as it is."""
    n_channels, n = neg_fg.shape
    alpha1 = np.float32(1.0) / (np.float32(1.0) + np.float32(2.0 ** -(o1.shape[1] - 1)))
    alpha2 = np.float32(1.0) / (np.float32(1.0) + np.float32(2.0 ** -(o2.shape[1] - 1)))
    a1 = np.zeros((n1.shape[1] + 2, n_channels), np.float32)
    b1 = np.zeros_like(a1)
    a2 = np.zeros((n2.shape[1] + 2, n_channels), np.float32)
    b2 = np.zeros_like(a2)
    zero = np.float32(0.0)
    counts = np.zeros(n_channels, np.int64)
    active = np.ones(n_channels, np.bool_)
    changed = np.zeros(n_channels, np.bool_)
    for i in range(n):
        for c in range(n_channels):
            f, g = _normalized_pair(neg_fg[c, i], neg_bg[c, i])
            q_fg[c, i] = f
            q_bg[c, i] = g
            if iters > 0:
                _splat(o1, w1, i, f * norm1[i], a1, c)
                _splat(o2, w2, i, f * norm2[i], a2, c)
    for it in range(iters):
        _blur(n1, a1, b1)
        _blur(n2, a2, b2)
        b1[:] = 0.0
        b2[:] = 0.0
        last = it + 1 == iters
        changed[:] = False
        for i in range(n):
            for c in range(n_channels):
                if not active[c]:
                    continue
                message = zero + k1 * (_slice(o1, w1, i, a1, c, alpha1) * norm1[i])
                message = message + k2 * (_slice(o2, w2, i, a2, c, alpha2) * norm2[i])
                f, g = _normalized_pair(neg_fg[c, i] + message, neg_bg[c, i] + (ones[i] - message))
                if f != q_fg[c, i]:
                    changed[c] = True
                q_fg[c, i] = f
                q_bg[c, i] = g
                if not last:  # the new Q is splatted for the next iteration in the same pass
                    _splat(o1, w1, i, f * norm1[i], b1, c)
                    _splat(o2, w2, i, f * norm2[i], b2, c)
        a1, b1 = b1, a1
        a2, b2 = b2, a2
        for c in range(n_channels):
            if active[c]:
                counts[c] = it + 1
                if stop and not changed[c]:
                    active[c] = False
        if not active.any():
            break
    return counts
