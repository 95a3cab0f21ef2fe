"""Mask quality of MaskCut vs CutS3D on seeded synthetic 3D scenes (class-agnostic mask AP, pycocotools).

Usage::

    python benchmarks/synthetic_quality.py [--num-scenes 50] [--seed 0] [--no-crf] [--no-ablations]

Every method segments the same scenes (touching same-class instances at different depths, see
cuts3d.synthetic); predictions are scored with cuts3d.eval.evaluate against the scenes' ground truth,
category 1. Ablation rows switch single CutS3D options to show what the defaults were chosen from.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
from tqdm import tqdm

from _results import append
from cuts3d import CutConfig, segment
from cuts3d.eval import evaluate
from cuts3d.masks.coco import ground_truth_dataset, mask_annotation
from cuts3d.masks.crf import crf_available
from cuts3d.synthetic import make_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-scenes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-crf", action="store_true")
    parser.add_argument("--no-ablations", action="store_true")
    args = parser.parse_args()

    base = CutConfig(crf=not args.no_crf and crf_available())
    variants = {
        "maskcut (CutLER)": dataclasses.replace(base, method="maskcut", eigensolver="dense"),
        "cuts3d (defaults)": base,
    }
    if not args.no_ablations:
        variants.update(
            {
                "cuts3d, no Spatial Importance": dataclasses.replace(base, spatial_importance=False),
                "cuts3d, depth_pool=avg": dataclasses.replace(base, depth_pool="avg"),
                "cuts3d, sink=far": dataclasses.replace(base, sink="far"),
                "cuts3d, trivial_cut=literal": dataclasses.replace(base, trivial_cut="literal"),
                "cuts3d, trivial_cut=component": dataclasses.replace(base, trivial_cut="component"),
            }
        )
    scenes = [make_scene(args.seed + i) for i in range(args.num_scenes)]
    gt = ground_truth_dataset([s.masks for s in scenes])
    rows = []
    for name, cfg in variants.items():
        dets, sc_below, sc_total = [], 0, 0
        t0 = time.perf_counter()
        for idx, s in enumerate(tqdm(scenes, desc=name, unit="scene")):
            for inst in segment(s.features, s.depth, s.image, cfg):
                dets.append(mask_annotation(inst.mask, idx + 1, inst.score))
                if inst.confidence is not None:
                    sc_below += int((inst.confidence[inst.patch_mask] < 1).sum())
                    sc_total += int(inst.patch_mask.sum())
        seconds = (time.perf_counter() - t0) / len(scenes)
        m = evaluate(gt, dets, iou_types=("segm",), verbose=False)["segm"] if dets else {"AP50": 0.0, "AP": 0.0, "AP75": 0.0}
        share = f"{100 * sc_below / sc_total:.1f}" if sc_total else "-"
        rows.append(f"| {name} | {m['AP50']:.1f} | {m['AP75']:.1f} | {m['AP']:.1f} | {len(dets) / len(scenes):.2f} | {share} | {seconds:.2f} |")
    n_gt = len(gt["annotations"])
    table = "\n".join(
        [
            f"{args.num_scenes} scenes (seeds {args.seed}..{args.seed + args.num_scenes - 1}, 30x30 patches, C=64, 240x240 px), "
            f"{n_gt} ground-truth instances, CRF: {base.crf}",
            "",
            "| method | mask AP50 | mask AP75 | mask AP | masks/image | % mask patches with SC < 1 | s/image |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
    print(table)
    append("synthetic_quality: MaskCut vs CutS3D mask AP on synthetic 3D scenes", table)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
