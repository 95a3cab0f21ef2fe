"""LocalCut: cutting one instance out of the semantic mask in 3D (paper Sec. 3.2; spec 3.4 and 7.5).

The points of the semantic mask are joined in a k-nearest-neighbour graph whose edge weights are Euclidean
distances; edges longer than tau_knn are removed. An s-t minimum cut, solved as a maximum flow with Dinic's
algorithm (scipy.sparse.csgraph.maximum_flow), separates the source (the semantically most foreground point,
argmax |x|) from the sink; the instance is the source side: the nodes reachable from s in the residual graph.

With unit capacities the result always lies inside the source's 3D-connected component, which replaces
MaskCut's 2D connected-component step. When the cheapest cut is no cheaper than cutting off a terminal's own
edges there is no 3D border between s and t; ``trivial="component"`` then returns the source's whole
component instead of the source side minus the sink (see :class:`cuts3d.CutConfig`, ``trivial_cut``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import breadth_first_order, connected_components, maximum_flow
from scipy.spatial import cKDTree

# Gaussian capacities are floats; Dinic in scipy needs integers, so they are scaled by this and rounded.
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


def _capacity_matrix(graph: KnnGraph, tau: float, capacity: str) -> scipy.sparse.csr_matrix:
    keep = graph.dist <= tau
    i, j, d = graph.i[keep], graph.j[keep], graph.dist[keep]
    if capacity == "unit":
        cap = np.ones(len(d), dtype=np.int32)
    elif capacity == "gaussian":
        cap = np.maximum(1, np.round(_CAPACITY_SCALE * np.exp(-((d / tau) ** 2)))).astype(np.int32)
    else:
        raise ValueError(f"unknown LocalCut capacity {capacity!r}; choose unit or gaussian")
    rows = np.concatenate([i, j])
    cols = np.concatenate([j, i])
    return scipy.sparse.csr_matrix((np.concatenate([cap, cap]), (rows, cols)), shape=(graph.n, graph.n))


def localcut(
    graph: KnnGraph,
    source: int,
    sink: int,
    tau: float,
    capacity: str = "unit",
    trivial: str = "component",
) -> np.ndarray:
    """Source side of the minimum s-t cut of the kNN graph thresholded at ``tau``.

    Args:
        graph: from :func:`knn_graph`.
        source, sink: node indices s and t.
        tau: tau_knn; edges longer than this are removed.
        capacity: ``"unit"`` or ``"gaussian"`` (exp(-w^2 / tau^2)).
        trivial: ``"component"`` or ``"literal"``, see the module docstring.

    Returns:
        (m,) bool, True for the instance (always contains ``source``).
    """
    cap = _capacity_matrix(graph, tau, capacity)
    _, labels = connected_components(cap, directed=False)
    component = labels == labels[source]
    if source == sink or labels[source] != labels[sink]:
        return component
    flow = maximum_flow(cap, source, sink, method="dinic")
    if trivial == "component":
        degree = np.asarray(cap.sum(axis=1)).ravel()
        if flow.flow_value >= min(degree[source], degree[sink]):
            return component
    elif trivial not in ("literal", "max_side", "guard"):
        raise ValueError(f"unknown trivial-cut rule {trivial!r}; choose guard, literal, max_side or component")
    residual = (cap - flow.flow).tocsr()
    residual.data = (residual.data > 0).astype(np.int8)
    residual.eliminate_zeros()
    if trivial == "guard":
        degree = np.asarray(cap.sum(axis=1)).ravel()
        # A minimum cut that costs the source's own edges cuts the source off and nothing else: there is
        # no 3D border between s and t, so the instance is the source's whole component.
        if flow.flow_value >= degree[source]:
            return component
        trivial = "literal"
    if trivial == "max_side":
        # The largest source side of a minimum cut: every node that cannot reach t in the residual graph.
        to_sink = breadth_first_order(residual.T.tocsr(), sink, directed=True, return_predecessors=False)
        side = component.copy()
        side[to_sink] = False
        return side
    reached = breadth_first_order(residual, source, directed=True, return_predecessors=False)
    side = np.zeros(graph.n, dtype=bool)
    side[reached] = True
    return side
