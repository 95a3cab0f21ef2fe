"""``cuts3d predict``: COCO results of a trained run on an image folder (see cuts3d.engine.predict).

A missing run folder, a damaged checkpoint (wrong sha256, truncated, zero bytes), a ``last_checkpoint`` naming a
missing file or a device that is not here end with one ``cuts3d predict: error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cuts3d.engine.cli_train import DefaultsHelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = DefaultsHelpFormatter  # --help shows every default
    parser.add_argument("--model", required=True, type=Path,
                        help="run folder written by `cuts3d train` (its last checkpoint)")
    parser.add_argument("--images", required=True, type=Path, help="image folder or list file")
    parser.add_argument("--output", required=True, type=Path, help="results JSON to write")
    parser.add_argument("--max-dets", type=int, default=100, help="detections per image (LVIS: 300)")
    parser.add_argument("--score-thresh", type=float, default=0.0, help="drop detections scored below this")
    parser.add_argument("--gt", type=Path, default=None,
                        help="ground-truth JSON whose image ids to use (matched by file name); without it: images numbered "
                             "from 1 in sorted order, as `cuts3d extract` does")
    parser.add_argument("--device", default="auto",
                        help="auto (a GPU when one is visible) | cpu | cuda | cuda:N")


def run(args: argparse.Namespace) -> int:
    from cuts3d.engine.predict import run_predict

    try:
        out = run_predict(args.model, args.images, args.output, args.max_dets, args.score_thresh, args.gt, args.device)
    except (FileNotFoundError, ValueError) as err:  # CheckpointError and DeviceError are ValueErrors
        print(f"cuts3d predict: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
