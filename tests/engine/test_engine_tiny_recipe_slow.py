"""Slow: the tiny_cpu preset's learning bar (issue 10) on further training seeds (seed 0 runs in the default suite).

Run with ``python -m pytest -q -m slow``.
"""

import pytest

from cuts3d.engine.cli_train import preset_or_file
from cuts3d.engine.predict import run_predict
from cuts3d.engine.train import resolve_train_config, train
from cuts3d.eval import evaluate
from cuts3d.synthetic.detection import write_detection_set


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_tiny_preset_bar_holds_for_other_seeds(tmp_path, seed):
    data, images = write_detection_set(tmp_path / "train", range(24))
    unseen_data, unseen_images = write_detection_set(tmp_path / "unseen", range(1000, 1016))
    run = tmp_path / "run"
    base = {"data": str(data), "images": str(images), "output": str(run)}
    train(resolve_train_config(base, [preset_or_file("tiny_cpu")], [f"seed={seed}", "log_period=100"]))
    ap50 = {}
    for name, (gt, folder) in {"train": (data, images), "unseen": (unseen_data, unseen_images)}.items():
        pred = run_predict(run, folder, tmp_path / f"pred_{name}.json", gt=gt)
        ap50[name] = evaluate(str(gt), str(pred), iou_types=("segm",), verbose=False)["segm"]["AP50"]
    assert ap50["train"] >= 50 and ap50["unseen"] >= 25, ap50
