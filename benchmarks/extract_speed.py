"""Per-stage extraction time per image and peak memory, on real COCO images, random-weight models; or, with
``--workers``, images/s of the whole extraction by number of cut workers.

Usage::

    python benchmarks/extract_speed.py [--images 8] [--backbones dino_vits8 dino_vitb8] [--data ../shared/data/coco_val2017_dev128/images]
    python benchmarks/extract_speed.py --workers 0 1 2 [--images 24] [--no-ray]

Per-stage mode: each backbone runs in its own process (so peak memory is its own) through the real pipeline
(cuts3d.pipeline.extract.run_shard): load + resize to 480 -> ViT (random weights, same architecture and cost as
the pretrained one) -> depth (Depth Anything V2 Small architecture, random weights) -> cuts (NCut with Spatial
Importance, LocalCut, T=6 confidence) -> CRF -> write (RLE/confidence encoding and the flushed shard log).

Workers mode (``ExtractConfig.cut_workers``): ``backbone=dino_vits16 weights=none depth_weights=none size=480``.
The model stage is made cheap "as on a GPU": a warm-up run (cheap cut settings: 1 NCut round, no CRF; depth is
keyed by the depth settings only) fills a shared depth cache, so the timed runs read depth from it. Each timed
run is one whole ``extract()`` call (models, pool start-up, merge included) into a fresh output folder: the
local engine with each ``--workers`` value, then the Ray engine (a local cluster of 2 CPUs, one shard) with each
value >= 1. The time to the first logged record is measured by watching the shard log.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
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


def _timed(run, log: Path) -> tuple[float, float | None, Path]:
    """(seconds of ``run()``, seconds until ``log`` held a record or None, what ``run()`` returned)."""
    first: list[float] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def watch() -> None:
        while not stop.is_set():
            if log.exists() and log.stat().st_size > 0:
                first.append(time.perf_counter() - t0)
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    result = run()
    total = time.perf_counter() - t0
    stop.set()
    watcher.join()
    return total, (first[0] if first else None), result


def workers_mode(data: Path, n: int, workers: list[int], with_ray: bool) -> None:
    from cuts3d.cuts.config import CutConfig
    from cuts3d.pipeline.extract import ExtractConfig, extract
    from cuts3d.pipeline.shards import shard_log_path

    paths = sorted(data.glob("*.jpg"))[:n]
    if len(paths) < n:
        raise SystemExit(f"{data}: {len(paths)} images, {n} asked for")
    rows = []
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "images.txt"
        listing.write_text("".join(f"{p}\n" for p in paths))

        def cfg(output: str, k: int, cut: CutConfig | None = None) -> ExtractConfig:
            return ExtractConfig(images=str(listing), output=str(Path(tmp) / output), backbone="dino_vits16",
                                 weights="none", depth_weights="none", size=480, cache_depth=True,
                                 depth_cache=str(Path(tmp) / "depth_cache"), cut_workers=k, cut=cut or CutConfig())

        t = time.perf_counter()
        extract(cfg("warm", 0, CutConfig(n_iters=1, crf=False)))  # fills the depth cache
        notes.append(f"warm-up (depth cache fill, cheap cuts): {time.perf_counter() - t:.1f} s")
        reference = None

        def record(engine: str, k: int, total: float, first: float | None, result: Path) -> None:
            nonlocal reference
            data_bytes = Path(result).read_bytes()
            reference = reference or data_bytes
            rows.append({"engine": engine, "workers": k, "total": total, "first": first,
                         "same": data_bytes == reference})
            print(rows[-1], flush=True)

        for k in workers:
            c = cfg(f"local-{k}", k)
            total, first, result = _timed(lambda: extract(c), shard_log_path(Path(c.output), 0, 1))
            record("local", k, total, first, result)
        ray_workers = [k for k in workers if k >= 1]
        if with_ray and ray_workers:
            import ray

            from cuts3d.pipeline.ray_engine import extract_ray

            t = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            notes.append(f"ray.init (local cluster, num_cpus=2; not in the Ray rows): {time.perf_counter() - t:.1f} s")
            try:
                for k in ray_workers:
                    c = cfg(f"ray-{k}", k)
                    total, first, result = _timed(lambda: extract_ray(c, num_shards=1),
                                                  shard_log_path(Path(c.output), 0, 1))
                    record("ray", k, total, first, result)
            finally:
                ray.shutdown()

    one = {r["engine"]: r["total"] for r in rows if r["workers"] == 1}
    lines = [f"{n} COCO val2017 images (dev128), dino_vits16 random weights, 480 px, depth from the cache (filled by a "
             "warm-up run), CPU; whole extract() call per row", "",
             "| engine | cut workers | s total | images/s | speed vs 1 worker | s to first record | same annotations.json |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio = f"{one[r['engine']] / r['total']:.2f}" if r["engine"] in one else "-"
        first = f"{r['first']:.1f}" if r["first"] is not None else "-"
        lines.append(f"| {r['engine']} | {r['workers']} | {r['total']:.1f} | {n / r['total']:.2f} | {ratio} | {first} | "
                     f"{'yes' if r['same'] else 'NO'} |")
    table = "\n".join(lines)
    print(table)
    print("\n".join(notes))
    append("extract_speed: images/s by cut workers (local and Ray engines)", table, "\n".join(f"- {x}" for x in notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="images (default 8 per-stage, 24 with --workers)")
    parser.add_argument("--backbones", nargs="+", default=["dino_vits8", "dino_vitb8"])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "coco_val2017_dev128" / "images")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (ExtractConfig.device)")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, nargs="+", metavar="K",
                        help="images/s of the whole extraction by cut_workers (local engine: each K; Ray: each K >= 1)")
    parser.add_argument("--no-ray", dest="ray", action="store_false", help="with --workers: skip the Ray engine")
    args = parser.parse_args()
    if args.workers:
        workers_mode(args.data, args.images or 24, args.workers, args.ray)
        return
    args.images = args.images or 8
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
