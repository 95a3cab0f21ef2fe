"""COCO encoding of masks (spec 2.6 and 8): compressed RLE via pycocotools, ``counts`` as str, boxes from RLE."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Compressed RLE of an (H, W) bool mask: ``{"size": [H, W], "counts": str}`` (JSON-safe)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def mask_annotation(mask: np.ndarray, image_id: int, score: float | None = None, **extra: Any) -> dict[str, Any]:
    """COCO annotation / result dict for one mask: segmentation, bbox [x, y, w, h], area, category 1.

    Args:
        mask: (H, W) bool.
        image_id: COCO image id.
        score: detection score (omitted when None, as for ground truth).
        extra: further fields (``id``, ``iscrowd`` ...).
    """
    rle = encode_mask(mask)
    ann = {
        "image_id": int(image_id),
        "category_id": 1,
        "segmentation": rle,
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "area": float(mask_utils.area(rle)),
    }
    if score is not None:
        ann["score"] = float(score)
    ann.update(extra)
    return ann


def ground_truth_dataset(masks_per_image: list[np.ndarray]) -> dict[str, Any]:
    """Class-agnostic COCO ground truth from per-image (K, H, W) bool mask stacks (image ids 1..N)."""
    images, annotations = [], []
    for idx, masks in enumerate(masks_per_image, start=1):
        H, W = masks.shape[1:]
        images.append({"id": idx, "width": int(W), "height": int(H), "file_name": f"scene_{idx:04d}.png"})
        for m in masks:
            annotations.append(mask_annotation(m, idx, id=len(annotations) + 1, iscrowd=0))
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
    }
