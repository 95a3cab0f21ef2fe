"""Self-training: the detector's own predictions become the next round's annotations (paper Sec. 4; spec 4.4).

Usage::

    cuts3d selftrain --model RUN --data OUT/annotations.json --images DIR --output RUN2 [--config ...] [key=value ...]

Round annotations (CutLER's ``get_self_training_ann.py``): per image the top 30 predictions with score >= 0.7,
plus every old pseudo-mask whose mask IoU with all kept predictions is < 0.5 (old masks keep their Spatial
Confidence; predictions carry none, so their confidence is 1). Then training starts from the previous model with
the self-training settings: lr 0.005, 80k iterations at constant lr, no DropLoss, copy-paste scale U[0.5, 1].
CutS3D uses exactly one round.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml
from pycocotools import mask as mask_utils

from cuts3d.engine.train import TrainConfig, resolve_train_config, train

# CutLER's cascade_mask_rcnn_R_50_FPN_self_train.yaml: lr 0.005, 80k iterations, gamma 1.0 (constant), no
# DropLoss, copy-paste scale U[0.5, 1]; it sets no WEIGHT_DECAY, so detectron2's default 1e-4 applies (the first
# round's config sets 5e-5), and the warm-up is detectron2's default (1000 iterations from a factor of 0.001).
SELFTRAIN_SETTINGS: dict[str, Any] = {
    "lr": 0.005,
    "max_iter": 80_000,
    "steps": [],
    "gamma": 1.0,
    "weight_decay": 1e-4,
    "warmup_iters": 1000,
    "warmup_factor": 0.001,
    "droploss": False,
    "copy_paste_scale": [0.5, 1.0],
}


def _rle(seg: dict[str, Any]) -> dict[str, Any]:
    counts = seg["counts"]
    return {"size": seg["size"], "counts": counts.encode() if isinstance(counts, str) else counts}


def merge_round(old: dict[str, Any], predictions: Sequence[dict[str, Any]], score_thresh: float = 0.7,
                top_k: int = 30, iou_thresh: float = 0.5) -> dict[str, Any]:
    """Next round's COCO dict from the old pseudo-masks and the detector's predictions.

    Args:
        old: the previous COCO annotations (images, annotations with RLE ``segmentation``).
        predictions: COCO results (``image_id``, RLE ``segmentation``, ``score``) on the same images.
        score_thresh: keep predictions with score >= this (0.7 in round 1).
        top_k: at most this many predictions per image, highest scores first.
        iou_thresh: an old mask is added when its IoU with every kept prediction is < this.
    """
    preds_by_image: dict[int, list] = {}
    for p in predictions:
        if p["score"] >= score_thresh:
            preds_by_image.setdefault(int(p["image_id"]), []).append(p)
    old_by_image: dict[int, list] = {}
    for a in old["annotations"]:
        old_by_image.setdefault(int(a["image_id"]), []).append(a)
    annotations = []
    for img in old["images"]:
        kept = sorted(preds_by_image.get(int(img["id"]), []), key=lambda p: -p["score"])[:top_k]
        for p in kept:
            rle = _rle(p["segmentation"])
            annotations.append({"image_id": img["id"], "category_id": 1, "iscrowd": 0, "segmentation": p["segmentation"],
                                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": float(mask_utils.area(rle)),
                                "score": float(p["score"])})
        kept_rles = [_rle(p["segmentation"]) for p in kept]
        for a in old_by_image.get(int(img["id"]), []):
            if kept_rles:
                ious = mask_utils.iou([_rle(a["segmentation"])], kept_rles, [0] * len(kept_rles))
                if np.max(ious) >= iou_thresh:
                    continue
            annotations.append({k: v for k, v in a.items() if k != "id"})
    for i, a in enumerate(annotations, start=1):
        a["id"] = i
    return {**{k: v for k, v in old.items() if k != "annotations"}, "annotations": annotations}


def selftrain(model_run: str | Path, data: str | Path, images: str | Path, output: str | Path,
              config_files: Sequence[str | Path] = (), overrides: Sequence[str] = (), score_thresh: float = 0.7,
              device: str | None = None, resume: bool = False, force: bool = False, overwrite: bool = False) -> Path:
    """Predict with ``model_run`` on the training images, merge (:func:`merge_round`) and train the next round.

    Args:
        device: "auto", "cpu", "cuda", "cuda:N" for the predictions and the training (None: the config's).
        resume: continue an interrupted round in ``output`` from its last checkpoint, with the round's
            annotations already there (no new predictions); ``force``: even if settings changed.
        overwrite: start the round over in an ``output`` that holds a run. Without it such a folder is refused
            before any prediction is made.

    Raises:
        TrainSetupError, CheckpointError, DeviceError, FileNotFoundError: set-up problems (one line), before the
            predictions.
    """
    from cuts3d.devices import resolve_device
    from cuts3d.engine.predict import load_trained, predict
    from cuts3d.engine.runs import TrainSetupError, check_training_data, existing_run_files, existing_run_message
    from cuts3d.pipeline.shards import atomic_write_text

    model_run, out, root = Path(model_run), Path(output), Path(images)
    prev_file = model_run / "config.yaml"
    if not prev_file.is_file():
        raise FileNotFoundError(f"{prev_file} not found; --model must be the previous round's run folder")
    round_json = out / "selftrain_annotations.json"
    # The previous round's checkpoint gives every weight (init_from): no ResNet-50 file is read or downloaded.
    base = {"data": str(round_json), "images": str(images), "output": str(out), "init_from": str(model_run),
            "backbone_weights": "none"}
    if device is not None:
        base["device"] = device
    prev = TrainConfig.from_dict(yaml.safe_load(prev_file.read_text()))
    # Same architecture as the previous round; the self-training schedule overrides presets (not key=value).
    keep = {"backbone": prev.backbone, "detector": prev.detector, "min_sizes": list(prev.min_sizes), "max_size": prev.max_size,
            "test_size": prev.test_size}
    cfg = resolve_train_config({**keep, **SELFTRAIN_SETTINGS, **base}, config_files, overrides)
    torch_device = resolve_device(cfg.device)
    if resume:
        if not round_json.is_file():
            raise TrainSetupError(f"--resume: {round_json} does not exist, so the round never got to training; drop "
                                  "--resume (add --overwrite if the folder holds other run files)")
        return train(cfg, resume=True, force=force)
    found = existing_run_files(out)
    if found and not overwrite:
        raise TrainSetupError(existing_run_message(out, found))
    # The inputs of the predictions are checked before the first one is made (hours on ImageNet).
    check_training_data(data, images)
    old = json.loads(Path(data).read_bytes())
    # Images without pseudo-masks need not exist (check_training_data skips them); predict on those that do.
    present = [im for im in old["images"] if (root / im["file_name"]).is_file()]
    model = load_trained(model_run, torch_device, detections_per_img=30, score_thresh=0.0)
    preds = predict(model, [root / im["file_name"] for im in present], [im["id"] for im in present], str(torch_device))
    out.mkdir(parents=True, exist_ok=True)
    merged = merge_round(old, preds, score_thresh=score_thresh)
    atomic_write_text(round_json, json.dumps(merged))
    return train(cfg, overwrite=overwrite)
