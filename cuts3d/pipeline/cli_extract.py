"""``cuts3d extract``: pseudo-masks for a folder of images (see cuts3d.pipeline.extract)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cuts3d.pipeline.extract import extract, resolve_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="image folder (recursive) or a text file of paths")
    parser.add_argument("--output", required=True, help="output folder; the result is OUTPUT/annotations.json")
    parser.add_argument("--backbone", help="dino_vits16 | dino_vits8 | dino_vitb16 | dino_vitb8 (default) | dinov2_vits14 | dinov2_vitb14")
    parser.add_argument("--weights", help="backbone checkpoint file (official layout), or 'none' for random weights")
    parser.add_argument("--depth", help="depth_anything_v2_small (default) | zoedepth | precomputed:DIR")
    parser.add_argument("--depth-weights", dest="depth_weights", help="depth model folder (Hugging Face format) or 'none'")
    parser.add_argument("--method", choices=["cuts3d", "maskcut"], help="cut method (default cuts3d)")
    parser.add_argument("--shard", help="i/n: process shard i of n (SLURM: $SLURM_ARRAY_TASK_ID/N)")
    parser.add_argument("--device", help="cpu | cuda | cuda:N")
    parser.add_argument("--config", type=Path, help="YAML file of extract settings (a 'cut:' section for CutConfig)")
    parser.add_argument("--engine", choices=["local", "ray"], default="local", help="run shards locally or as Ray tasks")
    parser.add_argument("--address", help="Ray cluster address (default: start a local cluster)")
    parser.add_argument("--num-shards", type=int, default=None, help="number of Ray tasks (engine ray)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings, e.g. size=448 cut.tau_knn=0.1")


def run(args: argparse.Namespace) -> int:
    from cuts3d.depth import WeightsUnavailableError as DepthWeightsUnavailable
    from cuts3d.features import CheckpointError, WeightsUnavailableError

    try:
        return _run(args)
    except (FileNotFoundError, ValueError, CheckpointError, WeightsUnavailableError, DepthWeightsUnavailable) as err:
        # Configuration and set-up problems: the message names the file and the fix; no traceback.
        print(f"cuts3d extract: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    base = {
        "images": args.images,
        "output": args.output,
        "backbone": args.backbone,
        "weights": args.weights,
        "depth": args.depth,
        "depth_weights": args.depth_weights,
        "shard": args.shard,
        "device": args.device,
    }
    overrides = list(args.overrides) + ([f"cut.method={args.method}"] if args.method else [])
    cfg = resolve_config(base, args.config, overrides)
    if args.engine == "ray":
        from cuts3d.pipeline.ray_engine import extract_ray

        result = extract_ray(cfg, args.num_shards or 1, address=args.address)
    else:
        result = extract(cfg)
    if result is not None:
        print(f"wrote {result}")
    return 0
