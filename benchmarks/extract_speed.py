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
The model stage is made cheap "as on a GPU": a warm-up run (cheap cut settings: 1 NCut round, no CRF) fills a
shared depth cache and keeps each image's ViT features, which the timed runs replay instead of running the ViT
(:func:`install_feature_replay`; on this CPU the random ViT-S/16 costs about as much per image as the whole cut
stage, so it would hide the cut stage's scaling). Each timed run is one whole ``extract()`` call into a fresh
output folder: the local engine with each ``--workers`` value, then the Ray engine (a local cluster of 2 CPUs,
one shard) with each value >= 1. The shard log is watched to time every record: images/s is the stream's rate
from the K-th record (when each of K workers is running) to the last.
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


def single(backbone: str, data: Path, n: int, device: str = "cpu", cut_workers: int = 0) -> dict:
    import torch

    from cuts3d.pipeline.extract import ExtractConfig, run_shard
    from cuts3d.io.images import list_images
    from cuts3d.pipeline.shards import shard_log_path

    torch.set_grad_enabled(False)
    paths = sorted(data.glob("*.jpg"))[:n]
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "images.txt"
        listing.write_text("\n".join(str(p) for p in paths) + "\n")
        cfg = ExtractConfig(images=str(listing), output=str(Path(tmp) / "out"), backbone=backbone, weights="none",
                            depth_weights="none", cache_depth=False, device=device, cut_workers=cut_workers)
        records = list_images(listing)
        # Warm-up image: model construction and first-call overheads are not per-image cost.
        run_shard(ExtractConfig.from_dict({**cfg.to_dict(), "output": str(Path(tmp) / "warm")}), records[:1], 0, 1)
        t0 = time.perf_counter()
        timings, _ = run_shard(cfg, records, 0, 1)
        total = time.perf_counter() - t0
        log = shard_log_path(Path(cfg.output), 0, 1).read_text().splitlines()
        masks = sum(len(json.loads(line)["annotations"]) for line in log) / max(len(log), 1)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    return {"backbone": backbone, "images": len(records), "total": total / len(records),
            **{s: timings.get(s, 0.0) / len(records) for s in STAGES}, "masks": masks, "peak_rss_mb": peak_mb, "peak_gpu_mb": gpu_mb}


FEATURES_ENV = "CUTS3D_BENCH_FEATURES"


def install_feature_replay(path: str | None = None) -> None:
    """Make the model stage cost what it costs on a GPU (almost nothing here): the ViT's features of each image,
    saved by the warm-up run, are returned instead of running the ViT on the CPU. Everything else (loading,
    resizing, depth from the cache, the cut stage, logging, merging) is the real pipeline.

    Runs in this process for the local engine and, through :func:`ray_feature_replay_hook`, in the Ray workers
    that import the pipeline (``path`` then comes from the environment variable ``CUTS3D_BENCH_FEATURES``).
    """
    import os

    import numpy as np
    import torch

    import cuts3d.pipeline.extract as extract_module

    path = Path(path or os.environ[FEATURES_ENV])
    # one stacked .npy, memory-mapped: an image's features are a page-cache copy (an .npz member is read and
    # checksummed anew on every access, several milliseconds per image of CPU the measured run would lose)
    store = np.load(path, mmap_mode="r")
    keys = json.loads(path.with_suffix(".json").read_text())

    def replay(loaded, cfg, models, timings):
        t = time.perf_counter()
        out = [torch.from_numpy(np.array(store[keys[result["rel"]]])) for result, _, _ in loaded]
        extract_module._add(timings, "vit", t)
        return out

    extract_module._features = replay


def ray_feature_replay_hook() -> None:
    """Ray's ``worker_process_setup_hook``: :func:`install_feature_replay` once the worker imports
    ``cuts3d.pipeline.extract``, not before. The hook runs in every Ray worker, and installing the replay at once
    would make workers that never touch the pipeline (the driver's progress counter) import torch and cuts3d
    too: seconds of CPU a real run does not spend, taken from the cut actors while the first images are cut."""
    import importlib.abc
    import importlib.util

    name = "cuts3d.pipeline.extract"
    if name in sys.modules:
        install_feature_replay()
        return

    class PatchOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            run_module = spec.loader.exec_module

            def exec_module(module):
                run_module(module)
                install_feature_replay()

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, PatchOnImport())


def _record_times(run, log: Path) -> tuple[list[float], Path]:
    """Run ``run()``; returns the seconds (from the start) at which each record appeared in ``log``, and its result."""
    times: list[float] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def watch() -> None:
        # Reads only the bytes appended since the last look: re-reading the whole log every 5 ms would take a
        # good part of a core from the run it measures.
        offset = 0
        while True:
            final = stop.is_set()
            if log.exists():
                with log.open("rb") as f:
                    f.seek(offset)
                    new = f.read()
                offset += len(new)
                times.extend([time.perf_counter() - t0] * new.count(b"\n"))
            if final:
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    result = run()
    total = time.perf_counter() - t0
    stop.set()
    watcher.join()
    return [total, *times], result


def workers_mode(data: Path, n: int, workers: list[int], with_ray: bool) -> None:
    import numpy as np

    import cuts3d.pipeline.extract as extract_module
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

        # Warm-up: fills the depth cache and keeps each image's ViT features (cheap cut settings).
        real, saved = extract_module._features, {}

        def keep(loaded, config, models, timings):
            out = real(loaded, config, models, timings)
            for (result, _, _), f in zip(loaded, out):
                saved[result["rel"]] = f.detach().cpu().numpy()
            return out

        extract_module._features = keep
        t = time.perf_counter()
        extract(cfg("warm", 0, CutConfig(n_iters=1, crf=False)))
        vit_s = (time.perf_counter() - t) / n
        extract_module._features = real
        keys = {rel: i for i, rel in enumerate(sorted(saved))}
        features = Path(tmp) / "features.npy"
        np.save(features, np.stack([saved[r] for r in sorted(saved)]))
        features.with_suffix(".json").write_text(json.dumps(keys))
        notes.append(f"warm-up (ViT on the CPU, depth computed and cached, 1 NCut round, no CRF): {vit_s:.2f} s per image")
        install_feature_replay(str(features))
        reference = None

        def record(engine: str, k: int, times: list[float], result: Path) -> None:
            nonlocal reference
            data_bytes = Path(result).read_bytes()
            reference = reference or data_bytes
            total, stamps = times[0], times[1:]
            # The stream once every worker runs: from the k-th record (k = workers; each worker's start-up, seconds
            # of importing torch, ends at a different moment) to the last.
            s0 = max(k, 1) - 1
            steady = (len(stamps) - 1 - s0) / (stamps[-1] - stamps[s0]) if len(stamps) > s0 + 1 and stamps[-1] > stamps[s0] else float("nan")
            rows.append({"engine": engine, "workers": k, "total": total, "first": stamps[0] if stamps else None,
                         "steady": steady, "same": data_bytes == reference})
            print(rows[-1], [round(s, 2) for s in stamps], flush=True)

        for k in workers:
            c = cfg(f"local-{k}", k)
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            times, result = _record_times(lambda: extract(c), shard_log_path(Path(c.output), 0, 1))
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            record("local", k, times, result)
            if k >= 1:
                # CPU seconds per image of the extracting process (loading, replayed model stage, sending the jobs,
                # logging) and of its cut workers (start-up included)
                parent = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / n
                kids = (kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime) / n
                notes.append(f"local, {k} cut worker(s): CPU-s per image: extracting process {parent:.3f}, "
                             f"cut workers {kids:.3f} (their start-up included)")
        ray_workers = [k for k in workers if k >= 1]
        if with_ray and ray_workers:
            import ray

            from cuts3d.pipeline.ray_engine import extract_ray

            t = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     runtime_env={"worker_process_setup_hook": ray_feature_replay_hook,
                                  "env_vars": {FEATURES_ENV: str(features)}})
            notes.append(f"ray.init (local cluster, num_cpus=2; not in the Ray rows): {time.perf_counter() - t:.1f} s")

            @ray.remote(num_cpus=0)
            def model_stage() -> str:
                return extract_module._features.__name__

            if ray.get(model_stage.remote()) != "replay":
                raise SystemExit("extract_speed: the Ray workers did not install the feature replay")

            try:
                for k in ray_workers:
                    c = cfg(f"ray-{k}", k)
                    times, result = _record_times(lambda: extract_ray(c, num_shards=1), shard_log_path(Path(c.output), 0, 1))
                    record("ray", k, times, result)
            finally:
                ray.shutdown()

    one = {r["engine"]: r for r in rows if r["workers"] == 1}
    lines = [f"{n} COCO val2017 images (dev128), dino_vits16 random weights, 480 px, CPU. Model stage as on a GPU: "
             "the ViT features and depth maps of a warm-up run are replayed (no ViT or depth model runs), the rest is "
             "the real pipeline. 'images/s' is the stream's rate from the K-th record (K cut "
             "workers, 1 for 0) to the last; 's total' is the whole extract() call (models built, workers started, merge).", "",
             "| engine | cut workers | s total | s to first record | images/s | vs 1 worker | same annotations.json |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio = f"{r['steady'] / one[r['engine']]['steady']:.2f}x" if r["engine"] in one else "-"
        first = f"{r['first']:.1f}" if r["first"] is not None else "-"
        lines.append(f"| {r['engine']} | {r['workers']} | {r['total']:.1f} | {first} | {r['steady']:.2f} | {ratio} | "
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
    parser.add_argument("--cut-workers", type=int, default=0,
                        help="per-stage mode: cut_workers of the run (the cut stages then overlap the model stage; "
                             "their seconds are summed over the workers, 'total' is wall time)")
    args = parser.parse_args()
    if args.workers:
        workers_mode(args.data, args.images or 24, args.workers, args.ray)
        return
    args.images = args.images or 8
    if args.single:
        print(json.dumps(single(args.single, args.data, args.images, args.device, args.cut_workers)))
        return
    rows = []
    for b in args.backbones:
        out = subprocess.run([sys.executable, __file__, "--single", b, "--images", str(args.images), "--data", str(args.data),
                              "--device", args.device, "--cut-workers", str(args.cut_workers)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(r, flush=True)
    header = "| backbone | " + " | ".join(STAGES) + " | total s/image | peak RSS MB | peak GPU MB |"
    lines = [f"{rows[0]['images']} COCO val2017 images (dev128), 480 px, random weights, device {args.device}, "
             f"cut workers {args.cut_workers}", "", header,
             "|---|" + "---:|" * (len(STAGES) + 3)]
    for r in rows:
        lines.append(f"| {r['backbone']} | " + " | ".join(f"{r[s]:.3f}" for s in STAGES)
                     + f" | {r['total']:.3f} | {r['peak_rss_mb']:.0f} | {r['peak_gpu_mb']:.0f} |")
    table = "\n".join(lines)
    print(table)
    append("extract_speed: per-stage seconds per image", table)


if __name__ == "__main__":
    main()
