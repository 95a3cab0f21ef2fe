"""``cuts3d predict``: COCO results of a trained run on an image folder (see cuts3d.engine.predict)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cuts3d.engine.predict import run_predict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="run folder written by `cuts3d train`")
    parser.add_argument("--images", required=True, type=Path, help="image folder or list file")
    parser.add_argument("--output", required=True, type=Path, help="results JSON to write")
    parser.add_argument("--max-dets", type=int, default=100, help="detections per image (LVIS: 300)")
    parser.add_argument("--score-thresh", type=float, default=0.0)
    parser.add_argument("--gt", type=Path, help="ground-truth JSON whose image ids to use (matched by file name)")
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    try:
        out = run_predict(args.model, args.images, args.output, args.max_dets, args.score_thresh, args.gt, args.device)
    except (FileNotFoundError, ValueError) as err:
        print(f"cuts3d predict: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
