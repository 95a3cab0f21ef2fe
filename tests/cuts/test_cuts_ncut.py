"""NCut: Fiedler solvers agree with dense generalized eigh; MaskCut bipartition rules on crafted cases."""

import numpy as np
import pytest
import scipy.linalg
import torch

from cuts3d.cuts.affinity import binarize, cosine_similarity, mask_out
from cuts3d.cuts.ncut import bipartition, count_fg_corners, fiedler_vector, seed_component
from cuts3d.synthetic import make_scene


def _scene_affinity(seed: int = 0, grid: int = 20) -> np.ndarray:
    scene = make_scene(seed, grid=grid, channels=32)
    f = torch.from_numpy(scene.features).reshape(32, -1)
    return binarize(cosine_similarity(f), 0.15, 1e-5)


@pytest.mark.parametrize("solver", ["lanczos", "lobpcg", "torch"])
def test_solvers_match_dense_generalized_eigh(solver):
    w = _scene_affinity()
    d = w.sum(1)
    _, vecs = scipy.linalg.eigh(np.diag(d) - w, np.diag(d), subset_by_index=[1, 2])
    ref = vecs[:, 0]
    x = fiedler_vector(w, solver)
    # Same D-normalisation as eigh, so the vectors agree up to sign.
    assert abs(x @ (d * x) - 1.0) < 1e-8
    sign = np.sign(x @ (d * ref))
    np.testing.assert_allclose(sign * x, ref, atol=1e-5)


def test_dense_solver_is_scipy_eigh_exactly():
    w = _scene_affinity(1)
    d = w.sum(1)
    _, vecs = scipy.linalg.eigh(np.diag(d) - w, np.diag(d), subset_by_index=[1, 2])
    np.testing.assert_array_equal(fiedler_vector(w, "dense"), vecs[:, 0])


def test_small_graphs_use_exact_solution():
    w = np.array([[1.0, 0.2], [0.2, 1.0]])
    x = fiedler_vector(w, "lanczos")
    d = w.sum(1)
    # Generalized eigenvector of a 2-node graph: orthogonal to 1 in the D inner product.
    assert abs(x @ d) < 1e-12 and abs(x @ (d * x) - 1) < 1e-12
    w3 = np.ones((3, 3))
    w3[0, 1] = w3[1, 0] = 1e-5
    assert fiedler_vector(w3, "lobpcg").shape == (3,)


def test_reverse_rule_three_corners():
    # Large x on the border (all 4 corners) and small inside: B = border, corners >= 3 -> reverse.
    grid = (5, 5)
    x = np.full(grid, 1.0)
    x[1:4, 1:4] = -2.0
    fg, xo, seed = bipartition(x.ravel(), grid)
    assert count_fg_corners((x > x.mean())) == 4
    assert fg[1:4, 1:4].all() and fg.sum() == 9
    np.testing.assert_array_equal(xo, -x.ravel())
    assert fg.flat[seed]


def test_reverse_rule_seed_outside():
    # B = {x > mean} is a big blob; |x| peaks at a strongly negative patch outside it -> reverse.
    grid = (4, 6)
    x = np.full(grid, 0.5)
    x[:, :2] = -0.2
    x[0, 1] = -3.0
    fg, xo, seed = bipartition(x.ravel(), grid)
    assert not fg[:, 2:].any() and fg[:, :2].all()
    assert seed == np.ravel_multi_index((0, 1), grid)


def test_no_reverse_when_seed_inside_and_few_corners():
    grid = (6, 6)
    x = np.full(grid, -0.1)
    x[2:4, 2:5] = 1.0
    fg, xo, seed = bipartition(x.ravel(), grid)
    np.testing.assert_array_equal(xo, x.ravel())
    assert fg.sum() == 6 and fg.flat[seed]


def test_seed_component_is_4_connected():
    fg = np.zeros((6, 6), dtype=bool)
    fg[0:2, 0:2] = True  # component holding the seed
    fg[2, 2] = True  # touches only diagonally: another component
    fg[4:6, 4:6] = True
    comp = seed_component(fg, 0)
    assert comp.sum() == 4 and comp[0:2, 0:2].all() and not comp[2, 2]
    assert not seed_component(fg, np.ravel_multi_index((3, 0), (6, 6))).any()


def test_mask_out_equals_zeroed_features():
    rng = np.random.default_rng(0)
    f = torch.from_numpy(rng.standard_normal((16, 30)).astype(np.float32))
    removed = np.zeros(30, dtype=bool)
    removed[[1, 5, 7]] = True
    zeroed = f.clone()
    zeroed[:, torch.from_numpy(removed)] = 0
    torch.testing.assert_close(mask_out(cosine_similarity(f), removed), cosine_similarity(zeroed))


def test_float32_lanczos_matches_dense_eigh_to_float32_accuracy():
    w = _scene_affinity(2, grid=24)
    d = w.sum(1)
    _, vecs = scipy.linalg.eigh(np.diag(d) - w, np.diag(d), subset_by_index=[1, 2])
    ref = vecs[:, 0]
    x = fiedler_vector(w.astype(np.float32), "lanczos")
    assert x.dtype == np.float64 and abs(x @ (d * x) - 1.0) < 1e-8
    sign = np.sign(x @ (d * ref))
    np.testing.assert_allclose(sign * x, ref, atol=1e-4 * np.abs(ref).max())
    grid = (24, 24)
    np.testing.assert_array_equal(bipartition(x, grid)[0], bipartition(ref, grid)[0])


def _features(seed: int, n: int = 300, c: int = 16) -> torch.Tensor:
    f = torch.from_numpy(np.random.default_rng(seed).standard_normal((c, n)).astype(np.float32))
    f[:, :40] += 3.0  # a block of similar patches: similarities on both sides of tau
    return f


@pytest.mark.parametrize("variant", ["weighted", "binary", "threshold", "exponent"])
def test_in_place_graph_equals_the_torch_graph(variant):
    from cuts3d.cuts.affinity import RoundGraph, affinity_graph, similarity_matrix, weighted
    from cuts3d.cuts.spatial_importance import edge_exponents, sharpened_threshold

    f = _features(3)
    s = similarity_matrix(f)
    torch.testing.assert_close(torch.from_numpy(s), cosine_similarity(f), atol=1e-6, rtol=0)
    node_e = np.random.default_rng(4).uniform(0.6, 1.0, f.shape[1])
    kwargs = {"threshold": sharpened_threshold(node_e, 0.15, "pair_mean", "cpu")} if variant == "threshold" else {}
    if variant == "exponent":
        kwargs = {"exponent": edge_exponents(node_e, "pair_mean", "cpu")}
    removed = np.zeros(f.shape[1], dtype=bool)
    removed[[0, 5, 50, 299]] = True

    def expected(rm: np.ndarray) -> np.ndarray:
        masked = mask_out(torch.from_numpy(s), rm)
        if variant == "binary":
            return binarize(masked, 0.15, 1e-5, kwargs.get("threshold"))
        return weighted(masked, 0.15, 1e-5, **kwargs)

    w = affinity_graph(s.copy(), 0.15, 1e-5, binary=variant == "binary", **kwargs)
    assert w.dtype == np.float32
    # the float64 graph holds float32 values (eps aside, which float32 rounds), so compare as float32
    np.testing.assert_array_equal(w, expected(np.zeros_like(removed)).astype(np.float32))
    graph = RoundGraph(w, 1e-5)
    graph.remove(removed)
    np.testing.assert_array_equal(graph.dense(), expected(removed).astype(np.float32))


def test_round_graph_products_and_degrees_equal_the_written_graph():
    from cuts3d.cuts.affinity import RoundGraph, affinity_graph, similarity_matrix

    w = affinity_graph(similarity_matrix(_features(6)), 0.15, 1e-5)
    graph = RoundGraph(w.copy(), 1e-5)
    v = np.random.default_rng(7).standard_normal(w.shape[0])
    np.testing.assert_allclose(graph.matvec(v), w.astype(np.float64) @ v, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(graph.degrees(), w.sum(axis=1, dtype=np.float64))
    removed = np.zeros(w.shape[0], dtype=bool)
    for patches in ([0, 5, 50], [5, 7, 120, 299]):  # the second round repeats a removed patch
        removed[patches] = True
        graph.remove(removed)
        dense = graph.dense().astype(np.float64)
        assert graph.keep.sum() == (~removed).sum() and (dense[removed] == np.float32(1e-5)).all()
        np.testing.assert_allclose(graph.matvec(v), dense @ v, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(graph.degrees(), dense.sum(axis=1), rtol=1e-12)
        assert not graph.is_constant()
    np.testing.assert_array_equal(graph.w, w)  # the built graph itself is never written


def test_round_graph_constant_and_solver_paths():
    from cuts3d.cuts.affinity import RoundGraph

    n = 100
    assert RoundGraph(np.full((n, n), 0.5, np.float32), 1e-5).is_constant()
    w = np.full((n, n), 0.5, np.float32)
    w[:10, :10] = np.float32(1e-5)
    graph = RoundGraph(w, 1e-5)
    assert not graph.is_constant()
    graph.remove(np.arange(n) >= 10)  # what is left has eps edges only: no partition
    assert graph.is_constant()
    # every solver sees the same graph: lanczos through the lazy products, dense through graph.dense()
    w = _scene_affinity(3, grid=12).astype(np.float32)
    graph = RoundGraph(w, 1e-5)
    graph.remove(np.arange(w.shape[0]) % 7 == 0)
    ref = fiedler_vector(graph.dense().astype(np.float64), "dense")
    x = fiedler_vector(graph, "lanczos")
    np.testing.assert_allclose(np.sign(x @ ref) * x, ref, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_array_equal(fiedler_vector(graph, "dense"), ref)


def test_similarity_matrix_takes_features_that_require_grad():
    from cuts3d.cuts.affinity import similarity_matrix

    f = _features(5).requires_grad_()
    np.testing.assert_array_equal(similarity_matrix(f), similarity_matrix(f.detach()))
