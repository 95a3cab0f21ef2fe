"""Per-stage extraction time per image and peak memory, on real COCO images, random-weight models.

Usage::

    python benchmarks/extract_speed.py [--images 8] [--backbones dino_vits8 dino_vitb8] [--data ../shared/data/coco_val2017_dev128/images]

Each backbone runs in its own process (so peak memory is its own) through the real pipeline
(cuts3d.pipeline.extract.run_shard): load + resize to 480 -> ViT (random weights, same architecture and cost as
the pretrained one) -> depth (Depth Anything V2 Small architecture, random weights) -> cuts (NCut with Spatial
Importance, LocalCut, T=6 confidence) -> CRF -> write (RLE/confidence encoding and the flushed shard log).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import append

STAGES = ["load", "vit", "depth", "cuts", "crf", "write"]


def single(backbone: str, data: Path, n: int, device: str = "cpu") -> dict:
    import torch

    from cuts3d.pipeline.extract import ExtractConfig, run_shard
    from cuts3d.io.images import list_images

    torch.set_grad_enabled(False)
    paths = sorted(data.glob("*.jpg"))[:n]
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "images.txt"
        listing.write_text("\n".join(str(p) for p in paths) + "\n")
        cfg = ExtractConfig(images=str(listing), output=str(Path(tmp) / "out"), backbone=backbone, weights="none",
                            depth_weights="none", cache_depth=False, device=device)
        records = list_images(listing)
        # Warm-up image: model construction and first-call overheads are not per-image cost.
        run_shard(ExtractConfig.from_dict({**cfg.to_dict(), "output": str(Path(tmp) / "warm")}), records[:1], 0, 1)
        t0 = time.perf_counter()
        timings, _ = run_shard(cfg, records, 0, 1)
        total = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    return {"backbone": backbone, "images": len(records), "total": total / len(records),
            **{s: timings.get(s, 0.0) / len(records) for s in STAGES}, "peak_rss_mb": peak_mb, "peak_gpu_mb": gpu_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--backbones", nargs="+", default=["dino_vits8", "dino_vitb8"])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "coco_val2017_dev128" / "images")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (ExtractConfig.device)")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(single(args.single, args.data, args.images, args.device)))
        return
    rows = []
    for b in args.backbones:
        out = subprocess.run([sys.executable, __file__, "--single", b, "--images", str(args.images), "--data", str(args.data),
                              "--device", args.device],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(r, flush=True)
    header = "| backbone | " + " | ".join(STAGES) + " | total s/image | peak RSS MB | peak GPU MB |"
    lines = [f"{rows[0]['images']} COCO val2017 images (dev128), 480 px, random weights, device {args.device}", "", header,
             "|---|" + "---:|" * (len(STAGES) + 3)]
    for r in rows:
        lines.append(f"| {r['backbone']} | " + " | ".join(f"{r[s]:.3f}" for s in STAGES)
                     + f" | {r['total']:.3f} | {r['peak_rss_mb']:.0f} | {r['peak_gpu_mb']:.0f} |")
    table = "\n".join(lines)
    print(table)
    append("extract_speed: per-stage seconds per image", table)


if __name__ == "__main__":
    main()
