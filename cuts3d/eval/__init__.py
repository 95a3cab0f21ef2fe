"""Class-agnostic evaluation (the CutLER / CutS3D evaluation protocol).

Unsupervised instance segmentation is scored as class-agnostic COCO AP: all ground-truth
categories merged into one, ``iscrowd`` regions ignored, pycocotools ``COCOeval`` with maxDets
[1, 10, 100] (300 for LVIS). :func:`evaluate` does this for detector predictions (COCO results
lists) and for raw pseudo-masks (COCO JSON from ``cuts3d extract``)::

    from cuts3d.eval import evaluate
    metrics = evaluate("GT.json", "PRED.json", iou_types=("segm", "bbox"), max_dets=100)
    metrics["segm"]["AP"]  # percent

Modules: :mod:`~cuts3d.eval.coco` (loading, checks, COCOeval), :mod:`~cuts3d.eval.registry`
(benchmark short names), :mod:`~cuts3d.eval.report` (table, markdown, PR curve),
:mod:`~cuts3d.eval.cli` (``cuts3d eval``).
"""

from cuts3d.eval.coco import (
    IOU_TYPES,
    EvalInputError,
    EvalResult,
    GroundTruth,
    Predictions,
    evaluate,
    load_ground_truth,
    load_predictions,
    metric_keys,
)
from cuts3d.eval.registry import BENCHMARKS, ENV_VAR, Benchmark

__all__ = [
    "BENCHMARKS",
    "ENV_VAR",
    "IOU_TYPES",
    "Benchmark",
    "EvalInputError",
    "EvalResult",
    "GroundTruth",
    "Predictions",
    "evaluate",
    "load_ground_truth",
    "load_predictions",
    "metric_keys",
]
