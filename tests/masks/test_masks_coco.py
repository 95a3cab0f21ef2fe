"""COCO RLE encoding of masks and nearest upsampling of patch maps."""

import json

import numpy as np
from pycocotools import mask as mask_utils

from cuts3d.masks.coco import encode_mask, ground_truth_dataset, mask_annotation
from cuts3d.masks.filters import upsample_nearest


def test_rle_round_trip_with_str_counts():
    m = np.zeros((7, 11), dtype=bool)
    m[2:5, 3:9] = True
    rle = encode_mask(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [7, 11]
    json.dumps(rle)  # JSON-safe
    np.testing.assert_array_equal(mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}), m)


def test_annotation_box_area_and_ground_truth():
    m = np.zeros((10, 10), dtype=bool)
    m[1:4, 2:7] = True
    ann = mask_annotation(m, 3, 0.5)
    assert ann["bbox"] == [2.0, 1.0, 5.0, 3.0] and ann["area"] == 15.0
    assert ann["category_id"] == 1 and ann["score"] == 0.5
    gt = ground_truth_dataset([np.stack([m, ~m]), np.zeros((0, 10, 10), dtype=bool)])
    assert [i["id"] for i in gt["images"]] == [1, 2]
    assert [a["id"] for a in gt["annotations"]] == [1, 2] and "score" not in gt["annotations"][0]


def test_upsample_nearest_matches_block_repeat():
    grid = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(upsample_nearest(grid, (6, 8)), grid.repeat(2, 0).repeat(2, 1))
    assert upsample_nearest(grid, (5, 7)).shape == (5, 7)


def test_confidence_code_round_trip_and_compactness():
    from cuts3d.masks.coco import decode_confidence, encode_confidence

    sc = np.ones((60, 60), dtype=np.float32)
    sc[10, 10:13] = 4 / 6
    sc[30, 5] = 0.5
    code = encode_confidence(sc)
    json.dumps(code)
    assert len(code["runs"]) == 5 and sum(code["runs"]) == 3600
    np.testing.assert_allclose(decode_confidence(code), sc, atol=1e-4)
    bad = dict(code, runs=code["runs"][:-1])
    import pytest

    with pytest.raises(ValueError, match="does not fit"):
        decode_confidence(bad)
