"""The ``tabletop`` scene family (cuts3d.synthetic.tabletop): valid, deterministic scenes whose ground truth,
depth, far backdrop and features have the properties the family promises. Everything is checked from the
scene's public arrays only (masks, depth, features), not from the generator's internals."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from scipy import ndimage

from cuts3d.synthetic.scene import Scene
from cuts3d.synthetic.tabletop import CONTAINER, FRUIT, make_tabletop_scene

SEEDS = range(20)
FAR_SEEDS = (0, 5, 11)


@lru_cache(maxsize=None)
def scene(seed: int, far_backdrop: bool = False) -> Scene:
    return make_tabletop_scene(seed, far_backdrop=far_backdrop)


def touching_same_class_pairs(sc: Scene, min_gap: float) -> list[tuple[int, int, float]]:
    """Pairs (front, back, relative gap) of same-class instances whose visible masks touch in 2D (within 2 px)
    and whose median depths differ by at least ``min_gap`` (relative to the nearer one)."""
    pairs = []
    medians = [float(np.median(sc.depth[m])) for m in sc.masks]
    for i in range(len(sc.masks)):
        near = ndimage.binary_dilation(sc.masks[i], iterations=2)
        for j in range(len(sc.masks)):
            if i == j or sc.classes[i] != sc.classes[j] or not (near & sc.masks[j]).any():
                continue
            gap = medians[j] / medians[i] - 1
            if gap >= min_gap:
                pairs.append((i, j, gap))
    return pairs


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_shapes_and_dtypes_default_and_custom() -> None:
    sc = scene(0)
    assert sc.features.shape == (64, 30, 30) and sc.features.dtype == np.float32
    assert sc.depth.shape == (240, 240) and sc.depth.dtype == np.float32
    assert sc.image.shape == (240, 240, 3) and sc.image.dtype == np.uint8
    assert sc.masks.dtype == bool and sc.masks.shape[1:] == (240, 240)
    assert sc.classes.dtype == np.int64 and sc.classes.shape == (len(sc.masks),)
    assert sc.patch_size == 8

    small = make_tabletop_scene(3, grid=12, patch_size=6, channels=16)
    assert small.features.shape == (16, 12, 12) and small.features.dtype == np.float32
    assert small.depth.shape == (72, 72) and small.image.shape == (72, 72, 3)
    assert small.masks.shape[1:] == (72, 72) and small.patch_size == 6
    assert np.isfinite(small.features).all() and np.isfinite(small.depth).all() and (small.depth > 0).all()


def test_same_arguments_give_identical_arrays_and_seeds_differ() -> None:
    a, b = make_tabletop_scene(7), scene(7)
    for field in ("features", "depth", "image", "masks", "classes"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    other = scene(8)
    assert not np.array_equal(a.image, other.image)
    assert not np.array_equal(a.features, other.features)


@pytest.mark.parametrize("seed", SEEDS)
def test_masks_are_visible_disjoint_and_large_enough(seed: int) -> None:
    sc = scene(seed)
    assert 1 <= len(sc.masks) <= 5
    areas = sc.masks.reshape(len(sc.masks), -1).mean(1)
    assert (areas >= 0.01).all(), areas
    assert sc.masks.sum(0).max() == 1  # disjoint
    assert set(sc.classes.tolist()) <= {FRUIT, CONTAINER}
    # a visible object stands out from its surroundings in the photo
    for m in sc.masks:
        ring = ndimage.binary_dilation(m, iterations=4) & ~m
        assert np.abs(sc.image[m].mean(0) - sc.image[ring].mean(0)).max() > 3


@pytest.mark.parametrize("seed", SEEDS)
def test_depth_is_metric_finite_positive_and_farther_behind_the_table(seed: int) -> None:
    sc = scene(seed)
    assert np.isfinite(sc.depth).all() and (sc.depth > 0).all()
    objects = float(np.median(sc.depth[sc.masks.any(0)]))
    assert 0.3 <= objects <= 1.6, objects  # a table-top scene in metres
    rows = len(sc.depth) // 10
    assert np.median(sc.depth[:rows]) > 1.5 * np.median(sc.depth[-rows:])  # the room behind is farther


def test_object_counts_span_one_to_five() -> None:
    counts = {len(scene(s).masks) for s in SEEDS}
    assert counts == {1, 2, 3, 4, 5}, counts


def test_most_scenes_hold_a_touching_same_class_pair_at_different_depths() -> None:
    with_pair = [s for s in SEEDS if touching_same_class_pairs(scene(s), min_gap=0.07)]
    assert len(with_pair) >= 0.5 * len(SEEDS), with_pair
    gaps = [max(g for _, _, g in touching_same_class_pairs(scene(s), 0.07)) for s in with_pair]
    assert max(gaps) >= 0.15 and max(gaps) <= 0.6, gaps  # a spread of depth steps, not all at the threshold


@pytest.mark.parametrize("seed", FAR_SEEDS)
def test_far_backdrop_changes_only_depth_and_is_20_to_60x_farther(seed: int) -> None:
    near, far = scene(seed), scene(seed, far_backdrop=True)
    for field in ("features", "image", "masks", "classes"):
        assert np.array_equal(getattr(near, field), getattr(far, field)), field
    assert np.isfinite(far.depth).all() and (far.depth > 0).all()

    backdrop = far.depth / near.depth > 3
    size = len(far.depth)
    assert 0.12 <= backdrop.mean() <= 0.45, backdrop.mean()
    rows = np.flatnonzero(backdrop.any(1))
    assert rows.min() == 0 and rows.max() < 0.45 * size  # the upper part of the image, behind the table
    # objects keep their depth, but for the estimator-like blur that bleeds across their outline
    inner = ndimage.binary_erosion(far.masks.any(0), iterations=far.patch_size // 2)
    assert not (backdrop & inner).any()

    core = ndimage.binary_erosion(backdrop, iterations=8)  # away from the blurred edge
    objects = float(np.median(far.depth[far.masks.any(0)]))
    ratio = float(np.median(far.depth[core])) / objects
    assert 15 <= ratio <= 75, ratio  # 20-60x, with slack for the estimator-like bias and noise
    assert float(np.median(near.depth[core])) / objects < 10  # without it, the room is a few metres away


def test_features_group_by_class_with_realistic_noise() -> None:
    same, cross, within, background = [], [], [], []
    for seed in SEEDS:
        sc = scene(seed)
        c, h, w = sc.features.shape
        p = sc.patch_size
        feats = sc.features.reshape(c, -1).T
        cover = sc.masks.reshape(len(sc.masks), h, p, w, p).mean((2, 4)).reshape(len(sc.masks), -1)
        bg = unit(feats[cover.sum(0) == 0].mean(0))
        means = {}
        for k in range(len(sc.masks)):
            inside = cover[k] >= 0.9
            if inside.sum() >= 2:
                means[k] = unit(feats[inside].mean(0))
                within.append(float((unit(feats[inside]) @ means[k]).mean()))
                background.append(float(means[k] @ bg))
        keys = sorted(means)
        for a in keys:
            for b in keys:
                if a < b:
                    (same if sc.classes[a] == sc.classes[b] else cross).append(float(means[a] @ means[b]))
    assert same and cross
    assert min(same) > 0.75 and max(cross) < 0.5 and np.median(same) - np.median(cross) > 0.4
    assert max(background) < 0.5  # objects stand out from the table / room
    # patches scatter around their object's mean: visible groups, but not noise-free
    assert 0.6 < float(np.median(within)) < 0.97, np.median(within)
