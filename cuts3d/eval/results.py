"""Result types of the class-agnostic evaluation: metric names, per-IoU-type curves, the result dict.

Kept apart from the code that computes them so that :mod:`cuts3d.eval.report` (tables, plots)
and :mod:`cuts3d.eval.coco` (which calls the report) both import from here, without importing
each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: The IoU types the evaluation computes.
IOU_TYPES: tuple[str, ...] = ("segm", "bbox")


def metric_keys(max_dets: int = 100) -> tuple[str, ...]:
    """Metric names returned by :func:`cuts3d.eval.evaluate` for ``max_dets`` detections per image.

    ``AP*`` use up to ``max_dets`` detections per image; ``AR1``/``AR10``/``AR<max_dets>`` are the
    average recall with 1, 10 and ``max_dets`` detections per image.
    """
    return ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", f"AR{max_dets}")


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
    """``{iou_type: {metric: percent}}`` as returned by :func:`cuts3d.eval.evaluate` (a plain
    ``dict``), with the details attached as attributes: ``info`` (inputs, counts, score field,
    warnings) and ``curves`` (``iou_type`` -> :class:`IouTypeResult`, for the precision-recall plot)."""

    info: dict[str, Any]
    curves: dict[str, IouTypeResult]
