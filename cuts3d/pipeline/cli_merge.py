"""``cuts3d merge OUT [OUT ...]``: merge shard logs into one COCO JSON with renumbered ids."""

from __future__ import annotations

import argparse
from pathlib import Path

from cuts3d.pipeline.shards import merge


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("outputs", nargs="+", type=Path, help="extraction output folders holding shards/")
    parser.add_argument("--output", type=Path, default=None, help="where to write annotations.json (default: the first folder)")


def run(args: argparse.Namespace) -> int:
    dest = args.output or args.outputs[0]
    coco = merge(args.outputs, dest)
    print(f"wrote {dest / 'annotations.json'}: {len(coco['images'])} images, {len(coco['annotations'])} annotations")
    return 0
