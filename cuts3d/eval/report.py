"""Reporting for the class-agnostic COCO evaluation (CutLER / CutS3D protocol).

Turns the output of :func:`cuts3d.eval.evaluate` into what papers in this field report: a table
of AP, AP50, AP75, AP small/medium/large and AR@1/10/100 (percent) per IoU type, written as
``metrics.json`` and ``metrics.md``, plus ``pr_curve.png``: COCOeval's interpolated
precision-recall curves (101 recall points, all areas, ``maxDets`` = the largest) at IoU 0.50
and 0.75, and ``eval_info.json`` with what was evaluated (inputs, counts, score field, warnings).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

# the result type lives in its own module, so report and coco (which calls the report) do not
# import each other
from cuts3d.eval.results import EvalResult


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def format_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table, one row per IoU type, values in percent with two decimals
    (``n/a`` where the ground truth has no instance of that size)."""
    types = list(metrics)
    if not types:
        return ""
    keys = list(metrics[types[0]])
    lines = ["| IoU type | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for t in types:
        lines.append(f"| {t} | " + " | ".join(_fmt(metrics[t][k]) for k in keys) + " |")
    return "\n".join(lines)


def _cats(ids: list[Any]) -> str:
    if len(ids) <= 6:
        return f"category ids {ids}"
    return f"{len(ids)} category ids ({', '.join(map(str, ids[:3]))}, ..., {ids[-1]})"


def describe_inputs(info: Mapping[str, Any]) -> str:
    """A few lines saying what was evaluated against what and how."""
    md = info["max_dets"]
    lines = [
        f"Class-agnostic COCO evaluation ({info['backend']}, maxDets {'/'.join(map(str, md))}, "
        f"IoU types {' '.join(info['iou_types'])})",
        f"  ground truth: {info['ground_truth']}: {info['gt_images']} images, {info['gt_instances']} instances, "
        f"{info['gt_crowd_regions']} crowd (ignore) regions; "
        + (
            f"{info['gt_source_categories']} categories merged into 1"
            if info["gt_source_categories"] > 1
            else "class-agnostic already"
        ),
        f"  predictions:  {info['predictions']} ({info['prediction_kind']}): {info['n_predictions']} predictions on "
        f"{info['images_with_predictions']} images; score from {info['score_field']!r}; "
        f"{_cats(info['prediction_category_ids'])} mapped to 1; boxes {info['boxes']}",
    ]
    if info.get("images_matched_by_file_name"):
        lines.append(f"  {info['images_matched_by_file_name']} image ids mapped to the ground truth's by file name")
    lines.extend(f"  note: {w}" for w in info.get("warnings", []))
    return "\n".join(lines)


def _json_value(v: float) -> float | None:
    return None if isinstance(v, float) and math.isnan(v) else round(float(v), 4)


def plot_pr_curves(result: EvalResult, path: str | os.PathLike[str]) -> Path:
    """Write the precision-recall curves at IoU 0.50 and 0.75 (one panel per IoU type) to ``path``.

    Uses COCOeval's interpolated precision (``eval['precision']``, area ``all``, the largest
    maxDets) at its 101 recall thresholds; precision is 0 beyond the highest recall reached.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    types = list(result.curves)
    fig = Figure(figsize=(5.0 * len(types), 4.4), dpi=110)
    FigureCanvasAgg(fig)
    max_dets = result.info["max_dets"][-1]
    for i, t in enumerate(types):
        ax = fig.add_subplot(1, len(types), i + 1)
        curve = result.curves[t]
        for iou, color, key in ((0.5, "tab:blue", "AP50"), (0.75, "tab:orange", "AP75")):
            ti = int(np.where(np.isclose(curve.iou_thrs, iou))[0][0])
            prec = curve.precision[ti, :, 0, -1].copy()  # (R,) area "all", largest maxDets
            prec[prec < 0] = np.nan
            ax.plot(curve.rec_thrs, prec, color=color, lw=2, label=f"IoU {iou:.2f} ({key} {_fmt(result[t][key])})")
            rmax = float(curve.recall[ti, 0, -1])
            if rmax >= 0:
                ax.axvline(rmax, color=color, ls=":", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision (interpolated)")
        ax.set_title(f"{t}: class-agnostic, maxDets {max_dets}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=9, title="dotted: max recall", title_fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    return out


def write_report(result: EvalResult, output_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``metrics.json``, ``metrics.md``, ``pr_curve.png`` and ``eval_info.json``.

    ``metrics.json`` is ``{"segm": {"AP": .., ...}, "bbox": {...}}`` in percent (4 decimals;
    ``null`` where pycocotools reports -1, i.e. no ground truth of that size).
    Returns the written paths.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {t: {k: _json_value(v) for k, v in m.items()} for t, m in result.items()}
    p_json = out / "metrics.json"
    p_json.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    p_md = out / "metrics.md"
    p_md.write_text(
        "# Class-agnostic COCO evaluation\n\n```\n"
        + describe_inputs(result.info)
        + "\n```\n\n"
        + format_table(result)
        + "\n\nValues in percent. ![precision-recall](pr_curve.png)\n",
        encoding="utf-8",
    )
    p_info = out / "eval_info.json"
    p_info.write_text(json.dumps(result.info, indent=2, default=str) + "\n", encoding="utf-8")
    p_png = plot_pr_curves(result, out / "pr_curve.png")
    return [p_json, p_md, p_png, p_info]
