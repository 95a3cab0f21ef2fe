"""Inference of a trained detector on an image folder -> COCO results (paper Sec. 4 zero-shot evaluation).

Usage::

    cuts3d predict --model RUN --images DIR --output PRED.json [--max-dets 100] [--score-thresh 0.0]

Every detection is class-agnostic (``category_id`` 1) with its RLE mask (probabilities > 0.5), box [x, y, w, h]
and score. With ``--gt`` the output is a COCO results list whose ``image_id`` are the ground truth's (matched by
file name). Without it the output is a COCO dict (``images`` with their relative paths, ``annotations``): ids
1..N alone would pair other images of a ground truth numbered the same way, so ``cuts3d eval`` matches by path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from cuts3d.engine.train import TrainConfig, build_model, load_model_weights, resolve_checkpoint
from cuts3d.masks.coco import mask_annotation


def load_trained(run: str | Path, device: str | torch.device = "cpu", **detector_overrides) -> torch.nn.Module:
    """The model of a run folder (its config.yaml and last checkpoint, verified against its sha256) in eval mode.

    Raises:
        FileNotFoundError: ``run`` has no config.yaml.
        CheckpointError: no checkpoint, ``last_checkpoint`` naming a missing file, or a damaged checkpoint.
    """
    run = Path(run)
    cfg_file = run / "config.yaml"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} not found; --model must be a run folder written by `cuts3d train`")
    # Before building the model: a missing or empty last_checkpoint is reported without any other work.
    resolve_checkpoint(run)
    try:
        saved = yaml.safe_load(cfg_file.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{cfg_file}: not YAML ({' '.join(str(err).split())[:120]}); restore the run's config.yaml") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{cfg_file}: expected a mapping of training settings; restore the run's config.yaml")
    cfg = TrainConfig.from_dict(saved)
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "backbone_weights": None,
                                 "detector": {**cfg.detector, **detector_overrides}})
    model = build_model(cfg)
    load_model_weights(model, run)
    return model.to(device).eval()


@torch.no_grad()
def predict(model: torch.nn.Module, images: list, image_ids: list[int], device: str = "cpu",
            progress: bool = True) -> list[dict]:
    """COCO results for ``images`` (paths) with the given ids; ``model`` must be in eval mode (not DDP-wrapped).

    ``progress=False`` hides the progress bar (evaluation during training, under the training bar)."""
    from cuts3d.io.images import load_image

    results = []
    for path, image_id in tqdm(list(zip(images, image_ids)), desc="predict", unit="img", disable=not progress):
        rgb = load_image(path)
        tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div(255).to(device)
        out = model([tensor])[0]
        for mask, score in zip(out["masks"][:, 0].cpu().numpy() > 0.5, out["scores"].cpu().tolist()):
            if mask.any():
                results.append(mask_annotation(mask, image_id, score))
    return results


def run_predict(run: str | Path, images: str | Path, output: str | Path, max_dets: int = 100,
                score_thresh: float = 0.0, gt: str | Path | None = None, device: str = "auto") -> Path:
    """Predict on an image folder/list and write the COCO results JSON.

    Args:
        device: "auto", "cpu", "cuda" or "cuda:N" (cuts3d.devices.resolve_device; DeviceError if absent).
    """
    from cuts3d.devices import resolve_device
    from cuts3d.io.images import list_images

    torch_device = resolve_device(device)
    records = list_images(images)
    if gt is not None:
        gt = Path(gt)
        if not gt.is_file():
            raise FileNotFoundError(f"--gt {gt}: no such file; pass the ground-truth COCO JSON of these images")
        try:
            by_name = {im["file_name"]: im["id"] for im in json.loads(gt.read_bytes())["images"]}
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"--gt {gt}: not a COCO JSON with images (id, file_name) ({type(err).__name__}); "
                             "pass the ground-truth COCO JSON of these images") from None
        missing = [r.rel for r in records if r.rel not in by_name]
        if missing:
            raise ValueError(f"{len(missing)} images are not in {gt} (e.g. {missing[:3]}); use the ground truth's image folder")
        ids = [by_name[r.rel] for r in records]
    else:
        ids = list(range(1, len(records) + 1))
    model = load_trained(run, torch_device, detections_per_img=max_dets, score_thresh=score_thresh)
    results = predict(model, [r.path for r in records], ids, str(torch_device))
    if gt is None:
        # Ids 1..N mean nothing to a ground truth numbered the same way (they would pair other images silently):
        # write a COCO dict whose images carry their relative paths, which `cuts3d eval` matches by path.
        from PIL import Image

        images_info = []
        for r, image_id in zip(records, ids):
            with Image.open(r.path) as im:
                width, height = im.size
            images_info.append({"id": image_id, "file_name": r.rel, "width": width, "height": height})
        for k, ann in enumerate(results, start=1):
            ann["id"] = k
        payload: Any = {"images": images_info, "annotations": results,
                        "categories": [{"id": 1, "name": "object", "supercategory": "object"}]}
    else:
        payload = results
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(payload))
    return output
