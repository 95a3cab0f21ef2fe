"""Ground truth (cuts3d.eval.ground_truth): masks are checked as predictions are, and the caller's dict is
only read."""

from __future__ import annotations

import copy

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from cuts3d.eval import EvalInputError, load_ground_truth

H, W = 20, 30


def gt_with(seg) -> dict:
    return {
        "images": [{"id": 1, "file_name": "x.jpg", "height": H, "width": W}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 9, "segmentation": seg}],
        "categories": [{"id": 9, "name": "c"}],
    }


def test_masks_of_every_form_load_and_get_area_and_box():
    m = np.zeros((H, W), np.uint8)
    m[2:6, 3:9] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    for seg in (rle, {"size": [H, W], "counts": rle["counts"].decode()}, [[3, 2, 9, 2, 9, 6, 3, 6]]):
        data = gt_with(seg)
        before = copy.deepcopy(data)
        gt = load_ground_truth(data)
        (ann,) = gt.dataset["annotations"]
        assert "area" in ann and len(ann["bbox"]) == 4
        assert data == before  # the caller's dict is not changed


def test_bad_masks_are_named():
    m = mask_utils.encode(np.asfortranarray(np.ones((W, H), np.uint8)))  # (width, height): swapped
    with pytest.raises(EvalInputError, match=r"annotation #0 \(image id 1\) has a mask of size \[30, 20\]"):
        load_ground_truth(gt_with(m))
    with pytest.raises(EvalInputError, match=r"annotation #0 \(image id 1\): uncompressed RLE counts sum to 7"):
        load_ground_truth(gt_with({"size": [H, W], "counts": [3, 4]}))
    with pytest.raises(EvalInputError, match=r"annotation #0 \(image id 1\): a polygon has a NaN"):
        load_ground_truth(gt_with([[3, 2, float("nan"), 2, 9, 6]]))
    # pycocotools reads [[x, y, x, y]] as a list of boxes and fails inside COCOeval (TypeError)
    with pytest.raises(EvalInputError, match=r"annotation #0 \(image id 1\): a polygon needs .* got 4; drop that"):
        load_ground_truth(gt_with([[3, 2, 9, 2]]))
    with pytest.raises(EvalInputError, match=r"1 annotation mask is not valid COCO RLE; first: annotation #0"):
        load_ground_truth(gt_with({"size": [H, W], "counts": "!!!garbage###"}))


def test_hostile_ids_and_boxes_are_named():
    bad_id = gt_with([[3, 2, 9, 2, 9, 6]])
    bad_id["images"][0]["id"] = [1]
    with pytest.raises(EvalInputError, match=r"images\[0\] has id \[1\]; an image id is a number or a string"):
        load_ground_truth(bad_id)
    list_ref = gt_with([[3, 2, 9, 2, 9, 6]])
    list_ref["annotations"][0]["image_id"] = [1]
    with pytest.raises(EvalInputError, match=r"annotations refer to image ids missing from 'images': '\[1\]'"):
        load_ground_truth(list_ref)
    box = gt_with([[3, 2, 9, 2, 9, 6]])
    box["annotations"][0]["bbox"] = [1, 2, "3", 4]
    with pytest.raises(EvalInputError, match=r"annotation #0 \(image id 1\) has bbox \[1, 2, '3', 4\]; a box is 4"):
        load_ground_truth(box)
