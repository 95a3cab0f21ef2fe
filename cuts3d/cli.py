"""Command line interface: a thin layer over the Python API.

Usage::

    cuts3d demo --synthetic --output out/demo      # offline demo on synthetic 3D scenes
    cuts3d extract --images DIR --output OUT       # pseudo-masks -> OUT/annotations.json
    cuts3d merge OUT1 OUT2 ...                     # merge shard logs
    cuts3d eval --gt GT.json --pred PRED.json      # class-agnostic COCO AP

Each sub-command lives next to the code it drives and exposes two functions,
``add_arguments(parser)`` and ``run(args) -> int``; this module only wires them up.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Modules are imported lazily so that `cuts3d --help`
# stays fast and one command's optional dependency cannot break another command.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("cuts3d.demo", "Run MaskCut and CutS3D on synthetic scenes (offline) and write figures."),
    "extract": ("cuts3d.pipeline.cli_extract", "Pseudo-masks (COCO JSON with Spatial Confidence) for an image folder."),
    "merge": ("cuts3d.pipeline.cli_merge", "Merge the shard logs of extraction jobs into one COCO JSON."),
    "train": ("cuts3d.engine.cli_train", "Train the class-agnostic Cascade Mask R-CNN on pseudo-masks."),
    "selftrain": ("cuts3d.engine.cli_selftrain", "One self-training round: predictions + old pseudo-masks, train again."),
    "predict": ("cuts3d.engine.cli_predict", "Detections of a trained run on an image folder (COCO results)."),
    "eval": ("cuts3d.eval.cli", "Class-agnostic COCO evaluation of predictions or pseudo-masks."),
}


def build_parser() -> argparse.ArgumentParser:
    from cuts3d import __version__

    parser = argparse.ArgumentParser(prog="cuts3d", description="CutS3D unsupervised instance segmentation")
    parser.add_argument("--version", action="version", version=f"cuts3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
