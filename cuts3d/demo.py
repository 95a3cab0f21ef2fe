"""``cuts3d demo``: figures of pseudo-masks, on synthetic 3D scenes (offline) or on your own images.

Usage::

    cuts3d demo --synthetic --output out/demo [--num-scenes 12] [--figures 4] [--config FILE.yaml] [key=value ...]
    cuts3d demo --input photos/ --output out/photos [--weights FILE] [--depth-weights DIR] [key=value ...]

With ``--input``, ``cuts3d extract`` runs on the folder and every image gets ``figures/<name>.png``: the
image, its numbered instance masks (outlined in contrasting colours, with a legend of their scores), the depth
map and one Spatial Confidence map per instance (cuts3d); a red banner warns when the backbone or depth
weights are random. The COCO JSON is ``annotations.json`` beside them.

For each seeded scene (see :mod:`cuts3d.synthetic`) both methods segment the same features; the first
``--figures`` scenes get a PNG (see :mod:`cuts3d.viz.panels`) with the image, depth, ground truth, MaskCut and
CutS3D masks in a grid, then CutS3D's per-instance Spatial Confidence maps. Class-agnostic mask AP50 / AP over
all scenes is printed and written to ``summary.md`` (with how many scenes were drawn) and ``summary.json``; the
resolved CutS3D config is saved as ``config.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

# torch, the synthetic scenes and the plotting are imported inside the functions that use them, so that building
# the `cuts3d` parser stays light (cuts3d.cli).


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true", help="use synthetic 3D scenes (offline)")
    source.add_argument("--input", type=Path, help="a folder (or list file) of your images")
    parser.add_argument("--output", required=True, type=Path, help="output directory")
    parser.add_argument("--backbone", help="--input: feature backbone (see cuts3d extract)")
    parser.add_argument("--weights", help="--input: backbone checkpoint file, or 'none'")
    parser.add_argument("--depth", help="--input: depth model or precomputed:DIR")
    parser.add_argument("--depth-weights", dest="depth_weights", help="--input: depth model folder, or 'none'")
    parser.add_argument("--device", help="cpu | cuda | cuda:N | auto (default cpu)")
    parser.add_argument("--num-scenes", type=int, default=12, help="scenes to evaluate (default 12)")
    parser.add_argument("--figures", type=int, default=4, help="scenes to draw (default 4; --input draws every image)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first scene")
    parser.add_argument("--overwrite", action="store_true",
                        help="--input: replace results of other settings in --output (see cuts3d extract --overwrite)")
    parser.add_argument("--config", type=Path, default=None, help="YAML file (CutConfig fields; with --input, extract settings)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. crf=false (--input: cut.crf=false)")


def run_demo(output: Path, num_scenes: int = 12, figures: int = 4, seed: int = 0, config=None) -> dict:
    """Run the comparison and write figures and summaries to ``output``; returns the AP summary."""
    from tqdm import tqdm

    from cuts3d.config_io import save_config
    from cuts3d.cuts.config import CutConfig
    from cuts3d.cuts.segment import segment
    from cuts3d.eval import evaluate
    from cuts3d.masks.coco import ground_truth_dataset, mask_annotation
    from cuts3d.synthetic import FAMILIES, make_family_scene
    from cuts3d.synthetic.quality import background_outranks

    config = config or CutConfig()
    output.mkdir(parents=True, exist_ok=True)
    save_config(config, output / "config.yaml")
    methods = {
        "maskcut": dataclasses.replace(config, method="maskcut", eigensolver="dense"),
        "cuts3d": dataclasses.replace(config, method="cuts3d"),
    }
    families = list(FAMILIES)
    gts, preds = [], {name: [] for name in methods}
    outranks = {name: 0 for name in methods}
    for idx in tqdm(range(num_scenes), desc="demo scenes", unit="scene"):
        # Scenes cycle through the families (blobs, indoor, street, tabletop, blobs, ...).
        family = families[idx % len(families)]
        scene = make_family_scene(family, seed + idx)
        gts.append(scene.masks)
        results = {name: segment(scene.features, scene.depth, scene.image, cfg) for name, cfg in methods.items()}
        for name, insts in results.items():
            preds[name] += [mask_annotation(i.mask, idx + 1, i.score) for i in insts]
            outranks[name] += background_outranks(insts, scene.masks)
        if idx < figures:
            _draw_scene(output / f"scene_{seed + idx:04d}.png", scene, f"{family}, seed {seed + idx}", results, config)
    gt = ground_truth_dataset(gts)
    summary = {}
    for name, dets in preds.items():
        if dets:
            m = evaluate(gt, dets, iou_types=("segm",), verbose=False)["segm"]
            summary[name] = {"AP50": m["AP50"], "AP": m["AP"], "masks": len(dets)}
        else:
            summary[name] = {"AP50": 0.0, "AP": 0.0, "masks": 0}
        summary[name]["background_first"] = outranks[name]
    lines = [
        f"Synthetic scenes: {num_scenes} (seeds {seed}..{seed + num_scenes - 1}; families "
        f"{', '.join(families[: min(num_scenes, len(families))])} in turn), "
        f"ground-truth instances: {sum(len(g) for g in gts)}, CRF: {config.crf}",
        "",
        "| method | mask AP50 | mask AP | masks | scenes whose top mask is background |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {k} | {v['AP50']:.1f} | {v['AP']:.1f} | {v['masks']} | {v['background_first']} |" for k, v in summary.items()]
    table = "\n".join(lines)
    drawn = _figures_note(num_scenes, figures, seed)
    (output / "summary.md").write_text(table + "\n\n" + drawn + "\n")
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table)
    print(f"\n{drawn}")
    print(f"\nfigures, summary.md and config.yaml written to {output}")
    return summary


def _score_name(method: str, score_front: bool = False) -> str:
    """What an instance's score is, for the legends."""
    if method != "cuts3d":
        return "NCut strength"
    return "mean SC x 3D front" if score_front else "mean SC"


def _draw_scene(path: Path, scene, name: str, results: dict, config) -> Path:
    """The figure of one synthetic scene: image, depth, ground truth, both methods' masks, CutS3D's SC maps."""
    from cuts3d.viz.panels import ConfidenceMaps, MapPanel, MasksPanel, save_figure, scene_figure

    c3, mc = results["cuts3d"], results["maskcut"]
    panels = [
        MapPanel("image", scene.image),
        MapPanel("depth (larger = farther)", scene.depth, cmap="viridis", label="depth"),
        MasksPanel(f"ground truth ({len(scene.masks)})", scene.image, list(scene.masks)),
        MasksPanel(f"MaskCut ({len(mc)})", scene.image, [i.mask for i in mc], [i.score for i in mc], _score_name("maskcut")),
        MasksPanel(f"CutS3D ({len(c3)})", scene.image, [i.mask for i in c3], [i.score for i in c3], _score_name("cuts3d", config.score_front)),
    ]
    confidence = ConfidenceMaps(scene.image, [i.mask for i in c3], [i.confidence for i in c3], title="CutS3D: Spatial Confidence per instance")
    title = f"synthetic scene ({name}): {len(scene.masks)} ground-truth objects (instances numbered in discovery order)"
    note = (
        "How to read the masks panels:\n"
        "- numbers: instances in discovery order\n"
        "- legend: instance: score\n"
        "  MaskCut: NCut strength (mean of the\n"
        "  scaled Fiedler vector over the mask)\n"
        "  CutS3D: mean Spatial Confidence\n"
        "  x (1 + share of the surroundings\n"
        "  lying behind the mask) / 2\n"
        "- colours only tell instances apart;\n"
        "  they do not match across panels"
    )
    return save_figure(scene_figure(panels, confidence, title=title, note=note), path)


def _figures_note(num_scenes: int, figures: int, seed: int) -> str:
    """E.g. ``figures: 4 of 12 scenes drawn (scene_0000.png .. scene_0003.png); --figures N draws more``."""
    n = max(0, min(figures, num_scenes))
    if n == 0:
        return f"figures: 0 of {num_scenes} scenes drawn; --figures N draws some"
    files = f"scene_{seed:04d}.png" if n == 1 else f"scene_{seed:04d}.png .. scene_{seed + n - 1:04d}.png"
    more = "; --figures N draws more" if n < num_scenes else ""
    return f"figures: {n} of {num_scenes} scenes drawn ({files}){more}"


def _random_weights(cfg, meta: dict) -> tuple[bool, bool]:
    """(backbone random, depth random) from the resolved config and ``run_meta.json`` (``"random"`` weights ids)."""
    backbone = cfg.weights == "none" or meta.get("backbone_weights") == "random"
    uses_depth_model = not str(cfg.depth or "").startswith("precomputed:")
    depth = uses_depth_model and (cfg.depth_weights == "none" or meta.get("depth_weights") == "random")
    return backbone, depth


def run_images_demo(cfg, overwrite: bool = False) -> list[Path]:
    """Extract pseudo-masks for ``cfg.images`` and draw one figure per image; returns the PNG paths.

    ``overwrite``: replace results of other settings in ``cfg.output`` (else such a rerun is refused)."""
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from cuts3d.depth import DepthCache, PrecomputedDepth
    from cuts3d.io.images import list_images, load_image
    from cuts3d.masks.coco import decode_confidence
    from cuts3d.pipeline.extract import depth_cache_root, extract
    from cuts3d.viz.panels import ConfidenceMaps, MapPanel, MasksPanel, random_weights_banner, save_figure, scene_figure
    from pycocotools import mask as mask_utils

    result = extract(cfg, overwrite=overwrite)
    coco = json.loads(result.read_text())
    out = Path(cfg.output)
    paths = {r.rel: r.path for r in list_images(cfg.images)}
    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    meta = json.loads((out / "run_meta.json").read_text())
    cache_key = meta.get("depth_cache_key")
    banner = random_weights_banner(*_random_weights(cfg, meta))
    cache = DepthCache(depth_cache_root(cfg), cache_key) if cache_key else None
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
        scores = [float(a.get("score", float("nan"))) for a in anns]
        panels = [
            MapPanel("image", rgb),
            MasksPanel(f"{cfg.cut.method} masks ({len(masks)})", rgb, masks, scores, _score_name(cfg.cut.method, cfg.cut.score_front)),
        ]
        if depth is not None:
            # the cached depth is the square network input; show it at the image's aspect ratio
            shown = np.asarray(Image.fromarray(np.asarray(depth, dtype=np.float32)).resize(rgb.shape[1::-1], Image.BILINEAR))
            panels.append(MapPanel("depth (larger = farther)", shown, cmap="viridis", label="depth"))
        confidence = ConfidenceMaps(rgb, masks, maps) if cfg.cut.method == "cuts3d" else None
        name = img["file_name"].replace("/", "__").rsplit(".", 1)[0] + ".png"
        (out / "figures").mkdir(parents=True, exist_ok=True)
        title = f"{img['file_name']}: {len(masks)} {cfg.cut.method} pseudo-masks (backbone {cfg.backbone})"
        fig = scene_figure(panels, confidence, title=title, banner=banner)
        written.append(save_figure(fig, out / "figures" / name))
    print(f"{len(written)} figures in {out / 'figures'}; pseudo-masks in {result}")
    return written


def run(args: argparse.Namespace) -> int:
    """``cuts3d demo``; set-up problems (bad settings, missing weights, no GPU, unwritable output) are one line, exit 2."""
    from cuts3d.cli import print_error, setup_errors

    try:
        return _run(args)
    except setup_errors() as err:
        print_error("demo", err)
        return 2


def _run(args: argparse.Namespace) -> int:
    from cuts3d.cli import check_output_writable
    from cuts3d.devices import resolve_device

    if args.input is not None:
        from cuts3d.pipeline.cli_extract import with_resolved_device
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
        cfg = with_resolved_device(resolve_config(base, args.config, args.overrides))
        check_output_writable(cfg.output)
        run_images_demo(cfg, overwrite=args.overwrite)
        return 0
    from cuts3d.cuts.config import load_cut_config

    if args.device is not None:
        args.overrides = [*args.overrides, f"device={args.device}"]
    config = load_cut_config(args.config, args.overrides)
    resolve_device(config.device)  # --device cuda without a GPU: one line now, not a CUDA error mid-run
    check_output_writable(args.output)
    run_demo(args.output, args.num_scenes, args.figures, args.seed, config)
    return 0
