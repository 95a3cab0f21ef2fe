"""``cuts3d extract``: pseudo-masks for a folder of images (see cuts3d.pipeline.extract)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from cuts3d.config_io import settings_help

if TYPE_CHECKING:  # torch is imported by cuts3d.pipeline.extract: only when the command runs (cuts3d.cli)
    from cuts3d.pipeline.extract import ExtractConfig



def _settings_classes() -> list:
    from cuts3d.cuts.config import CutConfig
    from cuts3d.pipeline.extract import ExtractConfig

    return [("", ExtractConfig), ("cut.", CutConfig)]

def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_help(parser, _settings_classes, "extraction settings")
    parser.add_argument("--images", required=True, help="image folder (recursive) or a text file of paths")
    parser.add_argument("--output", required=True, help="output folder; the result is OUTPUT/annotations.json")
    parser.add_argument("--backbone", help="dino_vits16 | dino_vits8 | dino_vitb16 | dino_vitb8 (default) | dinov2_vits14 | dinov2_vitb14")
    parser.add_argument("--weights", help="backbone checkpoint file (official layout), or 'none' for random weights")
    parser.add_argument("--depth", help="depth_anything_v2_small (default) | zoedepth | precomputed:DIR")
    parser.add_argument("--depth-weights", dest="depth_weights", help="depth model folder (Hugging Face format) or 'none'")
    parser.add_argument("--method", choices=["cuts3d", "maskcut"], help="cut method (default cuts3d)")
    parser.add_argument("--shard", help="i/n: process shard i of n (SLURM: $SLURM_ARRAY_TASK_ID/N)")
    parser.add_argument("--device", help="cpu (default) | cuda | cuda:N | auto")
    parser.add_argument("--config", type=Path, help="YAML file of extract settings (a 'cut:' section for CutConfig)")
    parser.add_argument("--engine", choices=["local", "ray"], default="local", help="run shards locally or as Ray tasks")
    parser.add_argument("--address", help="Ray cluster address (default: start a local cluster)")
    parser.add_argument("--num-shards", type=int, default=None, help="number of Ray tasks (engine ray)")
    parser.add_argument("--cut-workers", dest="cut_workers", type=int, metavar="K",
                        help="cut the images in K single-threaded worker processes (engine ray: K Ray CPU tasks per "
                             "shard) while this process runs the ViT and depth of the next ones; default 0 (cut here). "
                             "Results are the same; a rerun with another K resumes")
    parser.add_argument("--overwrite", action="store_true",
                        help="if OUTPUT holds results of other settings (see OUTPUT/fingerprint.json), delete them and "
                             "start over; without it such a rerun is refused. Results of the same settings are resumed")
    parser.add_argument("--depth-cache", dest="depth_cache", metavar="DIR",
                        help="depth-cache folder (default OUTPUT/depth_cache); share one between output folders to "
                             "reuse depth across cut settings (maps are filed under a hash of the depth settings)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings, e.g. size=448 cut.tau_knn=0.1")


def run(args: argparse.Namespace) -> int:
    from cuts3d.cli import print_error, setup_errors
    from cuts3d.pipeline.shards import IncompleteMergeError, ShardLockedError

    try:
        return _run(args)
    except (*setup_errors(), ShardLockedError, IncompleteMergeError) as err:
        # Configuration and set-up problems: the message names the file and the fix; no traceback.
        print_error("extract", err)
        return 2


def with_resolved_device(cfg: "ExtractConfig") -> "ExtractConfig":
    """``cfg`` with its device checked and made concrete (``auto`` -> ``cuda:0`` or ``cpu``) for the ViT, the depth
    model and the cuts; ``--device cuda`` on a machine without a GPU is a one-line DeviceError here."""
    from cuts3d.devices import resolve_device

    device = str(resolve_device(cfg.device))
    if device == cfg.device and cfg.cut.device == device:
        return cfg
    return dataclasses.replace(cfg, device=device, cut=dataclasses.replace(cfg.cut, device=device))


def _run(args: argparse.Namespace) -> int:
    from cuts3d.cli import check_output_writable
    from cuts3d.pipeline.extract import extract, resolve_config

    base = {
        "images": args.images,
        "output": args.output,
        "backbone": args.backbone,
        "weights": args.weights,
        "depth": args.depth,
        "depth_weights": args.depth_weights,
        "shard": args.shard,
        "device": args.device,
        "depth_cache": args.depth_cache,
        "cut_workers": args.cut_workers,
    }
    overrides = list(args.overrides) + ([f"cut.method={args.method}"] if args.method else [])
    cfg = resolve_config(base, args.config, overrides)
    if args.engine != "ray":  # Ray tasks pick their device on the workers, which may have GPUs the driver lacks
        cfg = with_resolved_device(cfg)
    check_output_writable(cfg.output)  # read-only, no permission, full disk: fail now, before the models load
    if args.engine == "ray":
        from cuts3d.pipeline.ray_engine import extract_ray

        result = extract_ray(cfg, args.num_shards or 1, address=args.address, overwrite=args.overwrite)
    else:
        result = extract(cfg, overwrite=args.overwrite)
    if result is not None:
        print(f"wrote {result}")
    return 0
