"""``cuts3d eval``: class-agnostic COCO AP (CutLER / CutS3D evaluation protocol) from the shell.

A thin layer over :func:`cuts3d.eval.evaluate`::

    cuts3d eval --gt GT.json --pred PRED.json [--iou-type segm bbox] [--max-dets 100] [--output DIR]
    cuts3d eval --gt coco --data-dir ~/data --pred coco_instances_results.json
    cuts3d eval --list-datasets

Exit status: 0 on success, 2 when the input cannot be evaluated (the reason is printed).
"""

from __future__ import annotations

import argparse
import sys

from cuts3d.eval import registry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``cuts3d eval`` options to ``parser``."""
    names = ", ".join(registry.BENCHMARKS)
    parser.add_argument(
        "--gt",
        metavar="GT",
        help=f"ground truth: a COCO instances JSON (any categories; all become one) or a benchmark name ({names}) "
        f"resolved in --data-dir / ${registry.ENV_VAR}",
    )
    parser.add_argument(
        "--pred",
        metavar="PRED.json",
        help="predictions: a COCO results list (image_id, score, segmentation and/or bbox) or a pseudo-mask COCO JSON "
        "from `cuts3d extract` (score: 'score', else 'confidence_score')",
    )
    parser.add_argument(
        "--iou-type",
        nargs="+",
        choices=("segm", "bbox"),
        default=None,
        help="IoU types to evaluate (default: segm bbox, or bbox for box-only ground truth)",
    )
    parser.add_argument(
        "--max-dets",
        type=int,
        default=None,
        help="detections scored per image, maxDets is [1, 10, N] (default: 100; 300 for --gt lvis)",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        default=None,
        help="write metrics.json, metrics.md, pr_curve.png and eval_info.json here",
    )
    parser.add_argument(
        "--backend",
        choices=("pycocotools", "faster"),
        default="pycocotools",
        help="COCOeval implementation; 'faster' needs faster-coco-eval (pip install 'cuts3d[fast]')",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help=f"directory holding benchmark annotation files (default: ${registry.ENV_VAR})",
    )
    parser.add_argument(
        "--score-key",
        metavar="FIELD",
        default=None,
        help="prediction field holding the score (default: 'score', then 'confidence_score')",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the metric table")
    parser.add_argument(
        "--list-datasets",
        action="store_true",
        help="list the benchmark names, their expected files and whether they are found, then exit",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``cuts3d eval``; returns the exit status."""
    if args.list_datasets:
        print(registry.describe(args.data_dir))
        return 0
    if not args.gt or not args.pred:
        print("cuts3d eval: error: --gt and --pred are required (or use --list-datasets)", file=sys.stderr)
        return 2
    from cuts3d.eval.coco import EvalInputError, evaluate
    from cuts3d.eval.report import format_table

    try:
        metrics = evaluate(
            args.gt,
            args.pred,
            iou_types=args.iou_type,
            max_dets=args.max_dets,
            backend=args.backend,
            output_dir=args.output,
            data_dir=args.data_dir,
            verbose=not args.quiet,
            score_key=args.score_key,
        )
    except EvalInputError as exc:
        print(f"cuts3d eval: error: {exc}", file=sys.stderr)
        return 2
    if args.quiet:
        print(format_table(metrics))
    return 0
