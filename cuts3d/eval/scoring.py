"""Scoring: trim predictions to the top ``max_dets`` per image, run COCOeval, summarise the metrics.

pycocotools' ``COCOeval`` with one category is class-agnostic evaluation (``useCats`` stays 1:
``useCats=0`` still filters predictions by category id). Its ``summarize`` computes AP with a
hard-coded ``maxDets=100`` (AP = -1 with maxDets [1, 10, 300]), so the metrics are summarised here
from ``eval['precision']`` at the largest maxDets, as detectron2's ``COCOevalMaxDets`` does.

COCOeval scores at most ``max_dets`` predictions per image, the best by score, but loads, indexes
and computes areas for every one: 100k predictions on one image took minutes. :func:`keep_top_per_image`
keeps exactly the predictions COCOeval would score (its order: score descending, ties in input
order, a stable sort) before COCOeval sees them, so the numbers do not change.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from cuts3d.eval.ground_truth import GroundTruth
from cuts3d.eval.inputs import AGNOSTIC_CATEGORY, EvalInputError
from cuts3d.eval.results import IouTypeResult, metric_keys

#: Evaluation backends: pycocotools (reference) and faster-coco-eval (optional, same numbers).
BACKENDS: tuple[str, ...] = ("pycocotools", "faster")
BACKEND_ALIASES: dict[str, str] = {
    "pycocotools": "pycocotools",
    "faster": "faster",
    "faster-coco-eval": "faster",
    "faster_coco_eval": "faster",
}


@dataclass
class Trimmed:
    """What :func:`keep_top_per_image` dropped.

    Attributes:
        images_over: images with more than ``max_dets`` predictions.
        dropped: predictions not scored (beyond the top ``max_dets`` of their image).
        most: the largest number of predictions on one image.
        most_image: that image's (ground-truth) id.
    """

    images_over: int = 0
    dropped: int = 0
    most: int = 0
    most_image: Any = None

    def note(self, max_dets: int) -> str | None:
        """The one note for the user, or ``None`` when nothing was dropped."""
        if not self.dropped:
            return None
        return (
            f"{self.images_over} image{'s have' if self.images_over > 1 else ' has'} more than {max_dets} predictions "
            f"(up to {self.most}, image_id {self.most_image!r}); only the top {max_dets} by score per image count "
            f"(maxDets), the other {self.dropped} predictions are not scored"
        )


def keep_top_per_image(
    records: Sequence[Mapping[str, Any]], max_dets: int
) -> tuple[list[Mapping[str, Any]], Trimmed]:
    """The records COCOeval would score with maxDets ``max_dets``, in their input order.

    Args:
        records: N prediction records with ``image_id`` and a finite ``score``.
        max_dets: predictions scored per image.

    Returns:
        The kept records (per image the ``max_dets`` best by score, ties in input order, as
        COCOeval's stable sort picks them) and what was dropped.
    """
    n = len(records)
    codes: dict[Any, int] = {}
    image = np.fromiter((codes.setdefault(r["image_id"], len(codes)) for r in records), dtype=np.int64, count=n)
    per_image = np.bincount(image, minlength=len(codes))  # (G,)
    if n == 0 or per_image.max() <= max_dets:
        return list(records), Trimmed(most=int(per_image.max()) if n else 0)
    score = np.fromiter((float(r["score"]) for r in records), dtype=np.float64, count=n)
    order = np.lexsort((np.arange(n), -score, image))  # by image, best score first, ties in input order
    first = np.cumsum(per_image) - per_image  # (G,) where each image starts in ``order``
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - first[image[order]]
    keep = np.flatnonzero(rank < max_dets)
    busiest = int(np.argmax(per_image))
    ids = list(codes)
    trimmed = Trimmed(
        images_over=int((per_image > max_dets).sum()),
        dropped=n - keep.size,
        most=int(per_image[busiest]),
        most_image=ids[busiest],
    )
    return [records[i] for i in keep], trimmed


def _dataset_copy(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a COCO dict that COCOeval may change: pycocotools replaces each annotation's
    ``segmentation`` and adds ``ignore``, so each annotation dict is copied; the polygons inside are
    only read. (A deepcopy copied every polygon, slowly, and recursed through any nested extra field.)"""
    out = dict(dataset)
    out["images"] = [dict(img) for img in dataset["images"]]
    out["annotations"] = [dict(a) for a in dataset["annotations"]]
    out["categories"] = [dict(c) for c in dataset["categories"]]
    return out


def summarize(
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


def run_cocoeval(
    gt: GroundTruth, records: Sequence[Mapping[str, Any]], iou_type: str, max_dets: int, backend: str
) -> IouTypeResult:
    """Run COCOeval (pycocotools or faster-coco-eval) for one IoU type on class-agnostic inputs.

    Args:
        gt: the class-agnostic ground truth (not modified).
        records: checked prediction records (:attr:`Predictions.records`), best already trimmed
            with :func:`keep_top_per_image`.
        iou_type: ``"segm"`` or ``"bbox"``.
        max_dets: the largest maxDets; maxDets is [1, 10, max_dets].
        backend: ``"pycocotools"`` or ``"faster"``.
    """
    results: list[dict[str, Any]] = []
    for r in records:
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
            coco_gt = FCOCO(_dataset_copy(gt.dataset))
            coco_dt = coco_gt.loadRes(results)
            evaluator = COCOeval_faster(coco_gt, coco_dt, iou_type)
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO()
            coco_gt.dataset = _dataset_copy(gt.dataset)
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
    metrics = summarize(precision, recall, np.asarray(params.iouThrs), list(params.areaRngLbl), list(params.maxDets))
    return IouTypeResult(
        metrics={k: metrics[k] for k in metric_keys(max_dets)},
        precision=precision[:, :, 0],
        recall=recall[:, 0],
        iou_thrs=np.asarray(params.iouThrs, dtype=float),
        rec_thrs=np.asarray(params.recThrs, dtype=float),
    )
