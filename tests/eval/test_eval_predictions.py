"""Predictions (cuts3d.eval.predictions) on a tiny synthetic ground truth: mask arrays are accepted,
unusable image ids are named, and falling back to image ids when no file name matches is said aloud."""

from __future__ import annotations

import numpy as np
import pytest

from cuts3d.eval import EvalInputError, evaluate, load_ground_truth, load_predictions

H, W = 20, 30


def box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


POLY = [3, 4, 13, 4, 13, 12, 3, 12]  # the box [3, 4, 10, 8] as a polygon
GT = {
    "images": [{"id": 7, "file_name": "a/x.jpg", "height": H, "width": W}],
    "annotations": [{"id": 1, "image_id": 7, "category_id": 2, "bbox": [3, 4, 10, 8], "segmentation": [POLY]}],
    "categories": [{"id": 2, "name": "c"}],
}


def test_mask_arrays_are_accepted():
    preds = [{"image_id": 7, "score": 0.9, "segmentation": box_mask(3, 4, 13, 12)}]
    gt = load_ground_truth(GT)
    assert evaluate(GT, preds, iou_types="segm", verbose=False)["segm"]["AP"] > 90
    with pytest.raises(EvalInputError, match=r"prediction #0 \(image_id 7\) has size \[30, 20\]"):
        load_predictions([{"image_id": 7, "score": 0.9, "segmentation": box_mask(3, 4, 13, 12).T}], gt)


def test_unusable_image_ids_are_named():
    preds = [{"image_id": 7, "score": 0.9, "bbox": [1, 1, 2, 2]}, {"image_id": [7], "score": 0.9, "bbox": [1, 1, 2, 2]}]
    with pytest.raises(EvalInputError, match=r"prediction #1 has image_id \[7\]; an image id is a number or a string"):
        load_predictions(preds, load_ground_truth(GT))


def test_id_fallback_is_noted():
    pseudo = {
        "images": [{"id": 7, "file_name": "other_name.png", "height": H, "width": W}],
        "annotations": [{"image_id": 7, "score": 0.9, "segmentation": [[3, 4, 13, 4, 13, 12, 3, 12]]}],
    }
    p = load_predictions(pseudo, load_ground_truth(GT))
    assert p.remapped_by_file_name == 0
    assert p.warnings == [
        "none of the 1 image file names of the predictions (e.g. 'other_name.png') occurs in the ground truth; "
        "images are matched by image id"
    ]


def test_odd_category_ids_are_reported_not_a_crash():
    preds = [
        {"image_id": 7, "score": 0.9, "bbox": [3, 4, 10, 8], "category_id": [3]},
        {"image_id": 7, "score": 0.8, "bbox": [3, 4, 10, 8], "category_id": None},
    ]
    assert load_predictions(preds, load_ground_truth(GT)).source_category_ids == [None, "[3]"]
