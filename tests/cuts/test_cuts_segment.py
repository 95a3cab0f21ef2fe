"""The public API: segment() for maskcut and cuts3d on scenes whose answer is known, and degenerate inputs."""

import sys

import numpy as np
import pytest
import torch

from cuts3d import CutConfig, Instance, segment
from cuts3d.cuts.reference import reference_maskcut
from cuts3d.masks.crf import crf_available
from cuts3d.masks.filters import mask_iou, passes_maskcut_filters
from cuts3d.synthetic import make_scene, touching_pair_scene

FAST = dict(crf=False)


def _check_instances(instances, shape):
    assert all(isinstance(i, Instance) for i in instances)
    for i in instances:
        assert i.mask.shape == shape and i.mask.dtype == bool and i.mask.any()
        assert 0.0 <= i.score <= 1.0
    for a in range(len(instances)):
        for b in range(a + 1, len(instances)):
            assert not np.array_equal(instances[a].mask, instances[b].mask), "duplicate masks"


def test_localcut_separates_touching_same_class_objects():
    scene = touching_pair_scene()
    union = scene.masks[0] | scene.masks[1]
    maskcut = segment(scene.features, None, scene.image, CutConfig(method="maskcut", **FAST))
    # NCut + 2D connected component returns the touching pair as one mask.
    assert max(mask_iou(i.mask, union) for i in maskcut) > 0.75
    assert all(max(mask_iou(i.mask, g) for i in maskcut) < 0.6 for g in scene.masks)
    cuts3d = segment(scene.features, scene.depth, scene.image, CutConfig(**FAST))
    for g in scene.masks:
        assert max(mask_iou(i.mask, g) for i in cuts3d) > 0.75
    _check_instances(cuts3d, scene.depth.shape)


def test_output_resolution_follows_image_then_depth_then_grid():
    scene = make_scene(0, grid=16, channels=32)
    feats = torch.from_numpy(scene.features)  # torch input works like numpy
    with_image = segment(feats, scene.depth, scene.image, CutConfig(**FAST))
    assert with_image and with_image[0].mask.shape == scene.image.shape[:2]
    small_depth = scene.depth[::2, ::2]
    assert segment(feats, small_depth, None, CutConfig(**FAST))[0].mask.shape == small_depth.shape
    grid_only = segment(feats, None, None, CutConfig(method="maskcut"))
    assert grid_only[0].mask.shape == (16, 16)
    assert grid_only[0].confidence is None
    i = with_image[0]
    assert i.patch_mask.shape == (16, 16) and i.confidence.shape == (16, 16) and i.confidence.dtype == np.float32


def test_spatial_confidence_levels_and_border_share():
    T = 6
    config = CutConfig(**FAST)
    below, total, values = 0, 0, set()
    for seed in range(6):
        scene = make_scene(seed)
        for inst in segment(scene.features, scene.depth, None, config):
            sc = inst.confidence
            values |= set(np.round(sc.ravel().astype(np.float64), 5).tolist())
            below += int((sc[inst.patch_mask] < 1).sum())
            total += int(inst.patch_mask.sum())
            # mean_confidence = mean SC over the mask; score = that times the 3D front factor
            up = sc.repeat(scene.patch_size, 0).repeat(scene.patch_size, 1)
            assert inst.mean_confidence == pytest.approx(float(up[inst.mask].mean()), abs=1e-6)
            assert inst.score == pytest.approx(inst.mean_confidence * (1 + inst.front) / 2, abs=1e-9)
    allowed = {round(max(k / T, 0.5), 5) for k in range(T + 1)}
    assert values <= allowed
    share = below / total
    assert 0.02 < share < 0.4, share  # a non-trivial share below 1, at the 3D borders


def test_low_confidence_lies_on_depth_borders():
    scene = make_scene(2)
    z = scene.depth
    gy, gx = np.gradient(z)
    edge = np.hypot(gx, gy) > 0.01
    near_edge = np.zeros(edge.shape, dtype=bool)
    from scipy import ndimage

    near_edge = ndimage.binary_dilation(edge, iterations=scene.patch_size)
    for inst in segment(scene.features, scene.depth, None, CutConfig(**FAST)):
        low = (inst.confidence < 1).repeat(8, 0).repeat(8, 1)
        if low.any():
            assert near_edge[low].mean() > 0.9


@pytest.mark.parametrize("crf", [False, True])
def test_maskcut_reproduces_cutler_reference(crf):
    if crf and not crf_available():
        pytest.skip("pydensecrf2 not installed")
    for seed in range(2):
        scene = make_scene(seed, grid=20, channels=32)
        ref = reference_maskcut(torch.from_numpy(scene.features), scene.image, scene.depth.shape, crf=crf)
        for solver in ("dense", "auto"):
            ours = segment(scene.features, None, scene.image, CutConfig(method="maskcut", eigensolver=solver, crf=crf))
            assert len(ours) == len(ref)
            for a, b in zip(ours, ref):
                np.testing.assert_array_equal(a.mask, b)


def test_found_patches_are_masked_out_between_rounds():
    # Two objects of *different* classes: round 0 finds one, round 1 must find the other.
    scene = make_scene(5, grid=20, channels=32, n_classes=3)
    insts = segment(scene.features, scene.depth, None, CutConfig(**FAST))
    for a in range(len(insts)):
        for b in range(a + 1, len(insts)):
            assert not (insts[a].patch_mask & insts[b].patch_mask).any()
    assert len(insts) >= 2


def test_maskcut_filters():
    prev = np.zeros((10, 10), dtype=bool)
    prev[:5] = True
    same = prev.copy()
    same[5] = True  # IoU 50/60 > 0.5 -> dropped
    assert not passes_maskcut_filters(prev, same, 0.5, 0.01)
    half = np.zeros_like(prev)
    half[2:7] = True  # IoU 30/70 <= 0.5 -> kept
    assert passes_maskcut_filters(prev, half, 0.5, 0.01)
    tiny = np.zeros_like(prev)
    tiny[9, 9] = True  # 1 % of the grid -> dropped (<=)
    assert not passes_maskcut_filters(prev, tiny, 0.5, 0.01)
    two = tiny.copy()
    two[9, 8] = True
    assert passes_maskcut_filters(prev, two, 0.5, 0.01)
    assert passes_maskcut_filters(None, tiny, 0.5, 0.01)  # round 0 is never filtered


@pytest.mark.parametrize("method", ["maskcut", "cuts3d"])
def test_degenerate_inputs(method):
    scene = make_scene(1, grid=16, channels=32)
    cfg = CutConfig(method=method, n_iters=3, **FAST)
    shape = scene.depth.shape
    cases = {
        "constant depth": (scene.features, np.full(shape, 2.0)),
        "nan depth": (scene.features, np.where(np.arange(shape[1]) % 3 == 0, np.nan, scene.depth)),
        "all-nan depth": (scene.features, np.full(shape, np.nan)),
        "inf depth": (scene.features, np.where(scene.depth > 0.8, np.inf, scene.depth)),
        "identical features": (np.ones_like(scene.features), scene.depth),
        "zero features": (np.zeros_like(scene.features), scene.depth),
    }
    for name, (feats, depth) in cases.items():
        out = segment(feats, depth, None, cfg)
        _check_instances(out, shape)
    assert segment(np.ones((8, 1, 1)), np.ones((1, 1)), None, cfg) == []
    tiny = segment(np.random.default_rng(0).standard_normal((8, 2, 2)), np.arange(4.0).reshape(2, 2), None, cfg)
    _check_instances(tiny, (2, 2))
    many = segment(scene.features, scene.depth, None, CutConfig(method=method, n_iters=12, **FAST))
    _check_instances(many, shape)
    assert len(many) <= 12


def test_constant_depth_degrades_to_semantic_cut():
    scene = touching_pair_scene()
    out = segment(scene.features, np.ones_like(scene.depth), None, CutConfig(**FAST))
    union = scene.masks[0] | scene.masks[1]
    # Without 3D cues the touching pair is one semantic component, like MaskCut.
    assert max(mask_iou(i.mask, union) for i in out) > 0.75


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="needs a depth map"):
        segment(np.ones((4, 5, 5)), None)
    with pytest.raises(ValueError, match=r"\(C, h, w\)"):
        segment(np.ones((5, 5)), np.ones((5, 5)))
    with pytest.raises(ValueError, match="uint8"):
        segment(np.ones((4, 5, 5)), np.ones((5, 5)), np.ones((10, 10, 3)))
    with pytest.raises(ValueError, match="NaN"):
        segment(np.full((4, 5, 5), np.nan), np.ones((5, 5)))
    # every feature dtype and layout a backbone may return is checked: strided, half precision, with grad
    bad = torch.ones(5, 5, 4)
    bad[2, 3, 1] = float("inf")
    for features in (bad.permute(2, 0, 1), bad.permute(2, 0, 1).bfloat16(), bad.permute(2, 0, 1).requires_grad_()):
        with pytest.raises(ValueError, match="NaN or inf"):
            segment(features, np.ones((5, 5)))
    with pytest.raises(ValueError, match="method"):
        CutConfig(method="ncut")
    with pytest.raises(ValueError, match="unknown CutConfig keys"):
        CutConfig.from_dict({"tau": 0.2})
    assert CutConfig.from_dict(CutConfig(tau_knn=0.1).to_dict()) == CutConfig(tau_knn=0.1)


def test_crf_refines_to_image_edges():
    scene = touching_pair_scene()
    plain = segment(scene.features, scene.depth, scene.image, CutConfig(crf=False))
    refined = segment(scene.features, scene.depth, scene.image, CutConfig(crf=True))
    for g in scene.masks:
        before = max(mask_iou(i.mask, g) for i in plain)
        after = max(mask_iou(i.mask, g) for i in refined)
        assert after > before  # blocky patch masks snap to the object's pixel border


def test_crf_accepts_read_only_images():
    scene = touching_pair_scene()
    image = scene.image.copy()
    image.flags.writeable = False  # as np.asarray(PIL image) returns
    out = segment(scene.features, scene.depth, image, CutConfig(crf=True))
    assert out and all(i.mask.any() for i in out)


def test_crf_runs_without_pydensecrf(monkeypatch):
    # cuts3d's CRF is its own code: with pydensecrf unimportable it still refines, to the same masks
    scene = touching_pair_scene()
    with_reference = segment(scene.features, scene.depth, scene.image, CutConfig(crf=True))
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    without = segment(scene.features, scene.depth, scene.image, CutConfig(crf=True))
    plain = segment(scene.features, scene.depth, scene.image, CutConfig(crf=False))
    assert len(without) == len(with_reference)
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(without, with_reference))
    assert any(not np.array_equal(a.mask, b.mask) for a, b in zip(without, plain))


def test_rest_rule_stops_when_ncut_returns_the_complement(monkeypatch):
    rng = np.random.default_rng(0)
    g, c = 16, 16
    a, b = rng.standard_normal(c), rng.standard_normal(c)
    b -= (a @ b) / (a @ a) * a  # two unrelated classes
    obj = np.zeros((g, g), dtype=bool)
    obj[4:10, 5:11] = True
    feats = np.where(obj[None], a[:, None, None], b[:, None, None]) + 0.05 * rng.standard_normal((c, g, g))
    depth = np.where(obj, 0.3, np.linspace(1.0, 0.7, g)[:, None].repeat(g, 1))
    import cuts3d.cuts.segment as seg

    rounds = []
    real_localcut = seg.localcut
    monkeypatch.setattr(seg, "localcut", lambda *a, **k: rounds.append(1) or real_localcut(*a, **k))
    out = segment(feats, depth, None, CutConfig(n_iters=3, **FAST))
    assert len(out) == 1 and out[0].iteration == 0
    np.testing.assert_array_equal(out[0].patch_mask, obj)
    # Round 1's bipartition is the rest: no LocalCut ran after round 0 (1 + T cuts).
    assert len(rounds) == 1 + len(CutConfig().confidence_taus)
