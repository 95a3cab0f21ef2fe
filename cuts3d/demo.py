"""``cuts3d demo``: figures of pseudo-masks, on synthetic 3D scenes (offline) or on your own images.

Usage::

    cuts3d demo --synthetic --output out/demo [--num-scenes 12] [--figures 4] [--config FILE.yaml] [key=value ...]
    cuts3d demo --input photos/ --output out/photos [--weights FILE] [--depth-weights DIR] [key=value ...]

With ``--input``, ``cuts3d extract`` runs on the folder and every image gets ``figures/<name>.png``: the
image with coloured instance masks and their contours, the depth map and the Spatial Confidence maps; the
COCO JSON is ``annotations.json`` beside them.

For each seeded scene (see :mod:`cuts3d.synthetic`) both methods segment the same features; the first
``--figures`` scenes get a PNG with the image, depth, ground truth, MaskCut masks, CutS3D masks and the
Spatial Confidence maps side by side. Class-agnostic mask AP50 / AP over all scenes is printed and written to
``summary.md`` and ``summary.json``; the resolved CutS3D config is saved as ``config.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cuts3d.config_io import load_cut_config, save_config
from cuts3d.cuts.segment import segment
from cuts3d.masks.coco import ground_truth_dataset, mask_annotation
from cuts3d.synthetic import make_scene


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true", help="use synthetic 3D scenes (offline)")
    source.add_argument("--input", type=Path, help="a folder (or list file) of your images")
    parser.add_argument("--output", required=True, type=Path, help="output directory")
    parser.add_argument("--backbone", help="--input: feature backbone (see cuts3d extract)")
    parser.add_argument("--weights", help="--input: backbone checkpoint file, or 'none'")
    parser.add_argument("--depth", help="--input: depth model or precomputed:DIR")
    parser.add_argument("--depth-weights", dest="depth_weights", help="--input: depth model folder, or 'none'")
    parser.add_argument("--device", help="--input: cpu | cuda")
    parser.add_argument("--num-scenes", type=int, default=12, help="scenes to evaluate (default 12)")
    parser.add_argument("--figures", type=int, default=4, help="scenes to draw (default 4; --input draws every image)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first scene")
    parser.add_argument("--config", type=Path, default=None, help="YAML file (CutConfig fields; with --input, extract settings)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. crf=false (--input: cut.crf=false)")


def run_demo(output: Path, num_scenes: int = 12, figures: int = 4, seed: int = 0, config=None) -> dict:
    """Run the comparison and write figures and summaries to ``output``; returns the AP summary."""
    from cuts3d.cuts.config import CutConfig
    from cuts3d.eval import evaluate
    from cuts3d.viz.panels import confidence_panel, overlay, save_scene_figure

    config = config or CutConfig()
    output.mkdir(parents=True, exist_ok=True)
    save_config(config, output / "config.yaml")
    methods = {
        "maskcut": dataclasses.replace(config, method="maskcut", eigensolver="dense"),
        "cuts3d": dataclasses.replace(config, method="cuts3d"),
    }
    gts, preds = [], {name: [] for name in methods}
    for idx in tqdm(range(num_scenes), desc="demo scenes", unit="scene"):
        scene = make_scene(seed + idx)
        gts.append(scene.masks)
        results = {name: segment(scene.features, scene.depth, scene.image, cfg) for name, cfg in methods.items()}
        for name, insts in results.items():
            preds[name] += [mask_annotation(i.mask, idx + 1, i.score) for i in insts]
        if idx < figures:
            c3 = results["cuts3d"]
            panels = [
                ("image", scene.image, {}),
                ("depth (larger = farther)", scene.depth, {"cmap": "viridis"}),
                (f"ground truth ({len(scene.masks)})", overlay(scene.image, list(scene.masks)), {}),
                (f"MaskCut ({len(results['maskcut'])})", overlay(scene.image, [i.mask for i in results["maskcut"]]), {}),
                (f"CutS3D ({len(c3)})", overlay(scene.image, [i.mask for i in c3]), {}),
                (
                    "Spatial Confidence",
                    confidence_panel(scene.depth.shape, [i.mask for i in c3], [i.confidence for i in c3]),
                    {"cmap": "magma", "vmin": 0.0, "vmax": 1.0},
                ),
            ]
            save_scene_figure(output / f"scene_{seed + idx:04d}.png", panels, title=f"synthetic scene {seed + idx}")

    gt = ground_truth_dataset(gts)
    summary = {}
    for name, dets in preds.items():
        if dets:
            m = evaluate(gt, dets, iou_types=("segm",), verbose=False)["segm"]
            summary[name] = {"AP50": m["AP50"], "AP": m["AP"], "masks": len(dets)}
        else:
            summary[name] = {"AP50": 0.0, "AP": 0.0, "masks": 0}
    lines = [
        f"Synthetic scenes: {num_scenes} (seeds {seed}..{seed + num_scenes - 1}), "
        f"ground-truth instances: {sum(len(g) for g in gts)}, CRF: {config.crf}",
        "",
        "| method | mask AP50 | mask AP | masks |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {k} | {v['AP50']:.1f} | {v['AP']:.1f} | {v['masks']} |" for k, v in summary.items()]
    table = "\n".join(lines)
    (output / "summary.md").write_text(table + "\n")
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table)
    print(f"\nfigures, summary.md and config.yaml written to {output}")
    return summary


def run_images_demo(cfg) -> list[Path]:
    """Extract pseudo-masks for ``cfg.images`` and draw one figure per image; returns the PNG paths."""
    from cuts3d.depth import DepthCache, PrecomputedDepth
    from cuts3d.io.images import list_images, load_image
    from cuts3d.masks.coco import decode_confidence
    from cuts3d.pipeline.extract import extract
    from cuts3d.viz.panels import confidence_panel, overlay, save_scene_figure
    from pycocotools import mask as mask_utils

    result = extract(cfg)
    coco = json.loads(result.read_text())
    out = Path(cfg.output)
    paths = {r.rel: r.path for r in list_images(cfg.images)}
    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    cache_key = json.loads((out / "run_meta.json").read_text()).get("depth_cache_key")
    cache = DepthCache(out / "depth_cache", cache_key) if cache_key else None
    precomputed = PrecomputedDepth(Path(cfg.depth.split(":", 1)[1])) if cfg.depth.startswith("precomputed:") else None
    written = []
    for img in tqdm(coco["images"], desc="figures", unit="img"):
        rgb = load_image(paths[img["file_name"]], max_pixels=cfg.max_pixels)
        anns = by_image.get(img["id"], [])
        masks = [mask_utils.decode(a["segmentation"]).astype(bool) for a in anns]
        maps = [decode_confidence(a["confidence"]) if "confidence" in a else None for a in anns]
        depth = None
        if precomputed is not None:
            depth = precomputed(img["file_name"], rgb.shape[:2])
        elif cache is not None:
            depth = cache.get(img["file_name"])
        panels = [(f"{cfg.cut.method} masks ({len(masks)})", overlay(rgb, masks), {})]
        if depth is not None:
            # the cached depth is the square network input; show it at the image's aspect ratio
            shown = np.asarray(Image.fromarray(np.asarray(depth, dtype=np.float32)).resize(rgb.shape[1::-1], Image.BILINEAR))
            panels.append(("depth (larger = farther)", shown, {"cmap": "viridis"}))
        if cfg.cut.method == "cuts3d":
            panels.append(("Spatial Confidence", confidence_panel(rgb.shape[:2], masks, maps), {"cmap": "magma", "vmin": 0.0, "vmax": 1.0}))
        name = img["file_name"].replace("/", "__").rsplit(".", 1)[0] + ".png"
        (out / "figures").mkdir(parents=True, exist_ok=True)
        written.append(save_scene_figure(out / "figures" / name, panels, title=img["file_name"]))
    print(f"{len(written)} figures in {out / 'figures'}; pseudo-masks in {result}")
    return written


def run(args: argparse.Namespace) -> int:
    if args.input is not None:
        from cuts3d.pipeline.extract import resolve_config

        base = {
            "images": str(args.input),
            "output": str(args.output),
            "backbone": args.backbone,
            "weights": args.weights,
            "depth": args.depth,
            "depth_weights": args.depth_weights,
            "device": args.device,
        }
        run_images_demo(resolve_config(base, args.config, args.overrides))
        return 0
    config = load_cut_config(args.config, args.overrides)
    run_demo(args.output, args.num_scenes, args.figures, args.seed, config)
    return 0
