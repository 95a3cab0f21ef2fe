"""Class-agnostic evaluation (the CutLER / CutS3D evaluation protocol).

Unsupervised instance segmentation is scored as class-agnostic COCO AP: all ground-truth
categories merged into one, ``iscrowd`` regions ignored, pycocotools ``COCOeval`` with maxDets
[1, 10, 100] (300 for LVIS). :func:`evaluate` does this for detector predictions (COCO results
lists) and for raw pseudo-masks (COCO JSON from ``cuts3d extract``)::

    from cuts3d.eval import evaluate
    metrics = evaluate("GT.json", "PRED.json", iou_types=("segm", "bbox"), max_dets=100)
    metrics["segm"]["AP"]  # percent

Modules, in the order the data flows: :mod:`~cuts3d.eval.inputs` (the error type, JSON reading),
:mod:`~cuts3d.eval.ground_truth` (load, check, merge categories), :mod:`~cuts3d.eval.predictions`
(load and check predictions), :mod:`~cuts3d.eval.matching` (pseudo-mask images to ground-truth
images by relative path), :mod:`~cuts3d.eval.masks` (every mask to a decoded, valid RLE),
:mod:`~cuts3d.eval.scoring` (top ``max_dets`` per image, COCOeval, metrics),
:mod:`~cuts3d.eval.results` (result types), :mod:`~cuts3d.eval.report` (table, markdown, PR
curve), :mod:`~cuts3d.eval.coco` (:func:`evaluate`, wiring the steps), :mod:`~cuts3d.eval.registry`
(benchmark short names), :mod:`~cuts3d.eval.cli` (``cuts3d eval``).
"""

from cuts3d.eval.coco import evaluate
from cuts3d.eval.ground_truth import GroundTruth, load_ground_truth
from cuts3d.eval.inputs import EvalInputError
from cuts3d.eval.predictions import Predictions, load_predictions
from cuts3d.eval.results import IOU_TYPES, EvalResult, metric_keys
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
