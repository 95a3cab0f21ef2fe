"""Pseudo-mask training set for the CAD (spec 2.6, 3.5, 4.5): images with their pseudo-masks, Spatial
Confidence maps and per-mask scores, in the form torchvision detection models take.

Reads the COCO JSON written by ``cuts3d extract`` (RLE ``segmentation`` with str counts, ``confidence`` run-length
code of the patch-level SC map, ``confidence_score`` = mean SC over the mask). SC maps are nearest-upsampled to
image size (spec 3.5: SC stays patch-level). Annotations without a ``confidence`` field (e.g. self-training
predictions, which carry no SC) get an all-ones map, so the Eq. 6 loss reduces to the plain BCE for them.

Two ablation switches act on the maps at load time (paper "Further Ablations"):

- ``confidence_floor`` (Table 5c): SC <- max(SC, floor) on the patch map. Outside the confidence region SC is
  already 1, so this lifts exactly the region's values, as extraction's floor does. Values that extraction
  clipped at its own floor are lost, so a training floor below it is refused (see
  :func:`extraction_confidence_floor`). The per-mask ``score`` / ``confidence_score`` fields stay as
  extracted (confident copy-paste keeps the extraction's ranking); only a score missing from the JSON, which
  is computed here as the mean SC over the mask, sees the floor.
- ``confidence_align`` (Table 5d): ``"patch"`` nearest-upsamples the patch map (the paper's choice),
  ``"mask"`` aligns its steps to the pseudo-mask border (:func:`cuts3d.masks.filters.align_confidence_to_mask`).
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
import yaml
from torch import Tensor

from cuts3d.cuts.config import CutConfig
from cuts3d.data.augment import boxes_from_masks
from cuts3d.io.images import load_image
from cuts3d.masks.coco import decode_confidence
from cuts3d.masks.filters import align_confidence_to_mask, upsample_nearest

CONFIDENCE_ALIGNS: tuple[str, ...] = ("patch", "mask")
"""How a patch-level SC map reaches pixel resolution (Table 5d): nearest upsampling or aligned to the mask."""

DEFAULT_EXTRACTION_FLOOR: float = CutConfig.confidence_floor
"""Extraction's default floor c_min (0.5), assumed for JSONs that do not record theirs."""


def extraction_confidence_floor(coco: dict[str, Any], json_path: str | Path) -> float | None:
    """The floor c_min the JSON's SC maps were extracted with, or None when it is not recorded.

    ``cuts3d extract`` writes it to the JSON's ``info["confidence_floor"]``; older outputs have only the
    resolved ``config.yaml`` beside the JSON (``cut.confidence_floor``), which is read as a fallback.
    """
    info = coco.get("info") or {}
    if isinstance(info, dict) and info.get("confidence_floor") is not None:
        return float(info["confidence_floor"])
    config = Path(json_path).with_name("config.yaml")
    if config.is_file():
        try:
            loaded = yaml.safe_load(config.read_text())
        except yaml.YAMLError:
            return None  # not an extraction config we can read: the floor stays unknown
        cut = loaded.get("cut") if isinstance(loaded, dict) else None
        if isinstance(cut, dict) and cut.get("confidence_floor") is not None:
            return float(cut["confidence_floor"])
    return None


class PseudoMaskDataError(ValueError):
    """The pseudo-mask file cannot serve the requested training settings (the message names the file and the fix)."""


def check_confidence_floor(floor: float, recorded: float | None, json_path: str | Path) -> None:
    """Refuse a training floor that the extracted maps cannot provide (Table 5c).

    Extraction already lifted every SC value below its floor to it, so a lower training floor would silently
    train with the extraction's. Unknown extraction floor: the default 0.5 is assumed, floors >= 0.5 are
    accepted with a warning and lower ones refused.

    Raises:
        ValueError: ``floor`` is outside [0, 1].
        PseudoMaskDataError: ``floor`` is below the (recorded or assumed) extraction floor.
    """
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"confidence_floor={floor} must be in [0, 1] (or null: use the maps as extracted)")
    lowest = DEFAULT_EXTRACTION_FLOOR if recorded is None else recorded
    if floor < lowest - 1e-9:
        known = f"were extracted with floor {recorded}" if recorded is not None else f"do not record their extraction floor (assumed the default {lowest})"
        raise PseudoMaskDataError(
            f"{json_path}: confidence_floor={floor} is below what the Spatial Confidence maps allow: they {known}, "
            f"and values under it are lost; re-extract with `cuts3d extract ... cut.confidence_floor={floor}` "
            f"or train with confidence_floor >= {lowest}"
        )
    if recorded is None:
        warnings.warn(
            f"{json_path} does not record its extraction confidence floor; assuming {lowest}, "
            f"so confidence_floor={floor} applies as max(SC, {floor})",
            stacklevel=3,
        )


class PseudoMaskDataset(torch.utils.data.Dataset):
    """Pseudo-mask COCO JSON + image folder as a map-style dataset.

    Args:
        json_path: COCO JSON from ``cuts3d extract`` (category 1 only).
        image_root: folder that the images' ``file_name`` are relative to.
        filter_empty: skip images without any non-empty annotation (detectron2's default for training).
        confidence_floor: None (maps as extracted) or c_min for SC <- max(SC, c_min) (Table 5c); a value below
            the extraction's floor raises ValueError (see :func:`check_confidence_floor`).
        confidence_align: ``"patch"`` (nearest upsampling, default) or ``"mask"`` (steps on the mask border,
            Table 5d).

    Items are ``(image, target)``: image (3, H, W) float32 in [0, 1]; target a dict with ``boxes`` (K, 4)
    float32 xyxy (tight boxes of the masks), ``labels`` (K,) int64 all 1, ``masks`` (K, H, W) uint8,
    ``confidence`` (K, H, W) float32 SC at image resolution, ``scores`` (K,) float32 per-mask score (for
    masks with a confidence map their ``score``, CutS3D's ranking score; else the ``confidence_score``,
    else the mean SC over the mask) and ``image_id`` (int64 scalar). :meth:`load_numpy` also gives
    ``has_confidence`` (K,) bool: whether each mask came with a Spatial Confidence map.
    """

    def __init__(
        self,
        json_path: str | Path,
        image_root: str | Path,
        filter_empty: bool = True,
        confidence_floor: float | None = None,
        confidence_align: str = "patch",
    ) -> None:
        self.json_path = Path(json_path)
        self.image_root = Path(image_root)
        if confidence_align not in CONFIDENCE_ALIGNS:
            raise ValueError(f"confidence_align={confidence_align!r}; choose one of {CONFIDENCE_ALIGNS}")
        self.confidence_align = confidence_align
        coco = json.loads(self.json_path.read_text())
        self.confidence_floor = None if confidence_floor is None else float(confidence_floor)
        # A floor only matters for masks with SC maps (MaskCut's masks and predictions have none).
        if self.confidence_floor is not None and any("confidence" in a for a in coco.get("annotations", [])):
            check_confidence_floor(self.confidence_floor, extraction_confidence_floor(coco, self.json_path), self.json_path)
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
                conf = self._confidence_at_image(decode_confidence(ann["confidence"]), m)
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

    def _confidence_at_image(self, grid_map: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(h, w) patch SC map -> (H, W) float32 at the mask's resolution, with the floor and alignment applied."""
        if self.confidence_floor is not None:
            grid_map = np.maximum(grid_map, np.float32(self.confidence_floor))
        if self.confidence_align == "mask":
            return align_confidence_to_mask(grid_map, mask).astype(np.float32)
        return upsample_nearest(grid_map, mask.shape).astype(np.float32)

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
