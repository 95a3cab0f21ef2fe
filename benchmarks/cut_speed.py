"""Time per image of the whole cut stage: CutS3D (ours) vs a reference MaskCut solved like CutLER.

Usage::

    python benchmarks/cut_speed.py [--images 3] [--grid 60] [--channels 768] [--no-crf]

Inputs per image: a 60x60 grid of C=768 features, a 480x480 depth map and RGB image (cuts3d.synthetic, same
inputs for every method, same run). Timed:

- reference MaskCut: cuts3d.cuts.reference.reference_maskcut, the dense generalized eigenproblem with
  scipy.linalg.eigh(D - W, D) every round as CutLER does, N=3, plus CutLER's CRF at 480x480;
- cuts3d: segment() with the defaults: N=3 rounds of Spatial-Importance NCut (Lanczos), LocalCut, T=6
  Spatial Confidence cuts, CRF at 480x480;
- maskcut (ours, lanczos): segment(method="maskcut", eigensolver="lanczos") for reference.
"""

from __future__ import annotations

import argparse
import time

import torch

from _results import append
from cuts3d import CutConfig, segment
from cuts3d.cuts.reference import reference_maskcut
from cuts3d.masks.crf import crf_available
from cuts3d.synthetic import make_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--grid", type=int, default=60)
    parser.add_argument("--channels", type=int, default=768)
    parser.add_argument("--no-crf", action="store_true")
    args = parser.parse_args()
    crf = not args.no_crf and crf_available()
    scenes = [make_scene(100 + i, grid=args.grid, channels=args.channels, patch_size=8) for i in range(args.images)]
    shape = scenes[0].depth.shape

    methods = {
        "reference MaskCut (scipy.linalg.eigh, CutLER)": lambda s: reference_maskcut(
            torch.from_numpy(s.features), s.image, s.depth.shape, crf=crf
        ),
        "cuts3d (LocalCut + T=6 confidence)": lambda s: segment(s.features, s.depth, s.image, CutConfig(crf=crf)),
        "maskcut (ours, lanczos)": lambda s: segment(
            s.features, s.depth, s.image, CutConfig(method="maskcut", eigensolver="lanczos", crf=crf)
        ),
    }
    segment(scenes[0].features[:, :8, :8], None, None, CutConfig(method="maskcut", crf=False))  # warm-up imports
    times: dict[str, float] = {}
    for name, fn in methods.items():
        t0 = time.perf_counter()
        counts = [len(fn(s)) for s in scenes]
        times[name] = (time.perf_counter() - t0) / len(scenes)
        print(f"{name}: {times[name]:.3f} s/image, masks per image {counts}", flush=True)
    ref = times["reference MaskCut (scipy.linalg.eigh, CutLER)"]
    rows = [f"| {name} | {t:.3f} | {ref / t:.1f}x |" for name, t in times.items()]
    table = "\n".join(
        [
            f"{args.images} images, {args.grid}x{args.grid} patches, C={args.channels}, N=3, image {shape[1]}x{shape[0]}, CRF: {crf}",
            "",
            "| method | s/image | speed-up vs reference |",
            "|---|---:|---:|",
            *rows,
        ]
    )
    print(table)
    append("cut_speed: whole cut stage per image", table)


if __name__ == "__main__":
    main()
