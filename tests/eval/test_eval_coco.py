"""Class-agnostic COCO evaluation on real COCO val2017 data (dev128): known answers and
agreement with a direct pycocotools computation (GT remapped to category 1)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cuts3d.eval import EvalResult, evaluate, metric_keys
from cuts3d.eval.perturb import perturbed_predictions

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
GT_PATH = DATA / "coco_val2017_dev128" / "annotations.json"

pytestmark = [
    pytest.mark.skipif(
        not GT_PATH.is_file(),
        reason=f"real COCO dev data not found at {GT_PATH} (expected ../shared/data beside the repository)",
    ),
]


def reference(results: list[dict], iou_type: str, max_dets: int = 100, gt_path: Path = GT_PATH) -> dict[str, float]:
    """Direct pycocotools computation: GT remapped to category 1, predictions category 1,
    COCOeval with maxDets [1, 10, max_dets]; stats in percent (-1 -> NaN)."""
    d = json.loads(gt_path.read_text())
    for a in d["annotations"]:
        a["category_id"] = 1
    d["categories"] = [{"id": 1, "name": "object", "supercategory": "object"}]
    res = copy.deepcopy(results)
    for r in res:
        r["category_id"] = 1
        if iou_type == "segm":
            r.pop("bbox", None)
        elif "bbox" not in r:
            r["bbox"] = [float(v) for v in mask_utils.toBbox(r["segmentation"])]
        if iou_type == "bbox":
            r.pop("segmentation", None)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = d
        gt.createIndex()
        E = COCOeval(gt, gt.loadRes(res), iou_type)
        E.params.maxDets = [1, 10, max_dets]
        E.evaluate()
        E.accumulate()
        E.summarize()
    stats = E.stats.copy()
    if max_dets != 100:
        # pycocotools' summarize computes stats[0] with maxDets=100 hard-coded (-1 when 100 is not in
        # maxDets); AP at max_dets detections is the mean of the defined precisions, area "all"
        p = E.eval["precision"][:, :, :, 0, 2]
        stats[0] = p[p > -1].mean()
    keys = metric_keys(max_dets)
    return {k: (float("nan") if s == -1 else float(s) * 100) for k, s in zip(keys, stats[:9], strict=True)}


def assert_same(got: dict[str, float], want: dict[str, float], tol: float = 1e-9) -> None:
    assert list(got) == list(want)
    for k in want:
        if math.isnan(want[k]):
            assert math.isnan(got[k]), k
        else:
            assert got[k] == pytest.approx(want[k], abs=tol), k


@pytest.fixture(scope="module")
def gt_dict() -> dict:
    return json.loads(GT_PATH.read_text())


@pytest.fixture(scope="module")
def shifted8() -> list[dict]:
    return perturbed_predictions(GT_PATH, shift=(8, 0), seed=0, category_id=0)


@pytest.fixture(scope="module")
def shifted8_result(shifted8) -> EvalResult:
    return evaluate(str(GT_PATH), shifted8, iou_types=("segm", "bbox"), max_dets=100, verbose=False)


def test_ground_truth_as_predictions_gives_100_ap(gt_dict):
    # the GT itself (polygon masks, its own boxes, its 80 category ids) as predictions
    preds = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "segmentation": a["segmentation"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in gt_dict["annotations"]
        if not a["iscrowd"]
    ]
    m = evaluate(GT_PATH, preds, iou_types=("segm", "bbox"), max_dets=100, verbose=False)
    assert set(m) == {"segm", "bbox"}
    for t in ("segm", "bbox"):
        for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
            assert m[t][k] == pytest.approx(100.0), (t, k)
        assert m[t]["AR1"] < m[t]["AR10"] < 100.0  # images have more than 1 and 10 instances
    assert m.info["gt_instances"] == 1140 and m.info["gt_crowd_regions"] == 16
    assert m.info["gt_source_categories"] == 80


def test_shifted_masks_match_direct_pycocotools(shifted8, shifted8_result):
    m = shifted8_result
    assert 0 < m["segm"]["AP"] < 100 and 0 < m["bbox"]["AP"] < 100
    # a box shifted by 8 px keeps more IoU than a thin mask part does
    assert m["bbox"]["AP"] > m["segm"]["AP"]
    assert_same(m["segm"], reference(shifted8, "segm"))
    assert_same(m["bbox"], reference(shifted8, "bbox"))
    assert m.info["prediction_category_ids"] == [0]
    assert m.info["boxes"] == "from masks"


def test_eroded_masks_match_direct_pycocotools():
    preds = perturbed_predictions(GT_PATH, erode=2, seed=1, with_bbox=True)
    m = evaluate(GT_PATH, preds, iou_types=("segm", "bbox"), verbose=False)
    assert 0 < m["segm"]["AP"] < 100
    assert_same(m["segm"], reference(preds, "segm"))
    assert_same(m["bbox"], reference(preds, "bbox"))
    assert m.info["boxes"] == "given"


def test_ap_falls_as_the_shift_grows(shifted8_result):
    small = evaluate(GT_PATH, perturbed_predictions(GT_PATH, shift=(2, 2), seed=0), iou_types="segm", verbose=False)
    assert small["segm"]["AP"] > shifted8_result["segm"]["AP"]


def test_category0_predictions_and_80_category_gt(gt_dict, shifted8, shifted8_result):
    # the trap: category 0 predictions against the 80-category GT give 0 AP in plain pycocotools
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(gt_dict)
        gt.createIndex()
        E = COCOeval(gt, gt.loadRes(copy.deepcopy(shifted8)), "segm")
        E.evaluate()
        E.accumulate()
        E.summarize()
    assert E.stats[0] <= 0
    # here the 80-category GT (path) and an already class-agnostic GT (dict) give the same numbers
    agnostic = copy.deepcopy(gt_dict)
    for a in agnostic["annotations"]:
        a["category_id"] = 1
    agnostic["categories"] = [{"id": 1, "name": "object"}]
    cat1 = [dict(p, category_id=1) for p in shifted8]
    m = evaluate(agnostic, cat1, iou_types=("segm",), verbose=False)
    assert_same(m["segm"], shifted8_result["segm"])
    assert m.info["gt_source_categories"] == 1
    # the caller's dict is not modified
    assert agnostic["annotations"][0]["segmentation"] == gt_dict["annotations"][0]["segmentation"]


def test_crowd_regions_are_ignore_regions(gt_dict):
    exact = perturbed_predictions(GT_PATH, seed=None)
    crowd = [
        {"image_id": a["image_id"], "segmentation": a["segmentation"], "score": 1.0}
        for a in gt_dict["annotations"]
        if a["iscrowd"]
    ]
    assert len(crowd) == 16
    m = evaluate(GT_PATH, exact + crowd, iou_types="segm", verbose=False)
    assert m["segm"]["AP"] == pytest.approx(100.0)  # predictions on crowd regions are not false positives


def test_images_without_predictions_count_as_misses(gt_dict):
    exact = perturbed_predictions(GT_PATH, seed=None)
    kept = sorted({p["image_id"] for p in exact})[::2]
    preds = [p for p in exact if p["image_id"] in set(kept)]
    m = evaluate(GT_PATH, preds, iou_types="segm", verbose=False)
    recall = len(preds) / len(exact)  # every kept instance is found exactly, the rest are missed
    assert m["segm"]["AR100"] == pytest.approx(100 * recall)
    # precision 1 up to that recall, 0 after: AP = share of the 101 recall points reached
    assert m["segm"]["AP"] == pytest.approx(100 * np.sum(np.linspace(0, 1, 101) <= recall + 1e-12) / 101)
    assert_same(m["segm"], reference(preds, "segm"))
    missed = len(exact) - len(preds)
    assert (
        f"{128 - len(kept)} of 128 ground-truth images have no prediction; their {missed} instances count as misses"
        in (m.info["warnings"])
    )


def test_pseudo_mask_json_with_confidence_score(gt_dict, shifted8, shifted8_result, tmp_path):
    # a pseudo-mask COCO JSON whose image ids differ from the GT's but whose file names match
    gt_images = {img["id"]: img for img in gt_dict["images"]}
    new_id = {gid: i + 1 for i, gid in enumerate(sorted(gt_images))}
    pseudo = {
        "images": [dict(gt_images[g], id=new_id[g]) for g in sorted(gt_images)],
        "categories": [{"id": 1, "name": "fg"}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": new_id[p["image_id"]],
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": p["segmentation"],
                "confidence_score": p["score"],
            }
            for i, p in enumerate(shifted8)
        ],
    }
    path = tmp_path / "pseudo_masks.json"
    path.write_text(json.dumps(pseudo))
    m = evaluate(GT_PATH, path, iou_types=("segm",), verbose=False)
    assert m.info["score_field"] == "confidence_score"
    assert m.info["prediction_kind"] == "pseudo-mask COCO JSON"
    # counted over the images that have predictions (only those need a match)
    with_preds = {p["image_id"] for p in shifted8}
    assert m.info["images_matched_by_file_name"] == sum(new_id[g] != g for g in with_preds)
    assert_same(m["segm"], shifted8_result["segm"])


def test_max_dets_300_lvis_style(shifted8):
    m = evaluate(GT_PATH, shifted8, iou_types=("segm",), max_dets=300, verbose=False)
    assert list(m["segm"]) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR300"]
    assert m.info["max_dets"] == [1, 10, 300]
    assert_same(m["segm"], reference(shifted8, "segm", max_dets=300))


def _to_uncompressed(rle: dict) -> dict:
    flat = mask_utils.decode(rle).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:  # COCO RLE starts with a run of zeros
        counts = [0] + counts
    return {"size": list(rle["size"]), "counts": counts}


def test_rle_counts_as_bytes_or_list_give_the_same_numbers(shifted8, shifted8_result):
    as_bytes = [
        dict(p, segmentation={"size": p["segmentation"]["size"], "counts": p["segmentation"]["counts"].encode()})
        for p in shifted8
    ]
    m = evaluate(GT_PATH, as_bytes, iou_types=("segm",), verbose=False)
    assert_same(m["segm"], shifted8_result["segm"])
    # uncompressed RLE for a subset of images (keeps the test fast)
    few = sorted({p["image_id"] for p in shifted8})[:20]
    subset = [p for p in shifted8 if p["image_id"] in few]
    as_list = [dict(p, segmentation=_to_uncompressed(p["segmentation"])) for p in subset]
    m_list = evaluate(GT_PATH, as_list, iou_types=("segm",), verbose=False)
    assert_same(m_list["segm"], reference(subset, "segm"))


def test_faster_backend_gives_the_same_numbers(shifted8, shifted8_result):
    pytest.importorskip("faster_coco_eval", reason="optional extra 'fast' (faster-coco-eval) not installed")
    m = evaluate(GT_PATH, shifted8, iou_types=("segm", "bbox"), backend="faster", verbose=False)
    assert m.info["backend"] == "faster"
    assert_same(m["segm"], shifted8_result["segm"])
    assert_same(m["bbox"], shifted8_result["bbox"])
