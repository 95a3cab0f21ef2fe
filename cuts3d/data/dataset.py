"""Pseudo-mask training set for the CAD (spec 2.6, 3.5, 4.5): images with their pseudo-masks, Spatial
Confidence maps and per-mask scores, in the form torchvision detection models take.

Reads the COCO JSON written by ``cuts3d extract`` (RLE ``segmentation`` with str counts, ``confidence`` run-length
code of the patch-level SC map, ``confidence_score`` = mean SC over the mask). SC maps are nearest-upsampled to
image size (spec 3.5: SC stays patch-level). Annotations without a ``confidence`` field (e.g. self-training
predictions, which carry no SC) get an all-ones map, so the Eq. 6 loss reduces to the plain BCE for them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor

from cuts3d.data.augment import boxes_from_masks
from cuts3d.io.images import load_image
from cuts3d.masks.coco import decode_confidence
from cuts3d.masks.filters import upsample_nearest


class PseudoMaskDataset(torch.utils.data.Dataset):
    """Pseudo-mask COCO JSON + image folder as a map-style dataset.

    Args:
        json_path: COCO JSON from ``cuts3d extract`` (category 1 only).
        image_root: folder that the images' ``file_name`` are relative to.
        filter_empty: skip images without any non-empty annotation (detectron2's default for training).

    Items are ``(image, target)``: image (3, H, W) float32 in [0, 1]; target a dict with ``boxes`` (K, 4)
    float32 xyxy (tight boxes of the masks), ``labels`` (K,) int64 all 1, ``masks`` (K, H, W) uint8,
    ``confidence`` (K, H, W) float32 SC at image resolution, ``scores`` (K,) float32 per-mask score (for
    masks with a confidence map their ``score``, CutS3D's ranking score; else the ``confidence_score``,
    else the mean SC over the mask) and ``image_id`` (int64 scalar). :meth:`load_numpy` also gives
    ``has_confidence`` (K,) bool: whether each mask came with a Spatial Confidence map.
    """

    def __init__(self, json_path: str | Path, image_root: str | Path, filter_empty: bool = True) -> None:
        self.json_path = Path(json_path)
        self.image_root = Path(image_root)
        coco = json.loads(self.json_path.read_text())
        sizes = {int(im["id"]): (int(im["height"]), int(im["width"])) for im in coco.get("images", [])}
        anns_by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for ann in coco.get("annotations", []):
            if isinstance(ann.get("segmentation"), list) and int(ann["image_id"]) in sizes:
                ann = {**ann, "segmentation": _polygons_to_rle(ann["segmentation"], *sizes[int(ann["image_id"])])}
            anns_by_image[int(ann["image_id"])].append(ann)
        images = sorted(coco.get("images", []), key=lambda im: int(im["id"]))
        if filter_empty:
            images = [im for im in images if any(_area(a) > 0 for a in anns_by_image.get(int(im["id"]), []))]
        self.images: list[dict[str, Any]] = images
        self._anns = {int(im["id"]): anns_by_image.get(int(im["id"]), []) for im in images}

    def __len__(self) -> int:
        return len(self.images)

    def images_without_confidence(self) -> int:
        """Number of images with at least one mask that has no Spatial Confidence map (MaskCut pseudo-masks,
        self-training predictions): confident copy-paste falls back to CutLER's random choice for those."""
        return sum(any("confidence" not in a for a in anns) for anns in self._anns.values())

    def load_numpy(self, index: int) -> dict[str, Any]:
        """Item ``index`` as numpy, the form :func:`cuts3d.data.augment.copy_paste` takes.

        Returns:
            dict with ``image`` (H, W, 3) uint8, ``masks`` (K, H, W) bool, ``confidence`` (K, H, W) float32,
            ``scores`` (K,) float32, ``image_id`` int.

        Raises:
            ValueError: the image's size differs from the JSON's width/height or from a mask's RLE size (a
                MaskCut-style width/height swap, spec 8, or the wrong image folder).
        """
        info = self.images[index]
        image_id = int(info["id"])
        image = load_image(self.image_root / info["file_name"])
        H, W = image.shape[:2]
        if (int(info["height"]), int(info["width"])) != (H, W):
            raise ValueError(
                f"{info['file_name']}: image is {H}x{W} (HxW) but the JSON says height={info['height']}, "
                f"width={info['width']}; fix the JSON (swapped width/height?) or the image root"
            )
        masks, confs, scores, has_conf = [], [], [], []
        for ann in self._anns[image_id]:
            rle = ann["segmentation"]
            if tuple(rle["size"]) != (H, W):
                raise ValueError(f"{info['file_name']}: annotation {ann.get('id')} mask size {rle['size']} != image {H}x{W}")
            counts = rle["counts"]
            m = mask_utils.decode({"size": rle["size"], "counts": counts.encode() if isinstance(counts, str) else counts})
            m = m.astype(bool)
            if not m.any():
                continue  # empty mask: no box, no signal
            if "confidence" in ann:
                conf = upsample_nearest(decode_confidence(ann["confidence"]), (H, W)).astype(np.float32)
            else:
                conf = np.ones((H, W), np.float32)
            # CutS3D masks rank by their `score` (mean SC x 3D front factor, so walls and skies do not go first
            # into confident copy-paste); older files and others by `confidence_score`, else the mean SC.
            score = ann.get("score") if "confidence" in ann else None
            score = ann.get("confidence_score") if score is None else score
            masks.append(m)
            confs.append(conf)
            has_conf.append("confidence" in ann)
            scores.append(float(conf[m].mean()) if score is None else float(score))
        return {
            "image": image,
            "masks": np.stack(masks) if masks else np.zeros((0, H, W), bool),
            "confidence": np.stack(confs) if confs else np.zeros((0, H, W), np.float32),
            "scores": np.asarray(scores, np.float32),
            "has_confidence": np.asarray(has_conf, bool),
            "image_id": image_id,
        }

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        return to_detection_sample(self.load_numpy(index))


def to_detection_sample(item: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
    """numpy item (as from :meth:`PseudoMaskDataset.load_numpy`, or after copy-paste) -> (image, target) tensors.

    Boxes are recomputed from the masks, so they stay consistent after copy-paste occlusion.
    """
    masks = np.asarray(item["masks"], bool)
    image = torch.from_numpy(np.ascontiguousarray(item["image"])).permute(2, 0, 1).float().div_(255.0)
    target = {
        "boxes": torch.from_numpy(boxes_from_masks(masks)),
        "labels": torch.ones(masks.shape[0], dtype=torch.int64),
        "masks": torch.from_numpy(masks.astype(np.uint8)),
        "confidence": torch.from_numpy(np.asarray(item["confidence"], np.float32)),
        "scores": torch.from_numpy(np.asarray(item["scores"], np.float32)),
        "image_id": torch.tensor(int(item["image_id"]), dtype=torch.int64),
    }
    return image, target


def _polygons_to_rle(polygons: list, height: int, width: int) -> dict[str, Any]:
    """COCO polygon segmentation (e.g. a human-annotated JSON used as pseudo-masks) -> one compressed RLE."""
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _area(ann: dict[str, Any]) -> float:
    """Annotation area from the RLE (the JSON ``area`` field may be missing or box-based after self-training)."""
    rle = ann["segmentation"]
    counts = rle["counts"]
    return float(mask_utils.area({"size": rle["size"], "counts": counts.encode() if isinstance(counts, str) else counts}))
