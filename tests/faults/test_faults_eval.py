"""Fault injection for the evaluation: wrong numbers must be impossible (issue 11, items 11, 12 and 13).

Synthetic ground truth (two 30 x 40 images with rectangle masks, written to a temporary folder), so every
test runs in about a second without data or downloads.

* item 11: two images ``a/x.jpg`` and ``b/x.jpg`` with perfect pseudo-masks score 100 AP (matching by base
  name scored 25); file names that cannot name one ground-truth image (base names only, two prediction images
  on one ground-truth image, some names unknown) are a one-line error naming the file and the names;
* item 12: compressed RLE that is not RLE (``"!!!garbage###"``, cut off, too short, empty, non-ASCII), NaN or
  far-away polygon coordinates (1e9 crashed pycocotools with a segmentation fault), a binary mask written as
  nested lists: each is a one-line error naming the prediction (index, image) and the reason, also when the
  bad mask is one that ``max_dets`` would not score; a garbage ground-truth mask is named too;
* item 13: a JSON nested too deeply to parse is a one-line error naming the file; a ground truth with a
  deep (but parseable) extra field evaluates (a deepcopy used to raise RecursionError); 100k predictions on
  one image give one note and COCOeval sees only the top ``max_dets``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import pytest

import cuts3d.eval.coco as coco
from cuts3d.eval import EvalInputError, cli, evaluate

REPO = Path(__file__).resolve().parents[2]
H, W = 30, 40  # image height, width in pixels


def rect(x0: int, y0: int, x1: int, y1: int) -> dict[str, Any]:
    """Compressed RLE (str counts) of the rectangle [x0, x1) x [y0, y1) on an H x W image."""
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return {"size": [H, W], "counts": mask_utils.encode(np.asfortranarray(m))["counts"].decode("ascii")}


MASK_A = rect(2, 2, 20, 20)
MASK_B = rect(22, 5, 38, 28)


def ground_truth(names: tuple[str, str] = ("a/x.jpg", "b/x.jpg")) -> dict[str, Any]:
    """Two images (ids 11, 22) with one instance each; COCO category ids 3 and 5."""
    return {
        "images": [
            {"id": 11, "file_name": names[0], "height": H, "width": W},
            {"id": 22, "file_name": names[1], "height": H, "width": W},
        ],
        "annotations": [
            {"id": 1, "image_id": 11, "category_id": 3, "iscrowd": 0, "segmentation": MASK_A},
            {"id": 2, "image_id": 22, "category_id": 5, "iscrowd": 0, "segmentation": MASK_B},
        ],
        "categories": [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}],
    }


def pseudo_masks(names: list[str], masks: list[dict[str, Any]]) -> dict[str, Any]:
    """A pseudo-mask COCO JSON as ``cuts3d extract`` writes it: images numbered 1..N by relative path."""
    return {
        "images": [{"id": i + 1, "file_name": n, "height": H, "width": W} for i, n in enumerate(names)],
        "annotations": [
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "segmentation": m, "confidence_score": 0.9 - 0.1 * i}
            for i, m in enumerate(masks)
        ],
        "categories": [{"id": 1, "name": "fg"}],
    }


def write(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cuts3d eval")
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("cuts3d eval: error: "), err
    return err


@pytest.fixture
def gt_file(tmp_path: Path) -> Path:
    return write(tmp_path / "gt.json", ground_truth())


# ----------------------------------------------------------------------------------------------------------
# item 11: images matched by relative path
# ----------------------------------------------------------------------------------------------------------


def test_same_base_name_in_two_folders_scores_100(gt_file, tmp_path):
    pred = write(tmp_path / "annotations.json", pseudo_masks(["a/x.jpg", "b/x.jpg"], [MASK_A, MASK_B]))
    m = evaluate(gt_file, pred, verbose=False)
    for t in ("segm", "bbox"):
        assert m[t]["AP"] == pytest.approx(100.0), t  # 25.2 when both went to one image by base name
    assert m.info["images_matched_by_file_name"] == 2


def test_paths_from_a_parent_folder_or_with_backslashes_match(gt_file, tmp_path):
    pred = write(tmp_path / "p.json", pseudo_masks(["val/a/x.jpg", ".\\b\\x.jpg"], [MASK_A, MASK_B]))
    assert evaluate(gt_file, pred, iou_types="segm", verbose=False)["segm"]["AP"] == pytest.approx(100.0)


def test_base_names_that_fit_two_images_are_an_error(gt_file, tmp_path, capsys):
    pred = write(tmp_path / "p.json", pseudo_masks(["x.jpg"], [MASK_A]))
    with pytest.raises(EvalInputError) as e:
        evaluate(gt_file, pred, verbose=False)
    msg = str(e.value)
    assert str(pred) in msg and "'x.jpg'" in msg and "'a/x.jpg', 'b/x.jpg'" in msg and "\n" not in msg
    assert run_cli(["--gt", str(gt_file), "--pred", str(pred)]) == 2
    assert "cannot be matched to one image" in one_line_error(capsys)


def test_ground_truth_listing_a_name_twice_is_an_error(tmp_path):
    gt = write(tmp_path / "gt.json", ground_truth(names=("x.jpg", "x.jpg")))
    pred = write(tmp_path / "p.json", pseudo_masks(["x.jpg"], [MASK_A]))
    with pytest.raises(EvalInputError, match=r"lists that file name for several image ids \(11, 22"):
        evaluate(gt, pred, verbose=False)


def test_two_prediction_images_on_one_ground_truth_image_is_an_error(tmp_path):
    gt = write(tmp_path / "gt.json", ground_truth(names=("a/x.jpg", "b/y.jpg")))
    pred = write(tmp_path / "p.json", pseudo_masks(["c/a/x.jpg", "d/a/x.jpg"], [MASK_A, MASK_A]))
    with pytest.raises(EvalInputError, match=r"'c/a/x.jpg' and 'd/a/x.jpg' .* both match the ground-truth image"):
        evaluate(gt, pred, verbose=False)


def test_some_names_unknown_is_an_error_not_an_id_fallback(gt_file, tmp_path):
    # ids 1 and 2 of an extraction must never be read as ground-truth ids because one name is unknown
    pred = write(tmp_path / "p.json", pseudo_masks(["a/x.jpg", "q/y.jpg"], [MASK_A, MASK_B]))
    with pytest.raises(EvalInputError, match=r"1 of 2 images with predictions match no image .* 'q/y.jpg'"):
        evaluate(gt_file, pred, verbose=False)


# ----------------------------------------------------------------------------------------------------------
# item 12: every mask decoded and checked
# ----------------------------------------------------------------------------------------------------------

GOOD = MASK_A["counts"]
# a mask of a 30 x 39 image: valid runs, but they cover 1170 of the 1200 pixels its "size" claims
SHORT = mask_utils.encode(np.asfortranarray(np.ones((H, W - 1), np.uint8)))["counts"].decode("ascii")
BAD_MASKS = {
    "garbage": ({"size": [H, W], "counts": "!!!garbage###"}, "characters outside '0'..'o'"),
    "cut off": ({"size": [H, W], "counts": GOOD + "P"}, "ends inside a run length"),
    "too short": ({"size": [H, W], "counts": SHORT}, "decode to runs covering 1170 pixels but the image has 1200"),
    "empty": ({"size": [H, W], "counts": ""}, "counts string is empty"),
    "non-ascii": ({"size": [H, W], "counts": GOOD[:-1] + "é"}, "characters outside"),
    "nan polygon": ([[0, 0, float("nan"), 0, 5, 5]], "NaN or infinite coordinate"),
    "bitmask as lists": ([[int(5 < x < 20) for x in range(W)] for _ in range(H)], "a binary mask written as nested"),
}


@pytest.mark.parametrize("kind", list(BAD_MASKS))
def test_a_bad_mask_is_named_and_nothing_is_scored(gt_file, tmp_path, capsys, kind):
    seg, reason = BAD_MASKS[kind]
    preds = [
        {"image_id": 11, "score": 0.9, "segmentation": MASK_A},
        {"image_id": 22, "score": 0.8, "segmentation": MASK_B},
        {"image_id": 22, "score": 0.7, "segmentation": seg},
    ]
    path = write(tmp_path / "preds.json", preds)
    with pytest.raises(EvalInputError, match=reason) as e:
        evaluate(gt_file, path, verbose=False)
    assert f"predictions {path}: prediction #2 (image_id 22)" in str(e.value)
    assert run_cli(["--gt", str(gt_file), "--pred", str(path)]) == 2
    one_line_error(capsys)


def test_garbage_beyond_max_dets_is_still_refused(gt_file):
    # the 11th prediction of an image is never scored with max_dets 10, but the file is still corrupt
    preds = [{"image_id": 11, "score": 1.0 - 0.01 * i, "segmentation": MASK_A} for i in range(10)]
    preds.append({"image_id": 11, "score": 0.0, "segmentation": {"size": [H, W], "counts": "!!!garbage###"}})
    with pytest.raises(EvalInputError, match=r"prediction #10 \(image_id 11\): mask is not a valid COCO RLE"):
        evaluate(ground_truth(), preds, max_dets=10, verbose=False)


def test_far_away_polygon_is_an_error_not_a_crash(gt_file, tmp_path):
    # pycocotools rasterises every polygon edge pixel by pixel: 1e9 killed the process (segmentation
    # fault), so this runs in a child process to report instead of killing the test run
    preds = [{"image_id": 11, "score": 0.9, "segmentation": [[0, 0, 1e9, 0, 1e9, 1e9]]}]
    path = write(tmp_path / "preds.json", preds)
    code = (
        "import sys\nfrom cuts3d.eval import evaluate, EvalInputError\n"
        f"try:\n    evaluate({str(gt_file)!r}, {str(path)!r}, verbose=False)\n"
        "except EvalInputError as e:\n    print(e)\n    sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, (done.returncode, done.stderr[-2000:])
    assert "prediction #0 (image_id 11): a polygon coordinate (1000000000.0) lies far outside" in done.stdout


def test_garbage_ground_truth_mask_is_named(tmp_path):
    gt = ground_truth()
    gt["annotations"][1]["segmentation"] = {"size": [H, W], "counts": "!!!garbage###"}
    with pytest.raises(EvalInputError, match=r"annotation #1 \(image id 22\): its RLE counts have characters"):
        evaluate(gt, [{"image_id": 11, "score": 0.9, "segmentation": MASK_A}], verbose=False)


# ----------------------------------------------------------------------------------------------------------
# item 13: deep JSON, very many predictions
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["--pred", "--gt"])
def test_json_nested_too_deeply_is_one_line_naming_the_file(gt_file, tmp_path, capsys, which):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    good = write(tmp_path / "preds.json", [{"image_id": 11, "score": 0.9, "segmentation": MASK_A}])
    argv = {"--gt": str(gt_file), "--pred": str(good), which: str(deep)}
    assert run_cli([x for kv in argv.items() for x in kv]) == 2
    err = one_line_error(capsys)
    assert f"file {str(deep)!r} is nested too deeply to parse" in err


def test_deep_but_parseable_extra_field_evaluates(tmp_path):
    gt = ground_truth()
    deep: list[Any] = []
    for _ in range(600):  # json parses this; copy.deepcopy (two frames a level) did not
        deep = [deep]
    gt["images"][0]["extra"] = deep
    path = write(tmp_path / "gt.json", gt)
    preds = [
        {"image_id": 11, "score": 0.9, "segmentation": MASK_A},
        {"image_id": 22, "score": 0.8, "segmentation": MASK_B},
    ]
    assert evaluate(path, preds, iou_types="segm", verbose=False)["segm"]["AP"] == pytest.approx(100.0)


def test_100k_predictions_on_one_image_one_note_and_only_top_max_dets_scored(gt_file, monkeypatch):
    rng = np.random.default_rng(0)
    shapes = [rect(int(x), int(y), int(x + dx), int(y + dy)) for x, y, dx, dy in rng.integers(1, 18, (50, 4))]
    scores = rng.random(100_000)
    preds = [{"image_id": 11, "score": float(s), "segmentation": shapes[i % 50]} for i, s in enumerate(scores)]
    preds.append({"image_id": 22, "score": 0.5, "segmentation": MASK_B})
    seen: list[int] = []
    real = coco.run_cocoeval

    def spy(gt, records, *args, **kwargs):
        seen.append(len(records))
        return real(gt, records, *args, **kwargs)

    monkeypatch.setattr(coco, "run_cocoeval", spy)
    start = time.perf_counter()
    m = evaluate(gt_file, preds, iou_types="segm", verbose=False)
    elapsed = time.perf_counter() - start
    assert seen == [101]  # the top 100 of image 11 and the one of image 22
    notes = [w for w in m.info["warnings"] if "only the top 100 by score" in w]
    assert notes == [
        "1 image has more than 100 predictions (up to 100000, image_id 11); only the top 100 by score per image "
        "count (maxDets), the other 99900 predictions are not scored"
    ]
    assert m.info["n_predictions"] == 100_001 and m.info["n_scored"] == 101
    assert elapsed < 30, elapsed  # about 2 s on 2 busy cores
