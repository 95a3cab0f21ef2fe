"""Checks of the "indoor" synthetic scene family (cuts3d.synthetic.indoor), made only from a scene's outputs."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from scipy import ndimage

from cuts3d.synthetic.indoor import make_indoor_scene
from cuts3d.synthetic.scene import Scene

SEEDS = range(20)
FAR_SEEDS = (0, 1, 4, 9, 14)


@lru_cache(maxsize=None)
def _scene(seed: int, far: bool = False) -> Scene:
    return make_indoor_scene(seed, far_backdrop=far)


def _touching_pair_at_depth_gap(scene: Scene, min_ratio: float = 1.12) -> bool:
    """Whether two same-class masks touch (within 2 px) and their median depths differ by ``min_ratio`` or more."""
    for i in range(len(scene.masks)):
        grown = ndimage.binary_dilation(scene.masks[i], iterations=2)
        for j in range(i + 1, len(scene.masks)):
            if scene.classes[i] != scene.classes[j] or not (grown & scene.masks[j]).any():
                continue
            a, b = np.median(scene.depth[scene.masks[i]]), np.median(scene.depth[scene.masks[j]])
            if max(a, b) / min(a, b) >= min_ratio:
                return True
    return False


def _class_mean_features(scene: Scene) -> dict[int, list[np.ndarray]]:
    """Per class, the mean feature of each instance over patches the instance covers almost entirely."""
    ps, (h, w) = scene.patch_size, scene.features.shape[1:]
    out: dict[int, list[np.ndarray]] = {}
    for mask, cls in zip(scene.masks, scene.classes):
        cover = mask.reshape(h, ps, w, ps).mean((1, 3))
        if (cover >= 0.9).sum() >= 2:
            out.setdefault(int(cls), []).append(scene.features[:, cover >= 0.9].mean(1))
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_shapes_and_dtypes():
    s = _scene(3)
    k = len(s.masks)
    assert s.features.shape == (64, 30, 30) and s.features.dtype == np.float32
    assert s.depth.shape == (240, 240) and s.depth.dtype == np.float32
    assert s.image.shape == (240, 240, 3) and s.image.dtype == np.uint8
    assert s.masks.shape == (k, 240, 240) and s.masks.dtype == bool
    assert s.classes.shape == (k,) and s.classes.dtype == np.int64
    assert s.patch_size == 8
    small = make_indoor_scene(5, grid=12, patch_size=7, channels=16)
    assert small.features.shape == (16, 12, 12)
    assert small.depth.shape == small.image.shape[:2] == small.masks.shape[1:] == (84, 84)


def test_deterministic():
    a, b = _scene(7), make_indoor_scene(7)
    for name in ("features", "depth", "image", "masks", "classes"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.features, _scene(8).features)


@pytest.mark.parametrize("seed", SEEDS)
def test_masks_classes_and_depth(seed: int):
    s = _scene(seed)
    assert 1 <= len(s.masks) <= 5
    assert set(s.classes.tolist()) <= {0, 1}
    assert (s.masks.mean((1, 2)) >= 0.01).all()
    assert s.masks.sum(0).max() <= 1, "masks overlap"
    assert np.isfinite(s.depth).all() and (s.depth > 0).all()
    # Metric depth: objects 1.5-5 m away (with the estimator's scale error), the room behind them.
    med = np.array([np.median(s.depth[m]) for m in s.masks])
    assert (med > 1.5 * 0.8).all() and (med < 5.0 * 1.3).all()
    assert np.percentile(s.depth[~s.masks.any(0)], 99) > 1.1 * med.max(), "the back wall lies behind the objects"


def test_scene_statistics_over_seeds():
    scenes = [_scene(seed) for seed in SEEDS]
    counts = {len(s.masks) for s in scenes}
    assert counts == {1, 2, 3, 4, 5}
    share = np.mean([_touching_pair_at_depth_gap(s) for s in scenes])
    assert share >= 0.5, f"only {share:.0%} of scenes have touching same-class objects at different depths"
    assert sum(len(set(s.classes.tolist())) == 2 for s in scenes) >= 5


def test_features_group_by_class():
    same, diff = [], []
    for seed in SEEDS:
        means = _class_mean_features(_scene(seed))
        for vecs in means.values():
            same += [_cos(vecs[i], vecs[j]) for i in range(len(vecs)) for j in range(i + 1, len(vecs))]
        if len(means) == 2:
            diff += [_cos(a, b) for a in means[0] for b in means[1]]
    assert len(same) >= 5 and len(diff) >= 5
    # Same-class instances resemble each other (shared prototype); the two classes differ but are not opposite.
    assert np.median(same) > 0.6 and min(same) > 0.4
    assert -0.1 < np.median(diff) < 0.4 and max(diff) < 0.5


@pytest.mark.parametrize("seed", FAR_SEEDS)
def test_far_backdrop_changes_only_depth(seed: int):
    near, far = _scene(seed), _scene(seed, far=True)
    for name in ("features", "image", "masks", "classes"):
        assert np.array_equal(getattr(near, name), getattr(far, name)), name
    assert np.isfinite(far.depth).all() and (far.depth > 0).all()
    backdrop = far.depth / near.depth > 3
    assert backdrop.mean() > 0.02
    ratio = np.median(far.depth[backdrop]) / np.median(far.depth[far.masks.any(0)])
    assert 20 / 1.3 <= ratio <= 60 * 1.3
    # The depth blur spreads the window at most ~16 px; beyond that the depth is untouched.
    away = ~ndimage.maximum_filter(backdrop, size=2 * 20 + 1)
    assert away.mean() > 0.2
    assert np.array_equal(far.depth[away], near.depth[away])
