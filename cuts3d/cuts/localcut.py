"""LocalCut: cutting one instance out of the semantic mask in 3D (paper Sec. 3.2; spec 3.4 and 7.5).

The points of the semantic mask are joined in a k-nearest-neighbour graph whose edge weights are Euclidean
distances; edges longer than tau_knn are removed. An s-t minimum cut, solved as a maximum flow with Dinic's
algorithm (compiled with numba; the cut scipy.sparse.csgraph.maximum_flow gives), separates the source (the
semantically most foreground point, argmax |x|) from the sink; the instance is the source side: the nodes
reachable from s in the residual graph.

With unit capacities the result always lies inside the source's 3D-connected component, which replaces
MaskCut's 2D connected-component step. When the cheapest cut is no cheaper than cutting off a terminal's own
edges there is no 3D border between s and t; ``trivial="component"`` then returns the source's whole
component instead of the source side minus the sink (see :class:`cuts3d.CutConfig`, ``trivial_cut``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy.spatial import cKDTree

# Gaussian capacities are floats; the integer max-flow needs integers, so they are scaled by this and rounded.
_CAPACITY_SCALE = 1000


@dataclass(frozen=True)
class KnnGraph:
    """Undirected kNN graph: edge e joins nodes ``i[e] < j[e]`` at Euclidean distance ``dist[e]``."""

    n: int
    i: np.ndarray
    j: np.ndarray
    dist: np.ndarray


def knn_graph(points: np.ndarray, k: int) -> KnnGraph:
    """Symmetrised k-nearest-neighbour graph (an edge where either endpoint lists the other).

    Args:
        points: (m, 3) float point cloud.
        k: neighbours per point (capped at m - 1).
    """
    m = len(points)
    k = min(k, m - 1)
    if k < 1:
        empty = np.zeros(0, dtype=np.int64)
        return KnnGraph(m, empty, empty, np.zeros(0))
    dist, nbr = cKDTree(points).query(points, k=k + 1)
    src = np.repeat(np.arange(m), k)
    dst = nbr[:, 1:].ravel()
    d = dist[:, 1:].ravel()
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    keep = lo != hi  # duplicate points can list themselves
    code, first = np.unique(lo[keep] * m + hi[keep], return_index=True)
    return KnnGraph(m, code // m, code % m, d[keep][first])


def _capacities(graph: KnnGraph, tau: float, capacity: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges of the graph thresholded at ``tau`` (length <= tau) and their integer capacities."""
    keep = graph.dist <= tau
    i, j, d = graph.i[keep], graph.j[keep], graph.dist[keep]
    if capacity == "unit":
        cap = np.ones(len(d), dtype=np.int64)
    elif capacity == "gaussian":
        cap = np.maximum(1, np.round(_CAPACITY_SCALE * np.exp(-((d / tau) ** 2)))).astype(np.int64)
    else:
        raise ValueError(f"unknown LocalCut capacity {capacity!r}; choose unit or gaussian")
    return i.astype(np.int64), j.astype(np.int64), cap


def localcut(
    graph: KnnGraph,
    source: int,
    sink: int,
    tau: float,
    capacity: str = "unit",
    trivial: str = "component",
) -> np.ndarray:
    """Source side of the minimum s-t cut of the kNN graph thresholded at ``tau``.

    The maximum flow is Dinic's algorithm, compiled (numba). The source side it gives, the nodes reachable from
    s in the residual graph, is the same for every maximum flow (the smallest minimum-cut side), so it is the
    one scipy.sparse.csgraph.maximum_flow gives too (tested against it).

    Args:
        graph: from :func:`knn_graph`.
        source, sink: node indices s and t.
        tau: tau_knn; edges longer than this are removed.
        capacity: ``"unit"`` or ``"gaussian"`` (exp(-w^2 / tau^2)).
        trivial: ``"component"`` or ``"literal"``, see the module docstring.

    Returns:
        (m,) bool, True for the instance (always contains ``source``).
    """
    if trivial not in ("component", "literal", "max_side", "guard"):
        raise ValueError(f"unknown trivial-cut rule {trivial!r}; choose guard, literal, max_side or component")
    i, j, cap = _capacities(graph, tau, capacity)
    component, flow, from_source, to_sink, degree = _min_cut(graph.n, i, j, cap, source, sink)
    if source == sink or not component[sink]:
        return component
    if trivial == "component" and flow >= min(degree[source], degree[sink]):
        return component
    if trivial == "guard" and flow >= degree[source]:
        # A minimum cut that costs the source's own edges cuts the source off and nothing else: there is
        # no 3D border between s and t, so the instance is the source's whole component.
        return component
    if trivial == "max_side":
        # The largest source side of a minimum cut: every node of the component that cannot reach t in the
        # residual graph.
        return component & ~to_sink
    return from_source


@njit(cache=True)
def _min_cut(n, ei, ej, cap, source, sink):
    """Maximum s-t flow on the undirected graph (edges ei[e] - ej[e] of capacity cap[e] each way).

    Returns:
        ``(component, flow, from_source, to_sink, degree)``: the source's connected component (bool (n,)), the
        flow value (0 when s and t are not connected), the nodes reachable from s and those that reach t in the
        residual graph, and each node's summed capacity.
    """
    m = ei.shape[0]
    # arcs 2e (ei -> ej) and 2e + 1 (ej -> ei), each the other's reverse, in CSR order by tail
    head = np.empty(2 * m, np.int64)
    residual = np.empty(2 * m, np.int64)
    degree = np.zeros(n, np.int64)
    count = np.zeros(n + 1, np.int64)
    for e in range(m):
        head[2 * e], head[2 * e + 1] = ej[e], ei[e]
        residual[2 * e] = residual[2 * e + 1] = cap[e]
        degree[ei[e]] += cap[e]
        degree[ej[e]] += cap[e]
        count[ei[e] + 1] += 1
        count[ej[e] + 1] += 1
    for v in range(n):
        count[v + 1] += count[v]
    start = count.copy()
    arcs = np.empty(2 * m, np.int64)
    fill = count[:n].copy()
    for e in range(m):
        arcs[fill[ei[e]]] = 2 * e
        fill[ei[e]] += 1
        arcs[fill[ej[e]]] = 2 * e + 1
        fill[ej[e]] += 1

    component = _reach(n, start, arcs, head, residual, source, False)
    flow = 0
    if source != sink and component[sink]:
        level = np.empty(n, np.int64)
        queue = np.empty(n, np.int64)
        pointer = np.empty(n, np.int64)
        path = np.empty(n, np.int64)  # arcs of the current DFS path
        while True:
            _levels(start, arcs, head, residual, source, False, level, queue)
            if level[sink] < 0:
                break
            # blocking flow: depth-first augmenting paths along increasing levels, with per-node arc pointers
            pointer[:] = start[:n]
            while True:
                depth = 0
                u = source
                found = False
                while True:
                    if u == sink:
                        found = True
                        break
                    advanced = False
                    while pointer[u] < start[u + 1]:
                        a = arcs[pointer[u]]
                        v = head[a]
                        if residual[a] > 0 and level[v] == level[u] + 1:
                            path[depth] = a
                            depth += 1
                            u = v
                            advanced = True
                            break
                        pointer[u] += 1
                    if not advanced:
                        if depth == 0:
                            break
                        level[u] = -1  # dead end: no augmenting path through u in this phase
                        depth -= 1
                        a = path[depth]
                        u = head[a ^ 1]
                        pointer[u] += 1
                if not found:
                    break
                push = residual[path[0]]
                for t in range(1, depth):
                    push = min(push, residual[path[t]])
                for t in range(depth):
                    residual[path[t]] -= push
                    residual[path[t] ^ 1] += push
                flow += push
    from_source = _reach(n, start, arcs, head, residual, source, False)
    to_sink = _reach(n, start, arcs, head, residual, sink, True)
    return component, flow, from_source, to_sink, degree


@njit(cache=True)
def _reach(n, start, arcs, head, residual, root, backward):
    """Nodes reachable from ``root`` along arcs with residual capacity (``backward``: nodes that reach it)."""
    level = np.empty(n, np.int64)
    _levels(start, arcs, head, residual, root, backward, level, np.empty(n, np.int64))
    return level >= 0


@njit(cache=True)
def _levels(start, arcs, head, residual, root, backward, level, queue):
    """Breadth-first distance of every node from ``root`` along arcs with residual capacity, -1 where none
    (``backward``: along reversed arcs, i.e. the distance to ``root``), into ``level``."""
    level[:] = -1
    level[root] = 0
    queue[0] = root
    lo, hi = 0, 1
    while lo < hi:
        u = queue[lo]
        lo += 1
        for k in range(start[u], start[u + 1]):
            a = arcs[k]
            v = head[a]
            # forward: arc u -> v usable; backward: v reaches u when the reverse arc v -> u is usable
            if level[v] < 0 and residual[a ^ 1 if backward else a] > 0:
                level[v] = level[u] + 1
                queue[hi] = v
                hi += 1
