"""Ground truth for the class-agnostic evaluation: load, check, merge every category into one.

The ground truth is a COCO instances JSON (a path), a benchmark short name resolved through
:mod:`cuts3d.eval.registry`, or an already loaded COCO dict (never modified). Every
``category_id`` becomes 1, ``iscrowd`` regions stay ignore regions, annotation ids are renumbered
1..N (pycocotools treats id 0 as "unmatched" and silently merges duplicate ids), and a missing
``area`` / ``bbox`` is computed from the mask. Every mask is checked as the predictions' are
(:mod:`cuts3d.eval.masks`): a ground-truth RLE that does not decode, or whose size is not its
image's, would otherwise be scored against, or crash pycocotools later.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pycocotools.mask as mask_utils

from cuts3d.eval import registry
from cuts3d.eval.inputs import AGNOSTIC_CATEGORY, EvalInputError, is_image_id, is_number, preview, read_json
from cuts3d.eval.masks import MaskError, MaskSizeError, polygon_problem, rle_problems, to_rle


@dataclass
class GroundTruth:
    """Class-agnostic ground truth ready for COCOeval.

    Attributes:
        dataset: COCO dict with every ``category_id`` = 1, one category, annotation ids 1..N,
            ``iscrowd`` (default 0) and ``area`` on every annotation.
        source: file path, ``"registry name (path)"`` or ``"<dict>"``; used in messages.
        images: image id -> image record (``width``, ``height`` in pixels, ``file_name``, ...).
        has_masks: every annotation has a segmentation (segm evaluation possible).
        n_instances: annotations with ``iscrowd`` 0.
        n_crowd: annotations with ``iscrowd`` 1 (ignore regions).
        n_source_categories: categories listed in the input (1 when already class-agnostic).
        benchmark: the registry entry when ``gt`` was a short name, else ``None``.
        n_without_mask: annotations without a segmentation.
    """

    dataset: dict[str, Any]
    source: str
    images: dict[Any, dict[str, Any]]
    has_masks: bool
    n_instances: int
    n_crowd: int
    n_source_categories: int
    benchmark: registry.Benchmark | None = None
    n_without_mask: int = 0


def _resolve_gt_source(
    gt: str | os.PathLike[str] | Mapping[str, Any], data_dir: str | os.PathLike[str] | None
) -> tuple[dict[str, Any], str, registry.Benchmark | None]:
    """Turn ``gt`` (path, registry name or dict) into ``(COCO dict, source label, benchmark)``.

    A caller's dict is copied one level deep: :func:`load_ground_truth` replaces the lists and
    copies each annotation before changing it, so nothing the caller holds is modified (a
    ``deepcopy`` would recurse through every polygon and fail on deeply nested extra fields).
    """
    if isinstance(gt, Mapping):
        return dict(gt), "<ground-truth dict>", None
    if not isinstance(gt, (str, os.PathLike)):
        raise EvalInputError(f"ground truth must be a path, a benchmark name or a COCO dict, not {type(gt).__name__}")
    path = Path(gt).expanduser()
    if path.is_file():
        return read_json(path, "ground-truth"), str(path), None
    bench = registry.lookup(str(gt)) if isinstance(gt, str) else None
    if bench is not None:
        try:
            bench, found = registry.resolve(str(gt), data_dir)
        except registry.RegistryError as exc:
            raise EvalInputError(str(exc)) from None
        return read_json(found, "ground-truth"), f"{bench.name} ({found})", bench
    if path.is_dir():
        raise EvalInputError(f"ground truth {str(path)!r} is a directory; give a COCO instances JSON file")
    raise EvalInputError(
        f"ground-truth file {str(gt)!r} does not exist and is not a benchmark name "
        f"(known names: {', '.join(registry.BENCHMARKS)})"
    )


def _has_segmentation(ann: Mapping[str, Any]) -> bool:
    seg = ann.get("segmentation")
    if seg is None:
        return False
    if isinstance(seg, (list, tuple)):
        return len(seg) > 0
    return isinstance(seg, dict)


def _checked_mask(seg: Any, h: int, w: int) -> dict[str, Any] | list[Any]:
    """The segmentation to keep (compressed RLE counts as ``str``; others as given), after checking
    it; compressed strings are decoded later, all at once. Raises MaskError / MaskSizeError."""
    if isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes, bytearray)):
        return to_rle(seg, h, w)
    if isinstance(seg, (list, tuple)):
        polys = [seg] if all(not isinstance(v, (list, tuple)) for v in seg) else seg
        problem = polygon_problem(polys, h, w)
        if problem:
            # e.g. a 4-coordinate polygon first in the list: pycocotools reads the list as boxes and fails
            raise MaskError(f"{problem}; drop that polygon (it encloses no area; detectron2 drops such polygons too)")
        return seg
    to_rle(seg, h, w)  # uncompressed RLE: checks size and that the runs cover the image
    return seg


def load_ground_truth(
    gt: str | os.PathLike[str] | Mapping[str, Any], data_dir: str | os.PathLike[str] | None = None
) -> GroundTruth:
    """Load COCO instances ground truth and make it class-agnostic.

    Args:
        gt: path to a COCO instances JSON, a registry short name (see
            :mod:`cuts3d.eval.registry`), or an already-loaded COCO dict (not modified).
        data_dir: data directory for registry names; ``None`` uses ``$CUTS3D_DATA``.

    Every ``category_id`` becomes 1 (80-category or already class-agnostic input alike),
    ``iscrowd`` is kept (ignore regions), annotation ids are renumbered 1..N (pycocotools treats
    id 0 as "unmatched" and silently merges duplicate ids), a missing ``area`` is computed from
    the mask (or box) in pixels.

    Raises:
        EvalInputError: not a COCO instances dict, images without a size, duplicate image ids,
            annotations of unknown images or without mask and box, masks that do not decode or
            whose size is not the image's (the annotation is named).
    """
    data, source, bench = _resolve_gt_source(gt, data_dir)
    if isinstance(data, list):
        raise EvalInputError(
            f"ground truth {source} is a JSON list (a results file?); ground truth must be a COCO "
            "instances dict with 'images' and 'annotations'"
        )
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise EvalInputError(
            f"ground truth {source} is not a COCO instances JSON: it needs the lists 'images' and 'annotations'"
        )
    if not data["images"]:
        raise EvalInputError(f"ground truth {source} lists no images")

    images: dict[Any, dict[str, Any]] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise EvalInputError(f"ground truth {source}: images[{i}] has no 'id'")
        if not is_image_id(img["id"]):
            raise EvalInputError(
                f"ground truth {source}: images[{i}] has id {img['id']!r}; an image id is a number or a string"
            )
        w, h = img.get("width"), img.get("height")
        if not isinstance(w, (int, float)) or not isinstance(h, (int, float)) or w <= 0 or h <= 0:
            raise EvalInputError(
                f"ground truth {source}: image id {img['id']!r} has no valid 'width'/'height' "
                f"(got {w!r} x {h!r}); every image needs its size in pixels"
            )
        if img["id"] in images:
            raise EvalInputError(f"ground truth {source}: image id {img['id']!r} is listed twice")
        images[img["id"]] = img

    n_source_categories = len(data.get("categories") or [])
    n_crowd = n_without_mask = 0
    anns: list[dict[str, Any]] = []
    unknown_images: set[Any] = set()
    compressed: list[tuple[int, int, str, int]] = []  # (input index, kept index, counts, h * w)
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise EvalInputError(f"ground truth {source}: annotations[{i}] is not an object")
        if not is_image_id(ann.get("image_id")) or ann["image_id"] not in images:
            image_id = ann.get("image_id")
            unknown_images.add(image_id if is_image_id(image_id) else repr(image_id))  # a list id is not hashable
            continue
        ann = dict(ann)
        ann["id"] = len(anns) + 1
        ann["category_id"] = AGNOSTIC_CATEGORY["id"]
        ann["iscrowd"] = int(bool(ann.get("iscrowd", 0)))
        n_crowd += ann["iscrowd"]
        has_mask = _has_segmentation(ann)
        n_without_mask += not has_mask
        img = images[ann["image_id"]]
        h, w = int(img["height"]), int(img["width"])
        if has_mask:
            where = f"ground truth {source}: annotation #{i} (image id {ann['image_id']!r})"
            try:
                ann["segmentation"] = _checked_mask(ann["segmentation"], h, w)
            except MaskSizeError as exc:
                raise EvalInputError(
                    f"{where} has a mask of size {exc.size} (height, width) but the image is {h} x {w} "
                    "(height x width); fix the ground truth's image sizes or masks"
                ) from None
            except MaskError as exc:
                raise EvalInputError(f"{where}: {exc}") from None
            if isinstance(ann["segmentation"], dict) and isinstance(ann["segmentation"]["counts"], str):
                compressed.append((i, len(anns), ann["segmentation"]["counts"], h * w))
        box = ann.get("bbox")
        if box is not None and not (
            isinstance(box, (list, tuple)) and len(box) == 4 and all(is_number(v) and math.isfinite(v) for v in box)
        ):
            raise EvalInputError(
                f"ground truth {source}: annotation #{i} (image id {ann['image_id']!r}) has bbox {box!r}; a box is 4 "
                "finite numbers [x, y, width, height] in pixels"
            )
        if "bbox" not in ann or "area" not in ann:
            if has_mask:
                rle = to_rle(ann["segmentation"], h, w)
                ann.setdefault("area", float(mask_utils.area(rle)))
                ann.setdefault("bbox", [float(v) for v in mask_utils.toBbox(rle)])
            elif "bbox" in ann:
                ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
            else:
                raise EvalInputError(
                    f"ground truth {source}: annotation {i} (image id {ann['image_id']!r}) has neither "
                    "'segmentation' nor 'bbox'"
                )
        anns.append(ann)
    if unknown_images:
        raise EvalInputError(
            f"ground truth {source}: annotations refer to image ids missing from 'images': "
            f"{preview(sorted(unknown_images, key=str))}"
        )
    problems = rle_problems([c for _, _, c, _ in compressed], [n for _, _, _, n in compressed])
    bad = [(entry, p) for entry, p in zip(compressed, problems, strict=True) if p is not None]
    if bad:
        (i, k, _, _), reason = bad[0]
        raise EvalInputError(
            f"ground truth {source}: {len(bad)} annotation mask{'s are' if len(bad) > 1 else ' is'} not valid COCO "
            f"RLE; first: annotation #{i} (image id {anns[k]['image_id']!r}): {reason}; fix or regenerate the file"
        )
    data["annotations"] = anns
    data["categories"] = [dict(AGNOSTIC_CATEGORY)]
    return GroundTruth(
        dataset=data,
        source=source,
        images=images,
        has_masks=n_without_mask == 0,
        n_instances=len(anns) - n_crowd,
        n_crowd=n_crowd,
        n_source_categories=n_source_categories,
        benchmark=bench,
        n_without_mask=n_without_mask,
    )
