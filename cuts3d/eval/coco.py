"""Class-agnostic COCO evaluation (the CutLER / CutS3D evaluation protocol).

CutLER (Wang et al., CVPR 2023) and CutS3D (Sick et al., ICCV 2025) report unsupervised
instance segmentation and detection as *class-agnostic* COCO AP: every ground-truth category is
merged into a single category, ``iscrowd`` regions stay ignore regions, every prediction gets
that category, and pycocotools' ``COCOeval`` scores the result with its standard parameters
(IoU 0.50:0.05:0.95, area ranges small/medium/large, ``maxDets`` [1, 10, 100]; LVIS runs use
[1, 10, 300]). This module implements that step for any COCO-style ground truth and for two
kinds of predictions: a detector's COCO results list and a pseudo-mask COCO JSON (as written
by ``cuts3d extract``).

It avoids the silent traps that turn real results into 0 AP: predictions with category 0 (or
any id that is not a ground-truth category) score nothing, and pycocotools' ``useCats=0`` does
not help, because even then ``evaluateImg`` only gathers predictions whose category id is one of
the ground truth's (0 AP for category-0 predictions, checked on COCO val2017 data). Here both
sides are remapped to category 1 and ``useCats`` stays 1, which for a single category *is*
class-agnostic evaluation. A third trap, pycocotools' ``summarize`` computing AP with a
hard-coded ``maxDets=100`` (AP = -1 with maxDets [1, 10, 300]), is avoided by summarising the
``eval['precision']`` array at the largest maxDets, as detectron2's ``COCOevalMaxDets`` does.

As in detectron2's ``COCOEvaluator`` (used by CutLER), mask AP is computed from the masks alone
(a prediction's area is its mask area) and box AP from the boxes (a prediction's given ``bbox``,
or the tight box of its mask when it has none).

Every input problem raises :class:`EvalInputError` with a message that names the file and says
what to do.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from cuts3d.eval import registry

#: The IoU types this module evaluates.
IOU_TYPES: tuple[str, ...] = ("segm", "bbox")
#: Evaluation backends: pycocotools (reference) and faster-coco-eval (optional, same numbers).
BACKENDS: tuple[str, ...] = ("pycocotools", "faster")
_BACKEND_ALIASES = {
    "pycocotools": "pycocotools",
    "faster": "faster",
    "faster-coco-eval": "faster",
    "faster_coco_eval": "faster",
}
#: Fields tried, in order, for a prediction's score when no ``score_key`` is given.
SCORE_KEYS: tuple[str, ...] = ("score", "confidence_score")
#: The single class-agnostic category.
AGNOSTIC_CATEGORY: dict[str, Any] = {"id": 1, "name": "object", "supercategory": "object"}


class EvalInputError(ValueError):
    """Ground truth or predictions cannot be evaluated as given; the message names the input and
    says what to do."""


def metric_keys(max_dets: int = 100) -> tuple[str, ...]:
    """Metric names returned by :func:`evaluate` for ``max_dets`` detections per image.

    ``AP*`` use up to ``max_dets`` detections per image; ``AR1``/``AR10``/``AR<max_dets>`` are the
    average recall with 1, 10 and ``max_dets`` detections per image.
    """
    return ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", f"AR{max_dets}")


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------


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


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise EvalInputError(f"{what} file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise EvalInputError(f"{what} {str(path)!r} is a directory; give the JSON file inside it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalInputError(f"{what} file {str(path)!r} is not valid JSON: {exc}") from None


def _resolve_gt_source(
    gt: str | os.PathLike[str] | Mapping[str, Any], data_dir: str | os.PathLike[str] | None
) -> tuple[dict[str, Any], str, registry.Benchmark | None]:
    """Turn ``gt`` (path, registry name or dict) into ``(COCO dict copy, source label, benchmark)``."""
    if isinstance(gt, Mapping):
        return copy.deepcopy(dict(gt)), "<ground-truth dict>", None
    if not isinstance(gt, (str, os.PathLike)):
        raise EvalInputError(f"ground truth must be a path, a benchmark name or a COCO dict, not {type(gt).__name__}")
    path = Path(gt).expanduser()
    if path.is_file():
        return _read_json(path, "ground-truth"), str(path), None
    bench = registry.lookup(str(gt)) if isinstance(gt, str) else None
    if bench is not None:
        try:
            bench, found = registry.resolve(str(gt), data_dir)
        except registry.RegistryError as exc:
            raise EvalInputError(str(exc)) from None
        return _read_json(found, "ground-truth"), f"{bench.name} ({found})", bench
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
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise EvalInputError(f"ground truth {source}: annotations[{i}] is not an object")
        if ann.get("image_id") not in images:
            unknown_images.add(ann.get("image_id"))
            continue
        ann = dict(ann)
        ann["id"] = len(anns) + 1
        ann["category_id"] = AGNOSTIC_CATEGORY["id"]
        ann["iscrowd"] = int(bool(ann.get("iscrowd", 0)))
        n_crowd += ann["iscrowd"]
        has_mask = _has_segmentation(ann)
        n_without_mask += not has_mask
        if has_mask and isinstance(ann["segmentation"], dict) and isinstance(ann["segmentation"].get("counts"), bytes):
            ann["segmentation"] = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].decode("ascii"))
        if "bbox" not in ann or "area" not in ann:
            if has_mask:
                img = images[ann["image_id"]]
                rle = _gt_rle(ann["segmentation"], int(img["height"]), int(img["width"]))
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
            f"{_preview(sorted(unknown_images, key=str))}"
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


def _gt_rle(seg: Any, h: int, w: int) -> dict[str, Any]:
    """Compressed RLE of a ground-truth segmentation (polygons, uncompressed or compressed RLE)."""
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, h, w)
    return seg


# --------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------


@dataclass
class Predictions:
    """Checked, class-agnostic predictions.

    Attributes:
        records: one dict per prediction: ``image_id`` (ground-truth id), ``score`` (float),
            ``segmentation`` (compressed RLE with ``str`` counts, ``size`` [height, width]) or
            ``None``, ``bbox`` ([x, y, width, height] in pixels) or ``None``.
        source: file path or ``"<list>"``/``"<dict>"``; used in messages.
        kind: ``"results list"`` or ``"pseudo-mask COCO JSON"``.
        score_field: the field the scores came from (``score`` or ``confidence_score`` ...).
        source_category_ids: category ids found in the input (all are mapped to 1).
        remapped_by_file_name: images whose id was mapped to the ground-truth id via file name.
        warnings: non-fatal observations, also printed when verbose.
    """

    records: list[dict[str, Any]]
    source: str
    kind: str
    score_field: str
    source_category_ids: list[Any]
    remapped_by_file_name: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def has_masks(self) -> int:
        """Number of predictions with a mask."""
        return sum(r["segmentation"] is not None for r in self.records)

    @property
    def has_boxes(self) -> int:
        """Number of predictions with an explicit box."""
        return sum(r["bbox"] is not None for r in self.records)


def _preview(items: Sequence[Any], n: int = 10) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return f"{shown}{', ...' if len(items) > n else ''} ({len(items)} in all)"


def _resolve_pred_source(
    predictions: str | os.PathLike[str] | Sequence[Mapping[str, Any]] | Mapping[str, Any],
) -> tuple[Any, str]:
    if isinstance(predictions, (str, os.PathLike)):
        path = Path(predictions).expanduser()
        return _read_json(path, "predictions"), str(path)
    if isinstance(predictions, Mapping):
        return predictions, "<predictions dict>"
    if isinstance(predictions, Sequence):
        return predictions, "<predictions list>"
    raise EvalInputError(
        f"predictions must be a path, a list of result dicts or a COCO dict, not {type(predictions).__name__}"
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _pick_score_field(anns: Sequence[Mapping[str, Any]], score_key: str | None, source: str) -> str:
    """The field holding each prediction's score; raises if some prediction lacks it."""
    candidates = (score_key,) if score_key else SCORE_KEYS
    for key in candidates:
        missing = [i for i, a in enumerate(anns) if a.get(key) is None]
        if not missing:
            return key
        if score_key or len(missing) < len(anns):
            # the field is used by some predictions: it is the score field, others are broken
            raise EvalInputError(
                f"predictions {source}: {len(missing)} of {len(anns)} predictions have no {key!r} "
                f"(first: prediction #{missing[0]}, image_id {anns[missing[0]].get('image_id')!r}); "
                f"every prediction needs a score (a detector's confidence, or the pseudo-mask's confidence)"
            )
    raise EvalInputError(
        f"predictions {source}: no prediction has a score (looked for {' or '.join(repr(k) for k in SCORE_KEYS)}); "
        "AP ranks predictions by score, so add a 'score' to every prediction, or name the field that "
        "holds it with --score-key (Python: score_key=...)"
    )


def load_predictions(
    predictions: str | os.PathLike[str] | Sequence[Mapping[str, Any]] | Mapping[str, Any],
    gt: GroundTruth,
    score_key: str | None = None,
) -> Predictions:
    """Load and check predictions against the ground truth's images.

    Args:
        predictions: path to a JSON file, a COCO results list (``image_id``, ``score``,
            ``segmentation`` and/or ``bbox``), or a pseudo-mask COCO dict with ``annotations``
            (e.g. from ``cuts3d extract``; its ``score`` or else ``confidence_score`` is the score).
        gt: the loaded ground truth (for image ids and sizes).
        score_key: field holding the score; ``None`` tries ``score`` then ``confidence_score``.

    Masks may be compressed RLE (``counts`` as ``str`` or ``bytes``), uncompressed RLE
    (``counts`` as a list of run lengths) or polygons; all become compressed RLE. Category ids
    are ignored (class-agnostic). When a pseudo-mask JSON lists its ``images`` with file names
    that all occur in the ground truth, its image ids are mapped to the ground truth's by file
    name.

    Raises:
        EvalInputError: empty predictions, predictions for images not in the ground truth (named),
            missing or non-finite scores, mask sizes that differ from the image's (says whether
            they look swapped), malformed RLE/polygons, boxes not in [x, y, width, height] pixels.
    """
    data, source = _resolve_pred_source(predictions)
    images_by_pred_id: dict[Any, Mapping[str, Any]] = {}
    if isinstance(data, Mapping):
        if not isinstance(data.get("annotations"), list):
            keys = ", ".join(sorted(map(str, data.keys()))[:8])
            raise EvalInputError(
                f"predictions {source} is a JSON object without an 'annotations' list (keys: {keys}); give a "
                "COCO results list or a pseudo-mask COCO JSON with 'annotations'"
            )
        anns: Sequence[Mapping[str, Any]] = data["annotations"]
        kind = "pseudo-mask COCO JSON"
        for img in data.get("images") or []:
            if isinstance(img, Mapping) and "id" in img:
                images_by_pred_id[img["id"]] = img
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        anns = data
        kind = "results list"
    else:
        raise EvalInputError(f"predictions {source} must be a JSON list of results or a COCO dict")
    if len(anns) == 0:
        raise EvalInputError(
            f"predictions {source} are empty (0 predictions); there is nothing to evaluate. Check that the "
            "detector / pseudo-mask extraction wrote its output (an all-miss run has AP 0 by definition)"
        )
    bad = [i for i, a in enumerate(anns) if not isinstance(a, Mapping)]
    if bad:
        raise EvalInputError(f"predictions {source}: entry #{bad[0]} is not an object ({len(bad)} such entries)")

    # image ids, optionally mapped via file names of a pseudo-mask JSON
    id_map: dict[Any, Any] = {}
    remapped = 0
    if images_by_pred_id:
        gt_by_name = {os.path.basename(str(img.get("file_name", ""))): gid for gid, img in gt.images.items()}
        names = {pid: os.path.basename(str(img.get("file_name", ""))) for pid, img in images_by_pred_id.items()}
        if all(n and n in gt_by_name for n in names.values()):
            id_map = {pid: gt_by_name[n] for pid, n in names.items()}
            remapped = sum(pid != gid for pid, gid in id_map.items())
    missing_id = [i for i, a in enumerate(anns) if "image_id" not in a]
    if missing_id:
        raise EvalInputError(
            f"predictions {source}: {len(missing_id)} predictions have no 'image_id' (first: #{missing_id[0]})"
        )
    image_ids = [id_map.get(a["image_id"], a["image_id"]) for a in anns]
    unknown = sorted({i for i in image_ids if i not in gt.images}, key=str)
    if unknown:
        hint = ""
        if any(isinstance(u, str) for u in unknown) and any(not isinstance(g, str) for g in gt.images):
            hint = " (image ids are compared by value and type: the string '139' is not the number 139)"
        raise EvalInputError(
            f"predictions {source} refer to {len(unknown)} image "
            f"{'id that is' if len(unknown) == 1 else 'ids that are'} not in the ground truth "
            f"{gt.source}: {_preview(unknown)}{hint}. Evaluate against the ground truth of the images the "
            "predictions were made on, or drop those predictions"
        )

    score_field = _pick_score_field(anns, score_key, source)
    scores: list[float] = []
    for i, a in enumerate(anns):
        s = a[score_field]
        if not _is_number(s):
            raise EvalInputError(
                f"predictions {source}: prediction #{i} (image_id {a['image_id']!r}) has {score_field} {s!r}, "
                "which is not a number; scores must be single numbers"
            )
        if not math.isfinite(float(s)):
            n_bad = sum(1 for b in anns if _is_number(b[score_field]) and not math.isfinite(float(b[score_field])))
            raise EvalInputError(
                f"predictions {source}: {n_bad} predictions have a NaN or infinite {score_field!r} (first: #{i}, "
                f"image_id {a['image_id']!r}, {score_field}={s!r}); fix the model output or drop them"
            )
        scores.append(float(s))

    records: list[dict[str, Any]] = []
    for i, (img_id, s) in enumerate(zip(image_ids, scores, strict=True)):
        records.append({"image_id": img_id, "score": s, "segmentation": None, "bbox": None, "_index": i})
    _check_masks(anns, records, gt, source)
    warnings = _check_boxes(anns, records, gt, source)
    for r in records:
        del r["_index"]

    cats = sorted(
        {a.get("category_id") for a in anns}, key=lambda c: (type(c).__name__, c if _is_number(c) else str(c))
    )
    per_image = Counter(r["image_id"] for r in records)
    without = [i for i in gt.images if i not in per_image]
    if without:
        n_inst = Counter(a["image_id"] for a in gt.dataset["annotations"] if not a["iscrowd"])
        missed = sum(n_inst[i] for i in without)
        warnings.append(
            f"{len(without)} of {len(gt.images)} ground-truth images have no prediction; "
            + (f"their {missed} instances count as misses" if missed else "they hold no ground-truth instance")
        )
    return Predictions(
        records=records,
        source=source,
        kind=kind,
        score_field=score_field,
        source_category_ids=cats,
        remapped_by_file_name=remapped,
        warnings=warnings,
    )


def _check_masks(
    anns: Sequence[Mapping[str, Any]], records: list[dict[str, Any]], gt: GroundTruth, source: str
) -> None:
    """Normalise every prediction mask to compressed RLE (``str`` counts) and check its size."""
    wrong_size: list[tuple[int, list[int], tuple[int, int]]] = []
    for a, rec in zip(anns, records, strict=True):
        seg = a.get("segmentation")
        if seg is None or (isinstance(seg, (list, tuple)) and len(seg) == 0):
            continue
        i = rec["_index"]
        img = gt.images[rec["image_id"]]
        h, w = int(img["height"]), int(img["width"])
        where = f"predictions {source}: prediction #{i} (image_id {a['image_id']!r})"
        if isinstance(seg, Mapping):
            if "counts" not in seg or "size" not in seg:
                raise EvalInputError(f"{where}: an RLE segmentation needs 'counts' and 'size' [height, width]")
            size = seg["size"]
            if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_number(v) for v in size)):
                raise EvalInputError(f"{where}: RLE 'size' must be [height, width], got {size!r}")
            size = [int(size[0]), int(size[1])]
            if size != [h, w]:
                wrong_size.append((i, size, (h, w)))
                continue
            counts = seg["counts"]
            if isinstance(counts, (bytes, bytearray)):
                try:
                    counts = bytes(counts).decode("ascii")
                except UnicodeDecodeError:
                    raise EvalInputError(f"{where}: RLE counts bytes are not an ASCII COCO RLE string") from None
                rle = {"size": size, "counts": counts}
            elif isinstance(counts, str):
                rle = {"size": size, "counts": counts}
            elif isinstance(counts, (list, tuple)):
                if not all(_is_number(c) and c >= 0 for c in counts):
                    raise EvalInputError(f"{where}: uncompressed RLE counts must be non-negative integers")
                total = int(sum(counts))
                if total != h * w:
                    raise EvalInputError(
                        f"{where}: uncompressed RLE counts sum to {total} pixels but size {size} has {h * w}; "
                        "the run lengths must cover the whole image (column-major, COCO order)"
                    )
                rle = mask_utils.frPyObjects({"size": size, "counts": [int(c) for c in counts]}, h, w)
                rle["counts"] = rle["counts"].decode("ascii")
            else:
                raise EvalInputError(
                    f"{where}: RLE counts must be a string, bytes or a list of run lengths, not {type(counts).__name__}"
                )
        elif isinstance(seg, (list, tuple)):
            polys = seg
            if all(_is_number(v) for v in polys):
                polys = [polys]
            for poly in polys:
                if not isinstance(poly, (list, tuple)) or not all(_is_number(v) for v in poly):
                    raise EvalInputError(f"{where}: polygon segmentation must be a list of [x1, y1, x2, y2, ...] lists")
                if len(poly) < 6 or len(poly) % 2:
                    raise EvalInputError(
                        f"{where}: a polygon needs an even number (>= 6) of coordinates, got {len(poly)}"
                    )
            rle = mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in p] for p in polys], h, w))
            rle["counts"] = rle["counts"].decode("ascii")
        else:
            raise EvalInputError(f"{where}: segmentation must be an RLE dict or polygons, not {type(seg).__name__}")
        rec["segmentation"] = rle
    if wrong_size:
        i, size, (h, w) = wrong_size[0]
        swapped = [x for x in wrong_size if x[1] == [x[2][1], x[2][0]] and x[2][0] != x[2][1]]
        if len(swapped) == len(wrong_size):
            advice = (
                "they look swapped: COCO RLE 'size' is [height, width]; encode the mask as an (height, width) "
                "array (pycocotools.mask.encode(np.asfortranarray(mask)))"
            )
        else:
            advice = (
                "they do not look swapped" if not swapped else f"{len(swapped)} of them look swapped ([width, height])"
            ) + (
                "; the masks were probably made at another resolution: resize masks to the original image size "
                "(nearest neighbour) before encoding"
            )
        n = len(wrong_size)
        raise EvalInputError(
            f"predictions {source}: {n} mask{' has' if n == 1 else 's have'} a size that differs from the "
            "image's; first: "
            f"prediction #{i} (image_id {anns[i]['image_id']!r}) has size {size} (height, width) but the image is "
            f"{h} x {w} (height x width); {advice}"
        )


def _check_boxes(
    anns: Sequence[Mapping[str, Any]], records: list[dict[str, Any]], gt: GroundTruth, source: str
) -> list[str]:
    """Check every given box is [x, y, width, height] in pixels; returns warnings."""
    boxes: list[tuple[int, list[float], float, float]] = []  # (record index, box, image w, image h)
    for k, (a, rec) in enumerate(zip(anns, records, strict=True)):
        bb = a.get("bbox")
        if bb is None or (isinstance(bb, (list, tuple)) and len(bb) == 0):
            if rec["segmentation"] is None:
                raise EvalInputError(
                    f"predictions {source}: prediction #{rec['_index']} (image_id {a['image_id']!r}) has neither "
                    "'segmentation' nor 'bbox'"
                )
            continue
        where = f"predictions {source}: prediction #{rec['_index']} (image_id {a['image_id']!r})"
        if not (isinstance(bb, (list, tuple, np.ndarray)) and len(bb) == 4 and all(_is_number(v) for v in bb)):
            raise EvalInputError(f"{where}: bbox must be 4 numbers [x, y, width, height] in pixels, got {bb!r}")
        box = [float(v) for v in bb]
        if not all(math.isfinite(v) for v in box):
            raise EvalInputError(f"{where}: bbox {bb!r} has a NaN or infinite value")
        if box[2] < 0 or box[3] < 0:
            raise EvalInputError(
                f"{where}: bbox {bb!r} has a negative width or height; COCO boxes are [x, y, width, height]"
            )
        img = gt.images[rec["image_id"]]
        rec["bbox"] = box
        boxes.append((k, box, float(img["width"]), float(img["height"])))
    if not boxes:
        return []

    arr = np.array([b for _, b, _, _ in boxes])  # (N, 4) x, y, w, h
    wh = np.array([[w, h] for _, _, w, h in boxes])  # (N, 2) image width, height
    if arr.max() <= 1.0 + 1e-6 and wh.min() > 2 and arr[:, 2:].max() > 0:
        raise EvalInputError(
            f"predictions {source}: every bbox lies in [0, 1]: the boxes look normalised; COCO boxes are "
            "[x, y, width, height] in pixels of the original image (multiply by the image width / height)"
        )
    tol = 1.0 + 0.01 * wh  # pixels
    over = (arr[:, :2] + arr[:, 2:] > wh + tol).any(axis=1)  # extends past the right / bottom border
    # would the box be a valid [x1, y1, x2, y2] box inside the image?
    xyxy_ok = (arr[:, 2:] >= arr[:, :2] - 0.5).all(axis=1) & (arr[:, 2:] <= wh + tol).all(axis=1)
    looks_xyxy = False
    # with masks: compare given boxes with the tight boxes of the masks
    with_mask = [(j, k) for j, (k, _, _, _) in enumerate(boxes) if records[k]["segmentation"] is not None]
    if with_mask:
        mbox = mask_utils.toBbox([records[k]["segmentation"] for _, k in with_mask])  # (M, 4) xywh
        given = arr[[j for j, _ in with_mask]]
        nonempty = (mbox[:, 2] > 0) & (mbox[:, 3] > 0)
        if nonempty.any():
            as_xywh = np.abs(given - mbox).max(axis=1) <= 2.0
            as_xyxy = np.abs(given[:, 2:] - (mbox[:, :2] + mbox[:, 2:])).max(axis=1) <= 2.0
            as_xyxy &= np.abs(given[:, :2] - mbox[:, :2]).max(axis=1) <= 2.0
            n_xyxy, n_xywh = int((as_xyxy & ~as_xywh & nonempty).sum()), int((as_xywh & nonempty).sum())
            looks_xyxy = n_xyxy > max(n_xywh, 0.5 * int(nonempty.sum()))
    if not looks_xyxy and over.any() and xyxy_ok.all():
        looks_xyxy = True
    if looks_xyxy:
        k = boxes[int(np.argmax(over))][0] if over.any() else boxes[0][0]
        raise EvalInputError(
            f"predictions {source}: the boxes look like [x1, y1, x2, y2] corners (e.g. prediction #{k}, image_id "
            f"{anns[k]['image_id']!r}: bbox {anns[k]['bbox']!r}); COCO boxes are [x, y, width, height]: convert "
            "with width = x2 - x1, height = y2 - y1"
        )
    warnings = []
    if over.any():
        k = boxes[int(np.argmax(over))][0]
        warnings.append(
            f"{int(over.sum())} boxes extend past the image border by more than 1 % (e.g. prediction #{k}: "
            f"bbox {anns[k]['bbox']!r}); they are evaluated as given"
        )
    return warnings


# --------------------------------------------------------------------------------------------
# COCOeval
# --------------------------------------------------------------------------------------------


@dataclass
class IouTypeResult:
    """COCOeval output for one IoU type.

    Attributes:
        metrics: metric name -> value in percent (NaN where the ground truth has no instance in
            that area range, pycocotools' -1).
        precision: interpolated precision, shape (T=10 IoU thresholds, R=101 recall points,
            A=4 area ranges, M=3 maxDets), -1 where undefined (pycocotools' ``eval['precision']``
            for the single category).
        recall: recall, shape (T, A, M).
        iou_thrs: (T,) IoU thresholds 0.50 ... 0.95.
        rec_thrs: (R,) recall thresholds 0.00 ... 1.00.
    """

    metrics: dict[str, float]
    precision: np.ndarray
    recall: np.ndarray
    iou_thrs: np.ndarray
    rec_thrs: np.ndarray


class EvalResult(dict):
    """``{iou_type: {metric: percent}}`` as returned by :func:`evaluate` (a plain ``dict``), with
    the details attached as attributes: ``info`` (inputs, counts, score field, warnings) and
    ``curves`` (``iou_type`` -> :class:`IouTypeResult`, for the precision-recall plot)."""

    info: dict[str, Any]
    curves: dict[str, IouTypeResult]


def _summarize(
    precision: np.ndarray, recall: np.ndarray, iou_thrs: np.ndarray, area_lbl: Sequence[str], max_dets: Sequence[int]
) -> dict[str, float]:
    """pycocotools' ``COCOeval.summarize`` for the detection metrics, in percent.

    Args:
        precision: (T, R, K, A, M) ``eval['precision']``; recall: (T, K, A, M) ``eval['recall']``.
    """

    def mean(ap: bool, iou: float | None = None, area: str = "all", mdet: int | None = None) -> float:
        a = [i for i, lbl in enumerate(area_lbl) if lbl == area]
        m = [i for i, d in enumerate(max_dets) if d == (max_dets[-1] if mdet is None else mdet)]
        s = precision if ap else recall
        if iou is not None:
            s = s[np.where(np.isclose(iou_thrs, iou))[0]]
        s = s[..., a, :][..., m]
        valid = s[s > -1]
        return float(np.mean(valid)) * 100.0 if valid.size else float("nan")

    out = {
        "AP": mean(True),
        "AP50": mean(True, iou=0.5),
        "AP75": mean(True, iou=0.75),
        "APs": mean(True, area="small"),
        "APm": mean(True, area="medium"),
        "APl": mean(True, area="large"),
    }
    for d in max_dets:
        out[f"AR{d}"] = mean(False, mdet=d)
    return out


def _run_cocoeval(gt: GroundTruth, preds: Predictions, iou_type: str, max_dets: int, backend: str) -> IouTypeResult:
    """Run COCOeval (pycocotools or faster-coco-eval) for one IoU type on class-agnostic inputs."""
    results: list[dict[str, Any]] = []
    for r in preds.records:
        res = {"image_id": r["image_id"], "category_id": AGNOSTIC_CATEGORY["id"], "score": r["score"]}
        if iou_type == "segm":
            res["segmentation"] = dict(r["segmentation"])  # no bbox: area = mask area (detectron2)
        else:
            box = r["bbox"] if r["bbox"] is not None else [float(v) for v in mask_utils.toBbox(r["segmentation"])]
            res["bbox"] = list(box)
        results.append(res)
    # pycocotools prints progress to stdout; keep it out of the user's output.
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "faster":
            try:
                from faster_coco_eval import COCO as FCOCO
                from faster_coco_eval import COCOeval_faster
            except ImportError:
                raise EvalInputError(
                    "backend 'faster' needs the faster-coco-eval package: pip install 'cuts3d[fast]' "
                    "(or faster-coco-eval), or use --backend pycocotools"
                ) from None
            coco_gt = FCOCO(copy.deepcopy(gt.dataset))
            coco_dt = coco_gt.loadRes(results)
            evaluator = COCOeval_faster(coco_gt, coco_dt, iou_type)
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO()
            coco_gt.dataset = copy.deepcopy(gt.dataset)
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(results)
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.useCats = 1  # one category == class-agnostic (useCats=0 still filters by category)
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
    params = evaluator.params
    precision = np.asarray(evaluator.eval["precision"], dtype=float)  # (T, R, K=1, A, M)
    recall = np.asarray(evaluator.eval["recall"], dtype=float)  # (T, K=1, A, M)
    metrics = _summarize(precision, recall, np.asarray(params.iouThrs), list(params.areaRngLbl), list(params.maxDets))
    return IouTypeResult(
        metrics={k: metrics[k] for k in metric_keys(max_dets)},
        precision=precision[:, :, 0],
        recall=recall[:, 0],
        iou_thrs=np.asarray(params.iouThrs, dtype=float),
        rec_thrs=np.asarray(params.recThrs, dtype=float),
    )


def _normalise_iou_types(iou_types: str | Iterable[str] | None, gt: GroundTruth) -> tuple[str, ...]:
    if iou_types is None:
        if gt.benchmark is not None:
            return gt.benchmark.iou_types
        return IOU_TYPES if gt.has_masks else ("bbox",)
    if isinstance(iou_types, str):
        iou_types = [iou_types]
    out: list[str] = []
    for t in iou_types:
        if t not in IOU_TYPES:
            raise EvalInputError(f"unknown IoU type {t!r}; choose from {', '.join(IOU_TYPES)}")
        if t not in out:
            out.append(t)
    if not out:
        raise EvalInputError("no IoU type requested; choose one or more of segm, bbox")
    return tuple(out)


def evaluate(
    gt: str | os.PathLike[str] | Mapping[str, Any],
    predictions: str | os.PathLike[str] | Sequence[Mapping[str, Any]] | Mapping[str, Any],
    iou_types: str | Iterable[str] | None = None,
    max_dets: int | None = None,
    backend: str = "pycocotools",
    output_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    verbose: bool = True,
    score_key: str | None = None,
) -> EvalResult:
    """Class-agnostic COCO evaluation of detector predictions or pseudo-masks.

    Args:
        gt: COCO instances JSON path, registry short name (``coco``, ``coco20k``, ``lvis``,
            ``voc``, ``objects365``, ``openimages``, ``kitti``, ``uvo``) or a loaded COCO dict.
            Every category becomes 1; ``iscrowd`` regions stay ignore regions.
        predictions: JSON path, list of result dicts (``image_id``, ``score``, ``segmentation``
            and/or ``bbox`` [x, y, w, h] px), or a pseudo-mask COCO dict with ``annotations``.
            Ground-truth images without predictions count as misses.
        iou_types: any of ``"segm"``, ``"bbox"``. ``None``: the benchmark's types for a registry
            name, else both when the ground truth has masks, else ``("bbox",)``.
        max_dets: detections scored per image (top by score); maxDets is [1, 10, max_dets].
            ``None``: the benchmark's value (300 for LVIS), else 100.
        backend: ``"pycocotools"`` (reference) or ``"faster"`` (faster-coco-eval, same numbers).
        output_dir: if given, writes ``metrics.json``, ``metrics.md``, ``pr_curve.png`` and
            ``eval_info.json`` there.
        data_dir: data directory for registry names (default: ``$CUTS3D_DATA``).
        verbose: print what was evaluated and the metric table.
        score_key: field holding each prediction's score (default: ``score``, then
            ``confidence_score``).

    Returns:
        :class:`EvalResult`, a dict ``{"segm": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1",
        "AR10", f"AR{max_dets}"}, "bbox": {...}}`` with values in percent (0..100; NaN where the
        ground truth has no instance of that size), plus ``.info`` and ``.curves``.

    Raises:
        EvalInputError (a ValueError): unusable input, e.g. ``segm`` requested but the
            predictions have no masks; the message names the file and what to do.
    """
    backend_name = _BACKEND_ALIASES.get(str(backend).lower())
    if backend_name is None:
        raise EvalInputError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    gt_data = load_ground_truth(gt, data_dir=data_dir)
    if max_dets is None:
        max_dets = gt_data.benchmark.max_dets if gt_data.benchmark is not None else 100
    if not isinstance(max_dets, (int, np.integer)) or isinstance(max_dets, bool) or max_dets < 10:
        raise EvalInputError(f"max_dets must be an integer >= 10 (maxDets is [1, 10, max_dets]), got {max_dets!r}")
    max_dets = int(max_dets)
    types = _normalise_iou_types(iou_types, gt_data)
    preds = load_predictions(predictions, gt_data, score_key=score_key)

    if "segm" in types:
        n_mask = preds.has_masks
        if n_mask < len(preds.records):
            n = len(preds.records)
            what = "no prediction has" if n_mask == 0 else f"{n - n_mask} of {n} predictions have no"
            raise EvalInputError(
                f"predictions {preds.source}: segm evaluation requested but {what} 'segmentation'; evaluate "
                "boxes only with --iou-type bbox (Python: iou_types=('bbox',)), or add masks"
            )
        if not gt_data.has_masks:
            raise EvalInputError(
                f"ground truth {gt_data.source}: segm evaluation requested but {gt_data.n_without_mask} annotations "
                "have no 'segmentation' (a box-only benchmark?); use --iou-type bbox (Python: iou_types=('bbox',))"
            )

    per_image = Counter(r["image_id"] for r in preds.records)
    over_cap = sum(1 for n in per_image.values() if n > max_dets)
    if over_cap:
        preds.warnings.append(
            f"{over_cap} images have more than {max_dets} predictions; only the top {max_dets} by score count"
        )

    result = EvalResult()
    result.curves = {}
    for t in types:
        r = _run_cocoeval(gt_data, preds, t, max_dets, backend_name)
        result[t] = r.metrics
        result.curves[t] = r
    result.info = {
        "ground_truth": gt_data.source,
        "benchmark": gt_data.benchmark.name if gt_data.benchmark else None,
        "gt_images": len(gt_data.images),
        "gt_instances": gt_data.n_instances,
        "gt_crowd_regions": gt_data.n_crowd,
        "gt_source_categories": gt_data.n_source_categories,
        "predictions": preds.source,
        "prediction_kind": preds.kind,
        "n_predictions": len(preds.records),
        "images_with_predictions": len(per_image),
        "score_field": preds.score_field,
        "prediction_category_ids": preds.source_category_ids,
        "images_matched_by_file_name": preds.remapped_by_file_name,
        "boxes": (
            "given"
            if preds.has_boxes == len(preds.records)
            else "from masks"
            if preds.has_boxes == 0
            else f"given for {preds.has_boxes}, from masks for {len(preds.records) - preds.has_boxes}"
        ),
        "iou_types": list(types),
        "max_dets": [1, 10, max_dets],
        "backend": backend_name,
        "warnings": list(preds.warnings),
    }
    if verbose:
        from cuts3d.eval.report import describe_inputs, format_table

        print(describe_inputs(result.info), file=sys.stdout)
        print(format_table(result), file=sys.stdout)
    if output_dir is not None:
        from cuts3d.eval.report import write_report

        paths = write_report(result, output_dir)
        if verbose:
            print("wrote " + ", ".join(str(p) for p in paths), file=sys.stdout)
    return result
