"""Scoring (cuts3d.eval.scoring): trimming to the top max_dets per image before COCOeval changes no number,
also with tied scores; COCOeval does not change the ground truth it is given."""

from __future__ import annotations

import copy

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from cuts3d.eval import load_ground_truth, load_predictions
from cuts3d.eval.scoring import keep_top_per_image, run_cocoeval

H, W = 40, 50


def rect(x0: int, y0: int, x1: int, y1: int) -> dict:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return {"size": [H, W], "counts": mask_utils.encode(np.asfortranarray(m))["counts"].decode("ascii")}


@pytest.fixture(scope="module")
def gt():
    rng = np.random.default_rng(0)
    anns = []
    for img in (1, 2, 3):
        for x, y, dx, dy in rng.integers(1, 25, (6, 4)):
            seg = rect(x, y, x + dx, y + dy)
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": 1, "segmentation": seg})
    images = [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in (1, 2, 3)]
    return load_ground_truth({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "o"}]})


def test_trimming_keeps_what_cocoeval_scores_with_ties(gt):
    rng = np.random.default_rng(1)
    preds = []
    for k in range(400):
        x, y, dx, dy = (int(v) for v in rng.integers(1, 25, 4))
        # scores in steps of 0.1: many ties, broken by input order in COCOeval's stable sort
        score = round(float(rng.random()), 1)
        preds.append({"image_id": int(k % 3) + 1, "score": score, "segmentation": rect(x, y, x + dx, y + dy)})
    records = load_predictions(preds, gt).records
    kept, trimmed = keep_top_per_image(records, 10)
    assert len(kept) == 30 and trimmed.dropped == 370 and trimmed.images_over == 3
    assert [r["image_id"] for r in kept] == [r["image_id"] for r in records if r in kept]  # input order kept
    for iou_type in ("segm", "bbox"):
        full = run_cocoeval(gt, records, iou_type, 10, "pycocotools")
        fast = run_cocoeval(gt, kept, iou_type, 10, "pycocotools")
        np.testing.assert_array_equal(full.precision, fast.precision)
        np.testing.assert_array_equal(full.recall, fast.recall)
        assert full.metrics == pytest.approx(fast.metrics, nan_ok=True)


def test_nothing_dropped_under_the_cap(gt):
    preds = [{"image_id": 1, "score": 0.5, "segmentation": rect(1, 1, 5, 5)}] * 3
    records = load_predictions(preds, gt).records
    kept, trimmed = keep_top_per_image(records, 100)
    assert kept == records and trimmed.note(100) is None and trimmed.most == 3


def test_cocoeval_leaves_the_ground_truth_unchanged(gt):
    before = copy.deepcopy(gt.dataset)
    preds = [{"image_id": 2, "score": 0.5, "segmentation": rect(1, 1, 5, 5)}]
    run_cocoeval(gt, load_predictions(preds, gt).records, "segm", 100, "pycocotools")
    assert gt.dataset == before
