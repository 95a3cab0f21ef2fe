"""Point-cloud depth scale (log vs min-max), Spatial Importance forms, and the 3D front fraction of masks."""

import dataclasses

import numpy as np
import pytest
import torch

from cuts3d import CutConfig, segment
from cuts3d.cuts.affinity import binarize, weighted
from cuts3d.cuts.foreground import front_fraction
from cuts3d.cuts.pointcloud import depth_to_grid, log_depth
from cuts3d.cuts.spatial_importance import edge_exponents, si_exponents, spatial_importance
from cuts3d.depth.models import disparity_to_depth
from cuts3d.masks.filters import mask_iou
from cuts3d.synthetic import touching_pair_scene

FAST = dict(crf=False)


def _with_backdrop(depth: np.ndarray, rows: int, ratio: float) -> np.ndarray:
    far = depth.copy()
    far[:rows] = ratio * depth.max()
    return far


def test_log_depth_is_scale_invariant_and_ignores_the_farthest_pixel():
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 3.0, (40, 40))
    z, ok = depth_to_grid(depth, (10, 10), "median", "log", 1.0)
    z_scaled, _ = depth_to_grid(7.5 * depth, (10, 10), "median", "log", 1.0)
    assert ok
    np.testing.assert_allclose(z - z.mean(), z_scaled - z_scaled.mean(), atol=1e-12)
    # a backdrop 40x deeper in the top rows leaves the depth steps between the other patches unchanged
    z_far, _ = depth_to_grid(_with_backdrop(depth, 8, 40.0), (10, 10), "median", "log", 1.0)
    np.testing.assert_allclose(np.diff(z_far[2:], axis=1), np.diff(z[2:], axis=1), atol=1e-12)
    # ... while min-max scaling squeezes them by the backdrop's range
    m, _ = depth_to_grid(depth, (10, 10), "median", "minmax")
    m_far, _ = depth_to_grid(_with_backdrop(depth, 8, 40.0), (10, 10), "median", "minmax")
    assert np.abs(np.diff(m_far[2:], axis=1)).max() < 0.05 * np.abs(np.diff(m[2:], axis=1)).max()
    # gain multiplies z
    z2, _ = depth_to_grid(depth, (10, 10), "median", "log", 2.0)
    np.testing.assert_allclose(z2, 2.0 * z)


def test_log_depth_of_non_positive_depth_is_shifted_not_infinite():
    z = log_depth(np.array([[0.0, 0.5], [1.0, 1.0]]))
    assert np.isfinite(z).all()
    # the nearest point sits at 1/20 of the range: ln(1.05 / 0.05) between nearest and farthest
    assert z.max() - z.min() == pytest.approx(np.log(1.05 / 0.05))
    with pytest.raises(ValueError, match="depth scale"):
        depth_to_grid(np.arange(16.0).reshape(4, 4), (2, 2), "median", "cubic")


def test_disparity_sky_keeps_object_gaps_in_the_log_cloud():
    # Depth Anything's disparity: sky ~ 0, objects 1.0 / 0.8 / 0.6. The conversion normalises to
    # [0.05, 1] and inverts: sky -> 20, objects -> 1, 1.23, 1.61 (issue 9's example).
    disparity = np.zeros((4, 4))
    disparity[2:, 0], disparity[2:, 1], disparity[2:, 2] = 1.0, 0.8, 0.6
    disparity[2:, 3] = 0.6
    depth = disparity_to_depth(disparity)
    np.testing.assert_allclose(depth[0, 0], 20.0)
    np.testing.assert_allclose(depth[2, :3], 1.0 / (0.05 + 0.95 * np.array([1.0, 0.8, 0.6])), rtol=1e-6)
    m, _ = depth_to_grid(depth, (4, 4), "median", "minmax")
    z, _ = depth_to_grid(depth, (4, 4), "median", "log", 1.0)
    tau_knn = CutConfig().tau_knn
    # min-max: the objects' steps are a few thousandths, far below tau_knn; log: above it
    assert np.abs(np.diff(m[2, :3])).max() < 0.05
    assert np.diff(z[2, :3]).min() > tau_knn


def test_si_forms():
    s = np.array([0.6, 0.8, 1.0])
    np.testing.assert_allclose(si_exponents(s, 0.6, "literal"), s)
    np.testing.assert_allclose(si_exponents(s, 0.6, "inverted"), [1.0, 0.8, 0.6])
    np.testing.assert_allclose(si_exponents(s, 0.6, "reciprocal"), 1.0 / s)
    with pytest.raises(ValueError, match="Spatial Importance form"):
        si_exponents(s, 0.6, "upside_down")


def test_weight_sharpening_keeps_maskcut_edges_and_lightens_3d_borders():
    rng = np.random.default_rng(1)
    sim = torch.from_numpy(rng.uniform(-0.2, 1.0, (64, 64))).float()
    sim = (sim + sim.T) / 2
    z = np.zeros((8, 8))
    z[:, 4:] = 1.0
    imp = spatial_importance(z, 1.0, 0.6).ravel()
    e = edge_exponents(si_exponents(imp, 0.6, "literal"), "pair_mean", "cpu")
    w = weighted(sim, 0.15, 1e-5, exponent=e)
    binary = binarize(sim, 0.15, 1e-5)
    np.testing.assert_array_equal(w > 1e-5, binary == 1.0)  # no edge created or removed
    plain = weighted(sim, 0.15, 1e-5)
    np.testing.assert_allclose(plain[binary == 1.0], sim.numpy()[binary == 1.0], rtol=1e-6)  # weights = S
    assert (w[binary == 1.0] >= plain[binary == 1.0] - 1e-6).all()  # exponents <= 1 only raise
    # an edge between two flat-region patches outweighs the same similarity across the depth border
    flat = (imp == imp.min())
    border = (imp == imp.max())
    i, j = np.flatnonzero(flat)[:2]
    k, l = np.flatnonzero(border)[:2]
    s = torch.tensor(0.5)
    assert float(s ** e[i, j]) > float(s ** e[k, l])


def test_si_apply_weights_needs_similarity_weights():
    with pytest.raises(ValueError, match="affinity='similarity'"):
        CutConfig(affinity="binary", si_apply="weights")


def test_front_fraction():
    z = np.full((12, 12), 1.0)  # a wall
    obj = np.zeros((12, 12), dtype=bool)
    obj[4:8, 4:8] = True
    z[obj] = 0.3  # an object in front of it
    assert front_fraction(obj, z, 0.05) == 1.0
    # the wall around the object: its only neighbours (the object) are closer
    assert front_fraction(~obj, z, 0.05) == 0.0
    assert front_fraction(np.ones((12, 12), dtype=bool), z, 0.05) == 0.0  # no surroundings: no evidence
    assert front_fraction(np.zeros((12, 12), dtype=bool), z, 0.05) == 0.0
    # an object standing on a floor that is nearer below it still has most of its surroundings behind it
    z2 = z.copy()
    z2[8:] = 0.2
    assert 0.5 < front_fraction(obj, z2, 0.05) < 1.0
    # a floor strip in front of the wall runs out of the picture on three sides: the frame counts against it
    floor = np.zeros((12, 12), dtype=bool)
    floor[8:] = True
    z3 = np.full((12, 12), 1.0)
    z3[8:] = 0.5
    assert front_fraction(floor, z3, 0.05, frame=False) == 1.0
    assert front_fraction(floor, z3, 0.05) < 0.5


def test_far_backdrop_keeps_the_3d_split_only_with_log_depth():
    scene = touching_pair_scene()
    far = _with_backdrop(scene.depth, 40, 40.0)  # the top sixth of the image, 40x deeper
    config = CutConfig(depth_scale="log", **FAST)
    for depth in (scene.depth, far):
        found = segment(scene.features, depth, None, config)
        for g in scene.masks:
            assert max(mask_iou(i.mask, g) for i in found) > 0.75
    # min-max scaling flattens the pair against the backdrop: no longer two separate instances
    flat = segment(scene.features, far, None, dataclasses.replace(config, depth_scale="minmax"))
    assert not all(max((mask_iou(i.mask, g) for i in flat), default=0.0) > 0.75 for g in scene.masks)


@pytest.mark.parametrize("family,seed", [("indoor", 0), ("street", 1)])
def test_front_score_ranks_background_below_the_objects(family, seed):
    from cuts3d.synthetic import make_family_scene
    from cuts3d.synthetic.quality import background_outranks

    scene = make_family_scene(family, seed)
    config = CutConfig(**FAST)
    # with the paper's score (mean SC) a background mask (wall / floor / sky: SC 1.0) comes first ...
    plain = segment(scene.features, scene.depth, None, dataclasses.replace(config, score_front=False))
    assert background_outranks(plain, scene.masks)
    # ... with the 3D front factor an object does
    found = segment(scene.features, scene.depth, None, config)
    assert not background_outranks(found, scene.masks)
    for i in found:
        assert i.score == pytest.approx(i.mean_confidence * (1 + i.front) / 2)
