"""``cuts3d selftrain``: one self-training round from a trained run (see cuts3d.engine.selftrain)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cuts3d.engine.cli_train import preset_or_file
from cuts3d.engine.selftrain import selftrain


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="the previous round's run folder")
    parser.add_argument("--data", required=True, type=Path, help="the previous round's annotations (pseudo-mask JSON)")
    parser.add_argument("--images", required=True, type=Path, help="the training images")
    parser.add_argument("--output", required=True, type=Path, help="the new run folder")
    parser.add_argument("--config", action="append", default=[], help="preset or YAML file (repeatable)")
    parser.add_argument("--score-thresh", type=float, default=0.7, help="keep predictions with this score or more (round 1: 0.7)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", metavar="key=value")


def run(args: argparse.Namespace) -> int:
    try:
        final = selftrain(args.model, args.data, args.images, args.output, [preset_or_file(c) for c in args.config],
                          args.overrides, args.score_thresh, args.device)
    except (FileNotFoundError, ValueError) as err:
        print(f"cuts3d selftrain: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {final}")
    return 0
