"""Self-training merge rules on crafted predictions, and one tiny round end to end."""

import json

import numpy as np
import pytest

from cuts3d.engine.selftrain import merge_round
from cuts3d.masks.coco import mask_annotation


def _box_mask(y0, y1, x0, x1, shape=(40, 40)):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_merge_keeps_confident_top_predictions_and_unmatched_old_masks():
    old_a = mask_annotation(_box_mask(0, 10, 0, 10), 1, 0.9, id=1, confidence={"size": [2, 2], "values": [1.0], "runs": [4]})
    old_b = mask_annotation(_box_mask(20, 30, 20, 30), 1, 0.9, id=2)
    old = {"images": [{"id": 1, "width": 40, "height": 40, "file_name": "a.png"}], "annotations": [old_a, old_b],
           "categories": [{"id": 1, "name": "object"}]}
    preds = [
        mask_annotation(_box_mask(0, 10, 1, 10), 1, 0.95),  # IoU 0.9 with old_a: replaces it
        mask_annotation(_box_mask(30, 40, 0, 10), 1, 0.71),  # >= 0.7 but not in the top 30 (35 score higher)
        mask_annotation(_box_mask(20, 30, 20, 30), 1, 0.69),  # below 0.7: dropped, so old_b stays
    ]
    preds += [mask_annotation(_box_mask(i, i + 1, 39, 40), 1, 0.8) for i in range(35)]  # many tiny ones
    merged = merge_round(old, preds)
    scores = [a.get("score") for a in merged["annotations"]]
    kept_preds = [a for a in merged["annotations"] if "confidence" not in a and a["score"] != 0.9]
    assert len(kept_preds) == 30  # top 30 predictions per image
    assert kept_preds[0]["score"] == 0.95 and 0.69 not in scores and 0.71 not in scores
    olds = [a for a in merged["annotations"] if a["score"] == 0.9]
    assert len(olds) == 1 and olds[0]["bbox"] == [20.0, 20.0, 10.0, 10.0]  # old_a was matched, old_b added
    assert [a["id"] for a in merged["annotations"]] == list(range(1, len(merged["annotations"]) + 1))
    json.dumps(merged)


def test_selftrain_resume_continues_the_round_without_predicting_again(tmp_path, monkeypatch):
    from cuts3d.cli import main
    from cuts3d.engine.events import release_run_logger
    from cuts3d.synthetic.detection import write_detection_set

    data, images = write_detection_set(tmp_path / "data", range(2))
    prev, out = tmp_path / "prev", tmp_path / "round1"
    fast = ["--config", "tiny_cpu", "precise_bn_iters=0", "num_workers=0", "checkpoint_period=1"]  # key=value last
    try:
        assert main(["train", "--data", str(data), "--images", str(images), "--output", str(prev), *fast, "max_iter=1"]) == 0
        args = ["selftrain", "--model", str(prev), "--data", str(data), "--images", str(images), "--output", str(out),
                "--score-thresh", "0.0"]
        assert main([*args, *fast, "max_iter=1"]) == 0
        round_json = (out / "selftrain_annotations.json").read_bytes()
        import cuts3d.engine.predict as predict_mod

        monkeypatch.setattr(predict_mod, "load_trained", lambda *a, **k: pytest.fail("predicted again on --resume"))
        assert main([*args, "--resume", *fast, "max_iter=2"]) == 0
    finally:
        release_run_logger()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2]
    assert (out / "selftrain_annotations.json").read_bytes() == round_json
