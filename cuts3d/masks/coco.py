"""COCO encoding of masks (spec 2.6 and 8) and of Spatial Confidence maps (spec 3.5).

Masks: compressed RLE via pycocotools with ``counts`` as str (a peer wrote bytes and garbled its JSON), boxes
and areas from the RLE.

Confidence maps (patch-level (h, w) float in [0, 1], mostly 1) are stored per annotation as a run-length code
over the row-major map::

    "confidence": {"size": [h, w], "values": [1.0, 0.6667, 1.0, ...], "runs": [130, 2, 468, ...]}

``values[i]`` (rounded to 4 decimals) repeats ``runs[i]`` times; the runs sum to h * w. A 60 x 60 map that is 1
outside a few border patches takes a few dozen numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Compressed RLE of an (H, W) bool mask: ``{"size": [H, W], "counts": str}`` (JSON-safe)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def mask_annotation(mask: np.ndarray, image_id: int | None, score: float | None = None, **extra: Any) -> dict[str, Any]:
    """COCO annotation / result dict for one mask: segmentation, bbox [x, y, w, h], area, category 1.

    Args:
        mask: (H, W) bool.
        image_id: COCO image id (None: omitted, assigned later, e.g. when shards are merged).
        score: detection score (omitted when None, as for ground truth).
        extra: further fields (``id``, ``iscrowd`` ...).
    """
    rle = encode_mask(mask)
    ann: dict[str, Any] = {} if image_id is None else {"image_id": int(image_id)}
    ann.update({
        "category_id": 1,
        "segmentation": rle,
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "area": float(mask_utils.area(rle)),
    })
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


def encode_confidence(confidence: np.ndarray, decimals: int = 4) -> dict[str, Any]:
    """Run-length code of an (h, w) confidence map (see the module docstring)."""
    flat = np.round(np.asarray(confidence, dtype=np.float64).ravel(), decimals)
    change = np.flatnonzero(np.diff(flat)) + 1
    starts = np.concatenate([[0], change])
    runs = np.diff(np.concatenate([starts, [flat.size]]))
    return {
        "size": [int(confidence.shape[0]), int(confidence.shape[1])],
        "values": [float(v) for v in flat[starts]],
        "runs": [int(r) for r in runs],
    }


def decode_confidence(code: dict[str, Any]) -> np.ndarray:
    """(h, w) float32 map from :func:`encode_confidence`'s dict; raises ValueError if the runs do not fit."""
    h, w = code["size"]
    runs = np.asarray(code["runs"], dtype=np.int64)
    if runs.sum() != h * w or len(runs) != len(code["values"]):
        raise ValueError(f"confidence code does not fit its size {h}x{w}: {runs.sum()} run cells, {len(code['values'])} values")
    return np.repeat(np.asarray(code["values"], dtype=np.float32), runs).reshape(h, w)
