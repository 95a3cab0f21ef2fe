"""The ``street`` scene family (cuts3d.synthetic.street): array shapes and types, determinism, ground-truth
masks, depth as the Depth Anything path delivers it, the far backdrop changing depth only, touching
same-class pairs at different depths, and feature groups that are visible but noisy."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy import ndimage

from cuts3d.synthetic.scene import Scene
from cuts3d.synthetic.street import (
    MIN_AREA_FRACTION,
    _far_backdrop,
    _render_street,
    _street_geometry,
    make_street_scene,
)

SEEDS = range(20)  # geometry only (cheap): masks, classes, metric depth
FULL_SEEDS = (0, 1, 3)  # full scenes, near and far backdrop: facade, wall, hedge; both classes


@functools.lru_cache(maxsize=None)
def geometry(seed: int, far: bool = False):
    if far:  # the far backdrop only re-assigns the near geometry's backdrop depth
        return _far_backdrop(geometry(seed), seed)
    return _street_geometry(seed)


@functools.lru_cache(maxsize=None)
def render(seed: int, far: bool = False):
    return _render_street(seed, far_backdrop=far)


def backdrop_over_objects(depth: np.ndarray, geo) -> float:
    """Median depth of the backdrop and sky over the median depth of the objects."""
    back = geo.region != 0
    back &= geo.region != 3
    return float(np.median(depth[back]) / np.median(depth[geo.inst >= 0]))


def test_shapes_and_dtypes():
    for seed in FULL_SEEDS:
        scene, _ = render(seed)
        assert isinstance(scene, Scene)
        K = len(scene.classes)
        assert scene.features.shape == (64, 30, 30) and scene.features.dtype == np.float32
        assert scene.depth.shape == (240, 240) and scene.depth.dtype == np.float32
        assert scene.image.shape == (240, 240, 3) and scene.image.dtype == np.uint8
        assert scene.masks.shape == (K, 240, 240) and scene.masks.dtype == bool
        assert scene.classes.dtype == np.int64 and scene.patch_size == 8
    small = make_street_scene(5, grid=12, patch_size=4, channels=16)
    assert small.features.shape == (16, 12, 12) and small.depth.shape == (48, 48)
    assert small.image.shape == (48, 48, 3) and small.masks.shape[1:] == (48, 48) and small.patch_size == 4


def test_same_arguments_give_identical_arrays():
    again = make_street_scene(1)
    cached, _ = render(1)
    for name in ("features", "depth", "image", "masks", "classes"):
        np.testing.assert_array_equal(getattr(again, name), getattr(cached, name), err_msg=name)
    other, _ = render(3)
    assert not np.array_equal(other.image, again.image)


def test_masks_are_disjoint_large_enough_and_classed():
    H = W = 240
    for seed in SEEDS:
        geo = geometry(seed)
        masks, classes = geo.masks, geo.classes
        assert len(masks) == len(classes) >= 1, seed
        assert set(classes.tolist()) <= {0, 1}
        assert masks.sum(0).max() <= 1, f"seed {seed}: masks overlap"
        assert (masks.sum((1, 2)) >= MIN_AREA_FRACTION * H * W).all(), f"seed {seed}: a mask under 1 %"
    assert {c for s in SEEDS for c in geometry(s).classes.tolist()} == {0, 1}
    for seed in FULL_SEEDS:  # the scene carries exactly the geometry's ground truth
        np.testing.assert_array_equal(render(seed)[0].masks, geometry(seed).masks)


def test_depth_is_finite_positive_and_comes_through_disparity_to_depth():
    for seed in FULL_SEEDS:
        for far in (False, True):
            depth = render(seed, far)[0].depth
            assert np.isfinite(depth).all() and (depth > 0).all()
            # disparity_to_depth maps the nearest pixel to 1 and the farthest to 1 / 0.05.
            assert depth.min() == pytest.approx(1.0, abs=1e-5) and depth.max() == pytest.approx(20.0, rel=1e-5)


def test_depth_keeps_the_order_of_objects():
    checked = 0
    for seed in FULL_SEEDS:
        scene, geo = render(seed)
        metric = [np.median(geo.metric[m]) for m in scene.masks]
        relative = [np.median(scene.depth[m]) for m in scene.masks]
        for i in range(len(metric)):
            for j in range(len(metric)):
                if metric[j] > 1.15 * metric[i]:
                    assert relative[j] > relative[i], (seed, i, j)
                    checked += 1
    assert checked > 0


def test_far_backdrop_changes_depth_only():
    for seed in FULL_SEEDS:
        near, _ = render(seed)
        far, _ = render(seed, True)
        for name in ("features", "image", "masks", "classes"):
            np.testing.assert_array_equal(getattr(far, name), getattr(near, name), err_msg=f"seed {seed}: {name}")
        assert not np.array_equal(far.depth, near.depth)


def test_far_backdrop_is_much_deeper_than_the_near_one():
    # Metric ground truth: the near backdrop stands 1.3-3 times as deep as the farthest object, the far one
    # 20-60 times the objects' median depth.
    for seed in SEEDS:
        near, far = geometry(seed), geometry(seed, True)
        z_far_obj = max(o.z for o in near.objects)
        back = near.region == 1
        assert 1.3 <= near.backdrop_ratio <= 3.0 and near.sky_ratio <= 3.0 + 1e-9
        if back.any():
            assert 1.2 <= np.median(near.metric[back]) / z_far_obj <= 3.2, seed
        assert 20.0 <= far.backdrop_ratio <= 60.0 and 20.0 <= far.sky_ratio <= 60.0
        assert 18.0 <= backdrop_over_objects(far.estimator_metric, far) <= 63.0, seed
        np.testing.assert_array_equal(far.metric, near.metric)
    for seed in FULL_SEEDS:  # the shortcut above is what the scene itself uses
        np.testing.assert_array_equal(render(seed, True)[1].estimator_metric, geometry(seed, True).estimator_metric)
    # After disparity_to_depth (range capped at 20x) the far backdrop still stands out clearly.
    ratios = []
    for seed in FULL_SEEDS:
        geo = geometry(seed)
        r_near = backdrop_over_objects(render(seed)[0].depth, geo)
        r_far = backdrop_over_objects(render(seed, True)[0].depth, geo)
        assert r_far >= 5.0 and r_far >= 1.15 * r_near, (seed, r_near, r_far)
        ratios.append(r_far)
    assert np.mean(ratios) >= 8.0, ratios


def test_touching_same_class_pairs_at_different_depths_and_object_counts():
    with_pair = 0
    counts = set()
    for seed in SEEDS:
        geo = geometry(seed)
        masks, classes = geo.masks, geo.classes
        counts.add(len(masks))
        depth = [np.median(geo.metric[m]) for m in masks]
        found = False
        for i in range(len(masks)):
            grown = ndimage.binary_dilation(masks[i])
            for j in range(i + 1, len(masks)):
                if classes[i] == classes[j] and (grown & masks[j]).any():
                    found |= max(depth[i], depth[j]) / min(depth[i], depth[j]) >= 1.1
        with_pair += found
    assert with_pair / len(SEEDS) >= 0.5, with_pair
    assert counts == {1, 2, 3, 4, 5}, counts


def test_features_group_by_instance_and_class_with_noise():
    within, same_class, cross_class, to_background = [], [], [], []
    for seed in FULL_SEEDS:
        scene, _ = render(seed)
        C, h, w = scene.features.shape
        p = scene.patch_size
        unit = scene.features / np.linalg.norm(scene.features, axis=0, keepdims=True)
        cover = scene.masks.reshape(len(scene.masks), h, p, w, p).mean((2, 4))
        background = cover.sum(0) == 0
        mean_bg = unit[:, background].mean(1)
        means = []
        for k in range(len(scene.masks)):
            pure = cover[k] >= 0.95
            if pure.sum() < 3:
                means.append(None)
                continue
            m = unit[:, pure].mean(1)
            m /= np.linalg.norm(m)
            within.append(float(np.mean(m @ unit[:, pure])))
            to_background.append(float(m @ mean_bg / np.linalg.norm(mean_bg)))
            means.append(m)
        for i in range(len(means)):
            for j in range(i + 1, len(means)):
                if means[i] is not None and means[j] is not None:
                    same = scene.classes[i] == scene.classes[j]
                    (same_class if same else cross_class).append(float(means[i] @ means[j]))
    # Patches resemble their object, but noise, texture and parts keep them well short of identical.
    assert 0.6 < np.mean(within) < 0.97, np.mean(within)
    assert same_class and cross_class
    assert np.mean(same_class) > np.mean(cross_class) + 0.3
    assert np.mean(to_background) < 0.6


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_street_scene(0, channels=0)
    with pytest.raises(ValueError):
        make_street_scene(0, grid=2)
