"""PseudoMaskDataset: pseudo-mask JSON + images -> detection targets with SC maps at image resolution."""

import json

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
