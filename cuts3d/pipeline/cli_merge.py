"""``cuts3d merge OUT [OUT ...]``: merge shard logs into one COCO JSON with renumbered ids.

Refuses (exit 2, one line naming them) when a shard of an i/n split has no log or has not finished its
images, unless ``--allow-partial``. The merged ``info`` (method, backbone, depth, confidence floor) comes from
the folders' ``config.yaml``; folders extracted with other settings are refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("outputs", nargs="+", type=Path, help="extraction output folders holding shards/")
    parser.add_argument("--output", type=Path, default=None, help="where to write annotations.json (default: the first folder)")
    parser.add_argument(
        "--allow-partial", dest="allow_partial", action="store_true",
        help="write what there is when shards are missing or unfinished (default: refuse and name them)",
    )


def run(args: argparse.Namespace) -> int:
    from cuts3d.pipeline.shards import IncompleteMergeError, merge

    dest = args.output or args.outputs[0]
    try:
        result = merge(args.outputs, dest, allow_partial=args.allow_partial)
    except (FileNotFoundError, ValueError, IncompleteMergeError) as err:
        # Missing folders or shards, corrupt logs, mixed settings: one line naming them and the fix.
        print(f"cuts3d merge: error: {err}", file=sys.stderr)
        return 2
    for line in result.warnings:
        print(f"cuts3d merge: warning: {line}", file=sys.stderr)
    print(
        f"wrote {dest / 'annotations.json'}: {result.num_images} images, {result.num_annotations} annotations, "
        f"{len(result.failed)} failed images (reasons in {dest / 'errors.jsonl'})"
    )
    return 0
