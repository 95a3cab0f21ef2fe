"""Input checks of the class-agnostic evaluation: each bad input raises EvalInputError with a
message that names the file and the problem; good variants (bytes RLE, pseudo-mask JSON) pass."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cuts3d.eval import EvalInputError, evaluate, load_ground_truth, load_predictions
from cuts3d.eval.perturb import perturbed_predictions

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
GT_PATH = DATA / "coco_val2017_dev128" / "annotations.json"

pytestmark = [
    pytest.mark.skipif(
        not GT_PATH.is_file(),
        reason=f"real COCO dev data not found at {GT_PATH} (expected ../shared/data beside the repository)",
    ),
]


@pytest.fixture(scope="module")
def gt():
    return load_ground_truth(GT_PATH)


@pytest.fixture(scope="module")
def gt_dict() -> dict:
    return json.loads(GT_PATH.read_text())


@pytest.fixture(scope="module")
def preds(gt_dict) -> list[dict]:
    """Exact masks (RLE) and boxes for the first 10 images with instances."""
    first = sorted({a["image_id"] for a in gt_dict["annotations"] if not a["iscrowd"]})[:10]
    sub = dict(gt_dict, annotations=[a for a in gt_dict["annotations"] if a["image_id"] in first])
    return perturbed_predictions(sub, seed=0, with_bbox=True)


def write(tmp_path: Path, obj, name: str = "preds.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


def test_error_class_is_a_value_error():
    assert issubclass(EvalInputError, ValueError)


def test_ground_truth_is_made_class_agnostic(gt, gt_dict):
    assert gt.dataset["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert {a["category_id"] for a in gt.dataset["annotations"]} == {1}
    assert [a["id"] for a in gt.dataset["annotations"]] == list(range(1, 1157))
    assert sum(a["iscrowd"] for a in gt.dataset["annotations"]) == 16 == gt.n_crowd
    assert gt.has_masks and gt.n_source_categories == 80
    assert len({a["category_id"] for a in gt_dict["annotations"]}) == 79  # input untouched


def test_empty_predictions(gt, tmp_path):
    path = write(tmp_path, [])
    with pytest.raises(EvalInputError, match="empty") as e:
        load_predictions(path, gt)
    assert str(path) in str(e.value)
    with pytest.raises(EvalInputError, match="empty"):
        load_predictions({"images": [], "annotations": []}, gt)


def test_predictions_for_unknown_images_are_named(gt, preds, tmp_path):
    bad = preds + [dict(preds[0], image_id=999999999), dict(preds[1], image_id="000000000139")]
    path = write(tmp_path, bad)
    with pytest.raises(EvalInputError) as e:
        load_predictions(path, gt)
    msg = str(e.value)
    assert str(path) in msg and "999999999" in msg and "'000000000139'" in msg
    assert "2 image ids that are not in the ground truth" in msg
    assert "the string '139' is not the number 139" in msg


def test_missing_scores(gt, preds, tmp_path):
    none = [{k: v for k, v in p.items() if k != "score"} for p in preds]
    path = write(tmp_path, none)
    with pytest.raises(EvalInputError, match="no prediction has a score") as e:
        load_predictions(path, gt)
    assert "--score-key" in str(e.value) and str(path) in str(e.value)
    some = [dict(p) for p in preds]
    del some[3]["score"]
    with pytest.raises(EvalInputError, match=r"1 of \d+ predictions have no 'score' \(first: prediction #3"):
        load_predictions(some, gt)
    # a named score field
    renamed = [dict(n, objectness=p["score"]) for n, p in zip(none, preds, strict=True)]
    assert load_predictions(renamed, gt, score_key="objectness").score_field == "objectness"


def test_nan_and_non_numeric_scores(gt, preds):
    nan = [dict(p) for p in preds]
    nan[5]["score"] = float("nan")
    nan[7]["score"] = float("inf")
    with pytest.raises(EvalInputError, match=r"2 predictions have a NaN or infinite 'score' \(first: #5"):
        load_predictions(nan, gt)
    text = [dict(p) for p in preds]
    text[2]["score"] = "0.9"
    with pytest.raises(EvalInputError, match="not a number"):
        load_predictions(text, gt)


def test_nan_score_from_a_json_file(gt, preds, tmp_path):
    path = tmp_path / "nan.json"
    path.write_text(json.dumps([dict(preds[0], score=float("nan"))]))  # written as NaN, as Python's json does
    assert "NaN" in path.read_text()
    with pytest.raises(EvalInputError, match="NaN"):
        load_predictions(path, gt)


def test_mask_size_swapped(gt, preds):
    bad = [dict(p) for p in preds]
    h, w = bad[0]["segmentation"]["size"]
    assert h != w
    for i in (0, 1):
        bad[i] = dict(bad[i], segmentation=dict(bad[i]["segmentation"], size=[w, h]))
    with pytest.raises(EvalInputError) as e:
        load_predictions(bad, gt)
    msg = str(e.value)
    assert "2 masks have a size that differs from the image's" in msg and "look swapped" in msg
    assert f"has size [{w}, {h}] (height, width) but the image is {h} x {w}" in msg


def test_mask_size_other_resolution(gt, preds):
    bad = [dict(p) for p in preds]
    h, w = bad[0]["segmentation"]["size"]
    bad[0] = dict(bad[0], segmentation=dict(bad[0]["segmentation"], size=[h // 2, w // 2]))
    with pytest.raises(EvalInputError, match="resize masks to the original image size") as e:
        load_predictions(bad, gt)
    assert f"has size [{h // 2}, {w // 2}] (height, width) but the image is {h} x {w}" in str(e.value)
    assert "1 mask has a size that differs" in str(e.value)
    assert "they do not look swapped" in str(e.value)


def test_rle_counts_as_bytes_and_list(gt, preds):
    as_bytes = [
        dict(p, segmentation=dict(p["segmentation"], counts=p["segmentation"]["counts"].encode())) for p in preds
    ]
    a = load_predictions(as_bytes, gt)
    b = load_predictions(preds, gt)
    assert [r["segmentation"] for r in a.records] == [r["segmentation"] for r in b.records]
    h, w = preds[0]["segmentation"]["size"]
    wrong = [dict(preds[0], segmentation={"size": [h, w], "counts": [10, 20, 30]})]
    with pytest.raises(EvalInputError, match=rf"counts sum to 60 pixels but size \[{h}, {w}\] has {h * w}"):
        load_predictions(wrong, gt)
    ok = [dict(preds[0], segmentation={"size": [h, w], "counts": [5, 10, h * w - 15]})]
    (rec,) = load_predictions(ok, gt).records
    assert isinstance(rec["segmentation"]["counts"], str)
    import pycocotools.mask as mask_utils

    assert mask_utils.area(rec["segmentation"]) == 10


def test_boxes_in_corner_format(gt, preds):
    xyxy = [
        dict(p, bbox=[p["bbox"][0], p["bbox"][1], p["bbox"][0] + p["bbox"][2], p["bbox"][1] + p["bbox"][3]])
        for p in preds
    ]
    with pytest.raises(EvalInputError, match=r"look like \[x1, y1, x2, y2\]"):
        load_predictions(xyxy, gt)  # detected by comparing with the masks
    boxes_only = [{k: v for k, v in p.items() if k != "segmentation"} for p in xyxy]
    with pytest.raises(EvalInputError, match=r"width = x2 - x1"):
        load_predictions(boxes_only, gt)  # detected from boxes running past the image border


def test_boxes_normalised_or_malformed(gt, preds):
    sizes = {i["id"]: (i["width"], i["height"]) for i in gt.images.values()}
    norm = [
        {
            "image_id": p["image_id"],
            "score": p["score"],
            "bbox": [v / sizes[p["image_id"]][j % 2] for j, v in enumerate(p["bbox"])],
        }
        for p in preds
    ]
    with pytest.raises(EvalInputError, match="normalised"):
        load_predictions(norm, gt)
    neg = [dict(preds[0], bbox=[10, 10, -5, 4])]
    with pytest.raises(EvalInputError, match="negative width or height"):
        load_predictions(neg, gt)
    three = [dict(preds[0], bbox=[10, 10, 5])]
    with pytest.raises(EvalInputError, match=r"bbox must be 4 numbers \[x, y, width, height\]"):
        load_predictions(three, gt)
    nothing = [{"image_id": preds[0]["image_id"], "score": 0.5}]
    with pytest.raises(EvalInputError, match="neither 'segmentation' nor 'bbox'"):
        load_predictions(nothing, gt)


def test_segm_requested_for_box_only_predictions(preds, tmp_path):
    boxes = [{k: v for k, v in p.items() if k != "segmentation"} for p in preds]
    path = write(tmp_path, boxes)
    with pytest.raises(ValueError, match=r"segm evaluation requested but no prediction has 'segmentation'") as e:
        evaluate(GT_PATH, path, iou_types=("segm", "bbox"), verbose=False)
    assert "--iou-type bbox" in str(e.value) and str(path) in str(e.value)
    # boxes alone evaluate fine, and only bbox is returned
    m = evaluate(GT_PATH, path, iou_types=("bbox",), verbose=False)
    assert list(m) == ["bbox"] and 0 < m["bbox"]["AP"] < 100


def test_segm_requested_for_box_only_ground_truth(gt_dict, preds):
    boxes_gt = dict(
        gt_dict, annotations=[{k: v for k, v in a.items() if k != "segmentation"} for a in gt_dict["annotations"]]
    )
    with pytest.raises(EvalInputError, match="a box-only benchmark"):
        evaluate(boxes_gt, preds, iou_types=("segm",), verbose=False)
    m = evaluate(boxes_gt, preds, verbose=False)  # default: bbox only for box-only ground truth
    assert list(m) == ["bbox"]


def test_bad_ground_truth_and_arguments(preds, tmp_path):
    with pytest.raises(EvalInputError, match="does not exist and is not a benchmark name"):
        evaluate(tmp_path / "nope.json", preds, verbose=False)
    results = write(tmp_path, preds, "results.json")
    with pytest.raises(EvalInputError, match="is a JSON list \\(a results file\\?\\)"):
        evaluate(results, preds, verbose=False)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(EvalInputError, match="broken.json' is not valid JSON"):
        evaluate(broken, preds, verbose=False)
    with pytest.raises(EvalInputError, match="max_dets must be an integer >= 10"):
        evaluate(GT_PATH, preds, max_dets=5, verbose=False)
    with pytest.raises(EvalInputError, match="unknown IoU type 'mask'"):
        evaluate(GT_PATH, preds, iou_types=("mask",), verbose=False)
    with pytest.raises(EvalInputError, match="unknown backend"):
        evaluate(GT_PATH, preds, backend="detectron2", verbose=False)
    with pytest.raises(EvalInputError, match="without an 'annotations' list"):
        evaluate(GT_PATH, {"results": preds}, verbose=False)


def test_verbose_output_says_what_was_used(preds, gt_dict, capsys):
    pseudo = {
        "annotations": [
            dict({k: v for k, v in p.items() if k != "score"}, confidence_score=p["score"], category_id=0)
            for p in preds
        ]
    }
    m = evaluate(GT_PATH, pseudo, iou_types=("segm",), verbose=True)
    out = capsys.readouterr().out
    assert "score from 'confidence_score'" in out
    assert "category ids [0] mapped to 1" in out
    assert "| segm |" in out and f"{m['segm']['AP']:.2f}" in out
    n_missed = sum(1 for a in gt_dict["annotations"] if not a["iscrowd"]) - len(preds)
    assert f"118 of 128 ground-truth images have no prediction; their {n_missed} instances count as misses" in out
    assert not math.isnan(m["segm"]["AP"])
    assert np.isnan(m["segm"]["APs"]) or m["segm"]["APs"] >= 0
