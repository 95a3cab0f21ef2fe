"""PseudoMaskDataset: pseudo-mask JSON + images -> detection targets with SC maps at image resolution."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cuts3d.data.augment import copy_paste
from cuts3d.data.dataset import PseudoMaskDataset, to_detection_sample
from cuts3d.masks.coco import encode_confidence, mask_annotation
from cuts3d.masks.filters import upsample_nearest

H, W = 32, 48


def _write(tmp_path, swap_size=False):
    rng = np.random.default_rng(0)
    img = (rng.random((H, W, 3)) * 255).astype(np.uint8)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(img).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(img[::-1].copy()).save(tmp_path / "imgs" / "b.png")
    m0 = np.zeros((H, W), bool)
    m0[4:20, 6:30] = True
    m1 = np.zeros((H, W), bool)
    m1[22:30, 30:46] = True
    sc = np.ones((4, 6), np.float32)  # patch map, upsampled 8x
    sc[0, 1:4] = 0.5
    anns = [
        mask_annotation(m0, 1, 0.9, id=1, iscrowd=0, confidence=encode_confidence(sc), confidence_score=0.8),
        mask_annotation(m1, 1, 0.7, id=2, iscrowd=0),  # no SC (e.g. a self-training prediction)
    ]
    size = {"width": H, "height": W} if swap_size else {"width": W, "height": H}
    coco = {
        "images": [{"id": 1, "file_name": "a.png", **size}, {"id": 2, "file_name": "b.png", "width": W, "height": H}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "object"}],
    }
    path = tmp_path / "pseudo.json"
    path.write_text(json.dumps(coco))
    return path, img, (m0, m1), sc


def test_dataset_item_matches_the_json(tmp_path):
    path, img, (m0, m1), sc = _write(tmp_path)
    ds = PseudoMaskDataset(path, tmp_path / "imgs")
    assert len(ds) == 1  # image 2 has no annotations
    assert len(PseudoMaskDataset(path, tmp_path / "imgs", filter_empty=False)) == 2
    image, t = ds[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    torch.testing.assert_close(image, torch.from_numpy(img).permute(2, 0, 1).float() / 255)
    np.testing.assert_array_equal(t["masks"].numpy(), np.stack([m0, m1]).astype(np.uint8))
    assert t["masks"].dtype == torch.uint8 and t["labels"].tolist() == [1, 1]
    assert t["boxes"].tolist() == [[6, 4, 30, 20], [30, 22, 46, 30]]
    conf = t["confidence"].numpy()
    np.testing.assert_array_equal(conf[0], upsample_nearest(sc, (H, W)))
    assert conf[0][0:8, 8:32].max() == 0.5 and conf[0][8:, :].min() == 1.0
    np.testing.assert_array_equal(conf[1], np.ones((H, W), np.float32))
    # a mask with a confidence map ranks by its `score` (CutS3D: mean SC x 3D front factor); one without by
    # its confidence_score, else the mean SC (1.0 here)
    torch.testing.assert_close(t["scores"], torch.tensor([0.9, 1.0]))
    assert t["image_id"].item() == 1


def test_swapped_width_height_is_refused(tmp_path):
    path, *_ = _write(tmp_path, swap_size=True)
    with pytest.raises(ValueError, match="swapped"):
        PseudoMaskDataset(path, tmp_path / "imgs")[0]


def test_numpy_items_feed_copy_paste(tmp_path):
    path, *_ = _write(tmp_path)
    ds = PseudoMaskDataset(path, tmp_path / "imgs", filter_empty=False)
    a, b = ds.load_numpy(0), ds.load_numpy(1)
    img, masks, conf, info = copy_paste(b["image"], b["masks"], a["image"], a["masks"], a["confidence"], a["scores"],
                                        np.random.default_rng(0), target_conf=b["confidence"])
    assert list(info["chosen"]) == [1]  # n == 2 -> one mask, the higher score (1.0 > 0.8)
    _, t = to_detection_sample({"image": img, "masks": masks, "confidence": conf,
                                    "scores": a["scores"][info["pasted"]], "image_id": b["image_id"]})
    assert t["masks"].shape[0] == len(info["pasted"]) == t["boxes"].shape[0] == t["scores"].shape[0]


def test_polygon_segmentations_are_read_as_masks(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from cuts3d.data.dataset import PseudoMaskDataset

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 12, 2, 12, 8, 2, 8]]}],
        "categories": [{"id": 1, "name": "object"}],
    }
    (tmp_path / "d.json").write_text(json.dumps(coco))
    item = PseudoMaskDataset(tmp_path / "d.json", tmp_path).load_numpy(0)
    assert item["masks"].shape == (1, 20, 30) and item["masks"][0, 3:8, 3:12].all() and not item["masks"][0, 12:].any()
    assert (item["confidence"] == 1).all()


# --- ablation switches at load time: confidence floor (Table 5c), mask-aligned SC (Table 5d) ---


def _with_info(path, **info):
    coco = json.loads(path.read_text())
    coco["info"] = {"description": "cuts3d pseudo-masks", **info}
    path.write_text(json.dumps(coco))
    return path


def test_confidence_floor_lifts_the_maps_and_keeps_the_scores(tmp_path):
    path, _, (m0, _), sc = _write(tmp_path)
    _with_info(path, confidence_floor=0.5)
    plain = PseudoMaskDataset(path, tmp_path / "imgs").load_numpy(0)
    lifted = PseudoMaskDataset(path, tmp_path / "imgs", confidence_floor=0.67).load_numpy(0)
    np.testing.assert_array_equal(lifted["confidence"][0], upsample_nearest(np.maximum(sc, np.float32(0.67)), (H, W)))
    assert lifted["confidence"][0].min() == np.float32(0.67) and plain["confidence"][0].min() == 0.5
    np.testing.assert_array_equal(lifted["confidence"][1], 1.0)  # a mask without SC stays all ones
    # the per-mask scores stay as extracted: the first from its `score`, the second (no SC) the mean of ones
    np.testing.assert_array_equal(lifted["scores"], plain["scores"])


def test_floor_equal_to_the_recorded_one_changes_nothing(tmp_path):
    path, *_ = _write(tmp_path)
    _with_info(path, confidence_floor=0.5)
    a = PseudoMaskDataset(path, tmp_path / "imgs").load_numpy(0)
    b = PseudoMaskDataset(path, tmp_path / "imgs", confidence_floor=0.5).load_numpy(0)
    np.testing.assert_array_equal(a["confidence"], b["confidence"])


def test_floor_below_the_recorded_extraction_floor_is_refused(tmp_path):
    path, *_ = _write(tmp_path)
    _with_info(path, confidence_floor=0.67)
    PseudoMaskDataset(path, tmp_path / "imgs", confidence_floor=0.83)  # above: fine
    with pytest.raises(ValueError, match=r"pseudo\.json: confidence_floor=0\.5 .*extracted with floor 0\.67.*re-extract.*cut\.confidence_floor=0\.5"):
        PseudoMaskDataset(path, tmp_path / "imgs", confidence_floor=0.5)


def test_recorded_floor_falls_back_to_the_extraction_config_beside_the_json(tmp_path):
    path, *_ = _write(tmp_path)
    (tmp_path / "config.yaml").write_text("images: x\ncut:\n  method: cuts3d\n  confidence_floor: 0.3\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # known floor: no warning
        PseudoMaskDataset(path, tmp_path / "imgs", confidence_floor=0.4)
    with pytest.raises(ValueError, match="extracted with floor 0.3"):
        PseudoMaskDataset(path, tmp_path / "imgs", confidence_floor=0.2)


def test_unknown_extraction_floor_assumes_the_default(tmp_path):
    path, *_ = _write(tmp_path)  # no info, no config.yaml
    with pytest.warns(UserWarning, match="does not record its extraction confidence floor; assuming 0.5"):
        ds = PseudoMaskDataset(path, tmp_path / "imgs", confidence_floor=0.6)
    assert ds.load_numpy(0)["confidence"][0].min() == np.float32(0.6)
    with pytest.raises(ValueError, match="do not record their extraction floor.*re-extract"):
        PseudoMaskDataset(path, tmp_path / "imgs", confidence_floor=0.4)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        PseudoMaskDataset(path, tmp_path / "imgs", confidence_floor=1.5)


def test_floor_is_not_checked_without_confidence_maps(tmp_path):
    path, *_ = _write(tmp_path)
    coco = json.loads(path.read_text())
    for ann in coco["annotations"]:
        ann.pop("confidence", None)  # MaskCut pseudo-masks: nothing to floor
    path.write_text(json.dumps(coco))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        item = PseudoMaskDataset(path, tmp_path / "imgs", confidence_floor=0.1).load_numpy(0)
    assert (item["confidence"] == 1).all()


def test_mask_aligned_confidence(tmp_path):
    from cuts3d.masks.filters import align_confidence_to_mask

    path, _, (m0, _), sc = _write(tmp_path)
    patch = PseudoMaskDataset(path, tmp_path / "imgs").load_numpy(0)
    aligned = PseudoMaskDataset(path, tmp_path / "imgs", confidence_align="mask").load_numpy(0)
    np.testing.assert_array_equal(aligned["confidence"][0], align_confidence_to_mask(sc, m0))
    assert not np.array_equal(aligned["confidence"][0], patch["confidence"][0])
    # the low patch row 0, columns 8-31 lies half inside m0 (rows 4-19): outside pixels above the mask in
    # columns 8-23 keep 0.5 (a half-inside patch serves both sides); the mask's own pixels below row 7 are 1
    assert (aligned["confidence"][0][m0 & (np.arange(H)[:, None] >= 8)] == 1).all()
    np.testing.assert_array_equal(aligned["confidence"][1], 1.0)
    with pytest.raises(ValueError, match="confidence_align='border'.*patch.*mask"):
        PseudoMaskDataset(path, tmp_path / "imgs", confidence_align="border")
