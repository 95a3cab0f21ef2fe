"""Class-agnostic COCO evaluation (the CutLER / CutS3D evaluation protocol): :func:`evaluate`.

CutLER (Wang et al., CVPR 2023) and CutS3D (Sick et al., ICCV 2025) report unsupervised
instance segmentation and detection as *class-agnostic* COCO AP: every ground-truth category is
merged into a single category, ``iscrowd`` regions stay ignore regions, every prediction gets
that category, and pycocotools' ``COCOeval`` scores the result with its standard parameters
(IoU 0.50:0.05:0.95, area ranges small/medium/large, ``maxDets`` [1, 10, 100]; LVIS runs use
[1, 10, 300]). :func:`evaluate` runs that protocol for any COCO-style ground truth and for two
kinds of predictions: a detector's COCO results list and a pseudo-mask COCO JSON (as written
by ``cuts3d extract``).

It avoids the silent traps that turn real results into wrong numbers: predictions with category
0 (or any id that is not a ground-truth category) score nothing in plain pycocotools, even with
``useCats=0``; here both sides are remapped to category 1. As in detectron2's ``COCOEvaluator``
(used by CutLER), mask AP is computed from the masks alone (a prediction's area is its mask area)
and box AP from the boxes (a prediction's given ``bbox``, or the tight box of its mask).

The steps live in their own modules; this one wires them together:

* :mod:`cuts3d.eval.ground_truth`: load and check the ground truth, merge its categories;
* :mod:`cuts3d.eval.predictions`: load and check predictions (scores, masks, boxes), matching a
  pseudo-mask JSON's images by relative path (:mod:`cuts3d.eval.matching`) and decoding every
  mask (:mod:`cuts3d.eval.masks`);
* :mod:`cuts3d.eval.scoring`: keep the top ``max_dets`` per image, run COCOeval, summarise;
* :mod:`cuts3d.eval.report`: the table, ``metrics.json`` / ``metrics.md`` / ``pr_curve.png``.

Every input problem raises :class:`~cuts3d.eval.inputs.EvalInputError` with a one-line message
that names the file and says what to do. The names below stay importable from here for code
written against the former single-module layout.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from cuts3d.eval.ground_truth import GroundTruth, load_ground_truth
from cuts3d.eval.inputs import AGNOSTIC_CATEGORY, EvalInputError
from cuts3d.eval.predictions import SCORE_KEYS, Predictions, load_predictions
from cuts3d.eval.report import describe_inputs, format_table, write_report
from cuts3d.eval.results import IOU_TYPES, EvalResult, IouTypeResult, metric_keys
from cuts3d.eval.scoring import BACKEND_ALIASES, BACKENDS, keep_top_per_image, run_cocoeval

__all__ = [
    "AGNOSTIC_CATEGORY",
    "BACKENDS",
    "IOU_TYPES",
    "SCORE_KEYS",
    "EvalInputError",
    "EvalResult",
    "GroundTruth",
    "IouTypeResult",
    "Predictions",
    "evaluate",
    "load_ground_truth",
    "load_predictions",
    "metric_keys",
]


def _normalise_iou_types(iou_types: str | Iterable[str] | None, gt: GroundTruth) -> tuple[str, ...]:
    """The IoU types to evaluate: as asked (checked, deduplicated), else the benchmark's, else
    both when the ground truth has masks, else ``("bbox",)``."""
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
            and/or ``bbox`` [x, y, w, h] px), or a pseudo-mask COCO dict with ``annotations``
            (its ``images`` matched to the ground truth's by relative path). Every mask is
            decoded and checked. Ground-truth images without predictions count as misses.
        iou_types: any of ``"segm"``, ``"bbox"``. ``None``: the benchmark's types for a registry
            name, else both when the ground truth has masks, else ``("bbox",)``.
        max_dets: detections scored per image (top by score); maxDets is [1, 10, max_dets].
            ``None``: the benchmark's value (300 for LVIS), else 100. Only those are handed to
            COCOeval; a note says how many were left out.
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
            predictions have no masks, a mask that does not decode, file names matching the
            ground truth ambiguously, a JSON nested too deeply to parse; the one-line message
            names the file and what to do.
    """
    backend_name = BACKEND_ALIASES.get(str(backend).lower())
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
    # COCOeval scores only the top max_dets per image but loads every prediction: hand it just those
    scored, trimmed = keep_top_per_image(preds.records, max_dets)
    note = trimmed.note(max_dets)
    if note:
        preds.warnings.append(note)

    result = EvalResult()
    result.curves = {}
    for t in types:
        r = run_cocoeval(gt_data, scored, t, max_dets, backend_name)
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
        "n_scored": len(scored),
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
        print(describe_inputs(result.info), file=sys.stdout)
        print(format_table(result), file=sys.stdout)
    if output_dir is not None:
        paths = write_report(result, output_dir)
        if verbose:
            print("wrote " + ", ".join(str(p) for p in paths), file=sys.stdout)
    return result
