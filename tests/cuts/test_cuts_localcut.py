"""LocalCut (kNN graph + Dinic min-cut), Spatial Confidence, depth grid, Spatial Importance."""

import numpy as np
import pytest

from cuts3d.cuts.confidence import spatial_confidence
from cuts3d.cuts.localcut import knn_graph, localcut
from cuts3d.cuts.pointcloud import depth_to_grid, unproject
from cuts3d.cuts.spatial_importance import sharpened_threshold, spatial_importance


def _two_surfaces(gap: float, grid: int = 12) -> np.ndarray:
    z = np.zeros((grid, grid))
    z[:, grid // 2 :] = gap
    return unproject(z)


def test_knn_graph_is_symmetric_and_unique():
    pts = _two_surfaces(0.5)
    g = knn_graph(pts, 6)
    assert (g.i < g.j).all()
    assert len(set(zip(g.i.tolist(), g.j.tolist()))) == len(g.i)
    np.testing.assert_allclose(g.dist, np.linalg.norm(pts[g.i] - pts[g.j], axis=1))


def test_localcut_splits_surfaces_at_depth_jump():
    grid = 12
    pts = _two_surfaces(0.5, grid)
    g = knn_graph(pts, 10)
    side = localcut(g, source=0, sink=grid * grid - 1, tau=0.115).reshape(grid, grid)
    assert side[:, : grid // 2].all() and not side[:, grid // 2 :].any()


def test_localcut_min_cut_through_bottleneck():
    # Two flat blobs joined by a one-patch-wide bridge: the min cut goes through the bridge.
    z = np.ones((9, 19))
    z[:, :8] = 0.0
    z[:, 11:] = 0.0
    z[4, 8:11] = 0.0
    pts = unproject(z)
    keep = np.flatnonzero(z.ravel() == 0.0)
    g = knn_graph(pts[keep], 4)
    src = int(np.flatnonzero(keep == np.ravel_multi_index((4, 0), z.shape))[0])
    snk = int(np.flatnonzero(keep == np.ravel_multi_index((4, 18), z.shape))[0])
    side = np.zeros(z.size, dtype=bool)
    side[keep[localcut(g, src, snk, tau=0.2, trivial="literal")]] = True
    side = side.reshape(z.shape)
    assert side[:, :8].all() and not side[:, 11:].any()


def test_trivial_cut_rules():
    # One connected flat surface: any s-t cut just isolates a terminal.
    pts = unproject(np.zeros((8, 8)))
    g = knn_graph(pts, 8)
    whole = localcut(g, 0, 63, tau=0.3, trivial="component")
    assert whole.all()
    literal = localcut(g, 0, 63, tau=0.3, trivial="literal")
    assert literal[0] and not literal[63]
    # The literal source side is a minimum cut: as cheap as cutting off a terminal's own edges.
    crossing = int((literal[g.i] != literal[g.j]).sum())
    degree = np.bincount(np.concatenate([g.i, g.j]), minlength=64)
    assert crossing == min(degree[0], degree[63])
    largest = localcut(g, 0, 63, tau=0.3, trivial="max_side")
    assert largest[0] and not largest[63] and largest.sum() >= literal.sum()
    assert int((largest[g.i] != largest[g.j]).sum()) == crossing  # also a minimum cut
    # The literal cut isolated the source alone (a tie); the guard returns the whole component instead.
    assert literal.sum() == 1
    assert localcut(g, 0, 63, tau=0.3, trivial="guard").all()


def _scipy_localcut(graph, source, sink, tau, capacity, trivial):
    """The cut as scipy's Dinic gives it (sparse capacity matrix, maximum_flow, residual BFS)."""
    import scipy.sparse
    from scipy.sparse.csgraph import breadth_first_order, connected_components, maximum_flow

    from cuts3d.cuts.localcut import _capacities

    i, j, cap = _capacities(graph, tau, capacity)
    c = scipy.sparse.csr_matrix((np.concatenate([cap, cap]).astype(np.int32), (np.concatenate([i, j]), np.concatenate([j, i]))),
                                shape=(graph.n, graph.n))
    _, labels = connected_components(c, directed=False)
    component = labels == labels[source]
    if source == sink or labels[source] != labels[sink]:
        return component
    flow = maximum_flow(c, source, sink, method="dinic")
    degree = np.asarray(c.sum(axis=1)).ravel()
    if trivial == "component" and flow.flow_value >= min(degree[source], degree[sink]):
        return component
    if trivial == "guard" and flow.flow_value >= degree[source]:
        return component
    residual = (c - flow.flow).tocsr()
    residual.data = (residual.data > 0).astype(np.int8)
    residual.eliminate_zeros()
    if trivial == "max_side":
        to_sink = breadth_first_order(residual.T.tocsr(), sink, directed=True, return_predecessors=False)
        side = component.copy()
        side[to_sink] = False
        return side
    side = np.zeros(graph.n, dtype=bool)
    side[breadth_first_order(residual, source, directed=True, return_predecessors=False)] = True
    return side


@pytest.mark.parametrize("capacity", ["unit", "gaussian"])
def test_localcut_equals_scipys_dinic(capacity):
    # random rough 3D surfaces, every trivial-cut rule, thresholds from disconnected to dense
    rng = np.random.default_rng(0)
    for trial in range(12):
        z = rng.random((14, 14)) * rng.choice([0.05, 0.3, 1.0]) + (np.arange(14) > rng.integers(3, 11)) * rng.random()
        pts = unproject(z)
        g = knn_graph(pts, int(rng.integers(3, 12)))
        s, t = (int(v) for v in rng.choice(len(pts), 2, replace=False))
        for tau in (0.05, 0.1, 0.2, 0.5):
            for rule in ("component", "literal", "max_side", "guard"):
                np.testing.assert_array_equal(localcut(g, s, t, tau, capacity, rule), _scipy_localcut(g, s, t, tau, capacity, rule))
    assert localcut(g, s, s, 0.2, capacity, "literal").sum() >= 1  # source == sink: the component


def test_gaussian_capacity_runs_and_contains_source():
    g = knn_graph(_two_surfaces(0.05), 10)
    side = localcut(g, 0, 143, tau=0.115, capacity="gaussian")
    assert side[0]


def test_spatial_confidence_levels_and_floor():
    T = 6
    cuts = np.zeros((T, 4, 4), dtype=bool)
    cuts[:, :2, :2] = True  # always in
    cuts[:4, 2, 0] = True  # 4 of 6
    cuts[:1, 3, 3] = True  # 1 of 6 -> lifted to the floor
    inst = cuts[0] & cuts[T - 1]
    sc = spatial_confidence(cuts, inst, floor=0.5)
    assert sc.dtype == np.float32
    assert (sc[:2, :2] == 1).all()
    assert sc[2, 0] == pytest.approx(4 / 6)
    assert sc[3, 3] == pytest.approx(0.5)
    assert sc[0, 3] == 1.0  # outside every cut: confidence 1 (loss unchanged there)


def test_depth_to_grid_pooling_and_missing_values():
    depth = np.arange(16, dtype=float).reshape(4, 4).repeat(4, 0).repeat(4, 1)
    z, ok = depth_to_grid(depth, (4, 4), "median")
    assert ok and z.min() == 0 and z.max() == 1
    np.testing.assert_allclose(z, (np.arange(16).reshape(4, 4)) / 15)
    depth[:4, :4] = np.nan
    depth[4:8, 4:8] = np.inf
    z2, ok2 = depth_to_grid(depth, (4, 4), "avg")
    assert ok2 and np.isfinite(z2).all()
    for bad in (np.full((8, 8), 3.0), np.full((8, 8), np.nan)):
        z3, ok3 = depth_to_grid(bad, (4, 4), "center")
        assert not ok3 and (z3 == 0).all()


def test_median_pooling_keeps_borders_crisp():
    depth = np.zeros((16, 16))
    depth[:, 5:] = 1.0  # the border cuts the second patch column 1:3
    z_med, _ = depth_to_grid(depth, (4, 4), "median")
    z_avg, _ = depth_to_grid(depth, (4, 4), "avg")
    assert set(np.unique(z_med)) <= {0.0, 1.0}
    assert 0 < z_avg[0, 1] < 1  # average pooling bridges the two surfaces


def test_spatial_importance_peaks_at_depth_edges():
    z = np.zeros((10, 10))
    z[:, 5:] = 1.0
    s = spatial_importance(z, sigma=1.0, beta=0.6)
    assert s.min() == pytest.approx(0.6) and s.max() == pytest.approx(1.0)
    assert s[:, 4:6].mean() > s[:, [0, 9]].mean()
    assert (spatial_importance(np.ones((5, 5)), 1.0, 0.6) == 1).all()


def test_sharpened_threshold_equals_power_then_binarize():
    rng = np.random.default_rng(0)
    imp = rng.uniform(0.6, 1.0, 50)
    sim = rng.uniform(0.0, 1.0, (50, 50))
    sim = (sim + sim.T) / 2
    thr = sharpened_threshold(imp, 0.15, "pair_mean", "cpu").numpy()
    e = (imp[:, None] + imp[None, :]) / 2
    np.testing.assert_array_equal(sim > thr, sim**e > 0.15)
    thr_c = sharpened_threshold(imp, 0.15, "column", "cpu").numpy()
    either = (sim ** imp[None, :] > 0.15) | (sim ** imp[:, None] > 0.15)
    np.testing.assert_array_equal(sim > thr_c, either)
