"""``cuts3d train``: train the class-agnostic Cascade Mask R-CNN on pseudo-masks (see cuts3d.engine.train)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cuts3d.data.dataset import PseudoMaskDataError
from cuts3d.engine.train import resolve_train_config, train
from cuts3d.features.weights import CheckpointError, WeightsUnavailableError

PRESETS = Path(__file__).resolve().parents[1] / "configs"


def preset_or_file(name: str) -> Path:
    """``paper``, ``one_gpu``, ``tiny_cpu`` (shipped presets) or a YAML file path."""
    preset = PRESETS / f"{name}.yaml"
    return preset if preset.is_file() and not Path(name).is_file() else Path(name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="pseudo-mask COCO JSON (cuts3d extract's annotations.json)")
    parser.add_argument("--images", required=True, help="folder the JSON's file_name entries are relative to")
    parser.add_argument("--output", required=True, help="run folder (checkpoints, config.yaml, metrics.jsonl, log.txt, tb/, eval/)")
    parser.add_argument("--config", action="append", default=[], help="preset (paper | one_gpu | tiny_cpu) or YAML file; repeatable")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings, e.g. max_iter=1000 sc_loss=false")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = resolve_train_config(
            {"data": args.data, "images": args.images, "output": args.output},
            [preset_or_file(c) for c in args.config],
            args.overrides,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"cuts3d train: error: {err}", file=sys.stderr)
        return 2
    try:
        final = train(cfg, resume=args.resume)
    except (FileNotFoundError, CheckpointError, WeightsUnavailableError, PseudoMaskDataError) as err:
        # Set-up problems (backbone weights offline, a wrong weights file, missing data, a confidence floor the
        # pseudo-masks cannot give): the message names the
        # file and the fix, as `cuts3d extract` does for the ViT weights; no traceback.
        print(f"cuts3d train: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {final}")
    return 0
