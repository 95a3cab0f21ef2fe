"""Copy-paste augmentation: CutLER's rules (spec 4.3), confident selection and SC alpha-blending (Eq. 5)."""

import numpy as np
import pytest

from cuts3d.data.augment import boxes_from_masks, copy_paste, num_to_copy

H = W = 20
FULL = (1.0, 1.0)  # ratio 1 with a same-size source: no resize, offset (0, 0), pixels align one to one


def _masks(*slices):
    m = np.zeros((len(slices), H, W), bool)
    for i, sl in enumerate(slices):
        m[i][sl] = True
    return m


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((H, W, 3), dtype=np.float32), rng.random((H, W, 3), dtype=np.float32)


def _seed_with_count(n, k):
    """A seed whose first draw makes CutLER's count rule pick k of n."""
    return next(s for s in range(1000) if num_to_copy(n, np.random.default_rng(s)) == k)


def test_count_rule():
    rng = np.random.default_rng(0)
    assert num_to_copy(0, rng) == 0
    assert {num_to_copy(1, rng) for _ in range(20)} == {1}
    assert {num_to_copy(2, rng) for _ in range(20)} == {1}
    assert {num_to_copy(5, rng) for _ in range(200)} == {1, 2, 3, 4}


def test_alpha_blend_follows_eq5_exactly():
    tgt, src = _images()
    s_masks = _masks(np.s_[2:8, 2:8], np.s_[10:16, 3:9], np.s_[12:18, 12:18])
    s_conf = np.ones((3, H, W), np.float32)
    s_conf[0, 2:4, 2:8] = 0.5
    s_conf[1, 10:16, 3:5] = 0.6667
    s_conf[0, 0, 0] = 0.5  # outside the mask: must not leak into alpha
    scores = np.array([0.9, 0.8, 0.1])
    img, masks, conf, info = copy_paste(
        tgt, np.zeros((0, H, W), bool), src, s_masks, s_conf, scores, np.random.default_rng(_seed_with_count(3, 2)), scale=FULL
    )
    assert info["offset"] == (0, 0) and list(info["pasted"]) == [0, 1]
    alpha = np.zeros((H, W), np.float32)
    for i in (0, 1):
        alpha[s_masks[i]] = s_conf[i][s_masks[i]]
    np.testing.assert_array_equal(info["alpha"], alpha)
    a = alpha[..., None]
    np.testing.assert_array_equal(img, a * src + (1.0 - a) * tgt)
    untouched = ~(s_masks[0] | s_masks[1])
    np.testing.assert_array_equal(img[untouched], tgt[untouched])
    assert np.all(img[2:4, 2:8] == 0.5 * src[2:4, 2:8] + 0.5 * tgt[2:4, 2:8])
    np.testing.assert_array_equal(masks, s_masks[:2])
    np.testing.assert_array_equal(conf, s_conf[:2])  # pasted masks keep their SC maps



def _scalar_case():
    """Two pasted instances with different SC maps (one with an SC value outside its mask), no resize."""
    tgt, src = _images(7)
    s_masks = _masks(np.s_[2:8, 2:8], np.s_[10:16, 3:9], np.s_[12:18, 12:18])
    s_conf = np.ones((3, H, W), np.float32)
    s_conf[0, 2:4, 2:8] = 0.5  # 12 of 36 pixels at 0.5: mean 5/6
    s_conf[1, 10:16, 3:5] = 0.6667  # 12 of 36 at 2/3
    s_conf[0, 0, 0] = 0.1  # outside mask 0: must not enter its mean
    return tgt, src, s_masks, s_conf, np.array([0.9, 0.8, 0.1])


def test_scalar_alpha_is_the_mask_mean_sc_constant_per_instance():
    tgt, src, s_masks, s_conf, scores = _scalar_case()
    img, masks, conf, info = copy_paste(
        tgt, np.zeros((0, H, W), bool), src, s_masks, s_conf, scores,
        np.random.default_rng(_seed_with_count(3, 2)), scale=FULL, alpha_mode="scalar",
    )
    assert list(info["pasted"]) == [0, 1]
    alpha = info["alpha"]
    for i in (0, 1):
        values = np.unique(alpha[s_masks[i]])
        assert values.size == 1  # constant over the pasted instance
        assert values[0] == pytest.approx(s_conf[i][s_masks[i]].mean(), abs=1e-6)
    assert alpha[s_masks[0]][0] == pytest.approx(5 / 6, abs=1e-6)
    assert np.all(alpha[~(s_masks[0] | s_masks[1])] == 0)
    a = alpha[..., None]
    np.testing.assert_allclose(img, a * src + (1.0 - a) * tgt, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(conf, s_conf[:2])  # the SC maps themselves are kept for the loss


def test_spatial_alpha_is_the_default_and_differs_from_scalar():
    tgt, src, s_masks, s_conf, scores = _scalar_case()
    args = (tgt, np.zeros((0, H, W), bool), src, s_masks, s_conf, scores)
    seed = _seed_with_count(3, 2)
    default = copy_paste(*args, np.random.default_rng(seed), scale=FULL)
    spatial = copy_paste(*args, np.random.default_rng(seed), scale=FULL, alpha_mode="spatial")
    scalar = copy_paste(*args, np.random.default_rng(seed), scale=FULL, alpha_mode="scalar")
    np.testing.assert_array_equal(default[0], spatial[0])
    np.testing.assert_array_equal(default[3]["alpha"], spatial[3]["alpha"])
    assert spatial[3]["alpha"][2, 2] == 0.5 and spatial[3]["alpha"][7, 7] == 1.0
    assert not np.array_equal(spatial[3]["alpha"], scalar[3]["alpha"])
    # without alpha blending the mode does not matter: binary paste
    binary = copy_paste(*args, np.random.default_rng(seed), scale=FULL, alpha_blend=False, alpha_mode="scalar")
    np.testing.assert_array_equal(binary[3]["alpha"], (s_masks[0] | s_masks[1]).astype(np.float32))


def test_unknown_alpha_mode_is_refused():
    tgt, src, s_masks, s_conf, scores = _scalar_case()
    with pytest.raises(ValueError, match="alpha_mode='mean'.*spatial.*scalar"):
        copy_paste(tgt, np.zeros((0, H, W), bool), src, s_masks, s_conf, scores, np.random.default_rng(0),
                   alpha_mode="mean")

def test_binary_paste_and_uint8_rounding():
    tgt_f, src_f = _images(1)
    tgt, src = (tgt_f * 255).astype(np.uint8), (src_f * 255).astype(np.uint8)
    s_masks = _masks(np.s_[0:10, 0:10], np.s_[10:20, 10:20])
    s_conf = np.full((2, H, W), 0.5, np.float32)
    rng_seed = 3
    img, _, _, info = copy_paste(tgt, np.zeros((0, H, W), bool), src, s_masks, s_conf, np.array([1.0, 0.5]),
                                 np.random.default_rng(rng_seed), scale=FULL, alpha_blend=False)
    m = s_masks[0]
    assert img.dtype == np.uint8 and list(info["pasted"]) == [0]
    np.testing.assert_array_equal(img[m], src[m])  # SC ignored without alpha-blending
    np.testing.assert_array_equal(img[~m], tgt[~m])
    img, _, _, _ = copy_paste(tgt, np.zeros((0, H, W), bool), src, s_masks, s_conf, np.array([1.0, 0.5]),
                              np.random.default_rng(rng_seed), scale=FULL)
    expected = np.rint(0.5 * src[m].astype(np.float32) + 0.5 * tgt[m].astype(np.float32)).astype(np.uint8)
    np.testing.assert_array_equal(img[m], expected)


def test_confident_selection_takes_highest_scores():
    s_masks = _masks(*[np.s_[i * 4 : i * 4 + 3, 0:3] for i in range(5)])
    scores = np.array([0.55, 0.95, 0.7, 0.99, 0.6])
    order = [3, 1, 2, 4, 0]
    tgt, src = _images(2)
    random_sets = set()
    for seed in range(30):
        args = (tgt, np.zeros((0, H, W), bool), src, s_masks, np.ones((5, H, W), np.float32), scores)
        _, _, _, info = copy_paste(*args, np.random.default_rng(seed), scale=FULL)
        k = len(info["chosen"])
        assert list(info["chosen"]) == order[:k]
        _, _, _, info = copy_paste(*args, np.random.default_rng(seed), scale=FULL, confident=False)
        random_sets.add(tuple(sorted(info["chosen"])))
    assert any(0 in s for s in random_sets)  # random selection does pick low-score masks


def test_occlusion_trims_and_drops_target_masks():
    tgt, src = _images(3)
    t_masks = _masks(np.s_[0:3, 0:10], np.s_[10:20, 0:10])
    t_conf = np.ones((2, H, W), np.float32)
    t_conf[1][10:20, 0:10] = 0.5
    # Three pasted masks cover a third of target 0 each (ioy 1/3 < 0.5), together all of it;
    # the first also covers 40 % of target 1.
    p0 = np.zeros((H, W), bool)
    p0[0, 0:10] = True
    p0[10:14, 0:10] = True
    s_masks = np.stack([p0, _masks(np.s_[1, 0:10])[0], _masks(np.s_[2, 0:10])[0], _masks(np.s_[15:20, 15:20])[0]])
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    img, masks, conf, info = copy_paste(
        tgt, t_masks, src, s_masks, np.ones((4, H, W), np.float32), scores,
        np.random.default_rng(_seed_with_count(4, 3)), scale=FULL, target_conf=t_conf,
    )
    assert list(info["pasted"]) == [0, 1, 2] and list(info["target_keep"]) == [1]
    assert masks.shape == (4, H, W)
    expected_t1 = _masks(np.s_[14:20, 0:10])[0]
    np.testing.assert_array_equal(masks[0], expected_t1)
    # The occluded pixels of target 1 are certain now; the rest keeps its SC.
    assert np.all(conf[0][10:14, 0:10] == 1.0) and np.all(conf[0][14:20, 0:10] == 0.5)
    np.testing.assert_array_equal(masks[1:], s_masks[:3])
    covered = s_masks[:3].any(axis=0)  # SC = 1 there: plain paste
    np.testing.assert_array_equal(img[covered], src[covered])
    np.testing.assert_array_equal(img[~covered], tgt[~covered])
    np.testing.assert_array_equal(boxes_from_masks(masks)[0], [0, 14, 10, 20])


@pytest.mark.parametrize("covered, pasted", [(50, False), (49, True)])
def test_overlap_filter_drops_paste_covering_half_a_target_mask(covered, pasted):
    tgt, src = _images(4)
    t_masks = _masks(np.s_[0:10, 0:10])  # area 100
    p = np.zeros((H, W), bool)
    p[0:10, 0:10].flat[:covered] = True
    p[15:20, 15:20] = True  # outside the target mask: does not count
    s_masks = np.stack([p, _masks(np.s_[15:20, 0:5])[0]])
    img, masks, _, info = copy_paste(tgt, t_masks, src, s_masks, np.ones((2, H, W), np.float32),
                                     np.array([0.9, 0.1]), np.random.default_rng(0), scale=FULL)
    if pasted:
        assert list(info["pasted"]) == [0] and masks.shape[0] == 2
    else:
        assert len(info["pasted"]) == 0 and masks.shape[0] == 1
        np.testing.assert_array_equal(img, tgt)
        np.testing.assert_array_equal(masks, t_masks)


def test_resize_and_offset_place_the_source_window():
    tgt, src = _images(5)
    s_masks = _masks(np.s_[:, :], np.s_[0:4, 0:4])
    _, masks, conf, info = copy_paste(tgt, np.zeros((0, H, W), bool), src, s_masks, np.full((2, H, W), 0.75, np.float32),
                                      np.array([1.0, 0.0]), np.random.default_rng(0), scale=(0.5, 0.5))
    y0, x0 = info["offset"]
    assert info["ratio"] == 0.5 and 0 <= y0 <= 10 and 0 <= x0 <= 10
    window = np.zeros((H, W), bool)
    window[y0 : y0 + 10, x0 : x0 + 10] = True
    np.testing.assert_array_equal(masks[0], window)
    assert np.all(conf[0][window] == 0.75) and np.all(conf[0][~window] == 1.0)


def test_seeded_rng_is_deterministic():
    rng = np.random.default_rng(11)
    tgt = (rng.random((32, 40, 3)) * 255).astype(np.uint8)
    src = (rng.random((24, 30, 3)) * 255).astype(np.uint8)
    t_masks = rng.random((3, 32, 40)) > 0.7
    s_masks = rng.random((6, 24, 30)) > 0.6
    s_conf = np.where(rng.random((6, 24, 30)) > 0.5, 1.0, 0.5).astype(np.float32)
    scores = rng.random(6)

    def run(seed):
        return copy_paste(tgt, t_masks, src, s_masks, s_conf, scores, np.random.default_rng(seed), overlap_thresh=1.1)

    a, b = run(5), run(5)
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)
    assert a[3]["ratio"] == b[3]["ratio"] and a[3]["offset"] == b[3]["offset"]
    img, masks, conf, info = a
    assert img.shape == tgt.shape and masks.shape[1:] == (32, 40) and conf.shape == masks.shape
    assert masks.reshape(len(masks), -1).any(axis=1).all()
    assert len(masks) == len(info["target_keep"]) + len(info["pasted"])


def test_boxes_from_masks():
    m = np.zeros((2, 5, 6), bool)
    m[0, 1:3, 2:5] = True
    np.testing.assert_array_equal(boxes_from_masks(m), [[2, 1, 5, 3], [0, 0, 0, 0]])
    assert boxes_from_masks(np.zeros((0, 5, 6), bool)).shape == (0, 4)
