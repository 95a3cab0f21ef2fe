"""How long extraction of a dataset takes on GPU nodes: measured per-image costs and the arithmetic (issue 12).

Usage::

    python benchmarks/dataset_time.py [--images 1281167] [--gpus-per-node 8] [--cores-per-node 64] [--nodes 1 2 4 8]
                                      [--photos 8] [--merge-records 10000] [--gpu-seconds S] [--cut-seconds S]

Three per-image costs are measured on this machine:

- one run of ``cuts3d.pipeline.extract.run_shard`` on ``--photos`` COCO photos (ViT-B/8 at 480 px, random
  weights) with one cut worker, as a node runs it: the model stage in the extracting process (on ``cuda`` when
  there is a GPU), the cut stage in a single-threaded worker process (``OMP_NUM_THREADS=1`` for both, so that
  on a CPU-only machine the two share no core). c, the cut stage on one core, is its ``cuts`` + ``crf`` seconds
  per image; g, the model stage on one GPU, its ``load`` + ``vit`` + ``depth`` seconds per image. Without a
  GPU, g is not measured: ``--gpu-seconds`` (default 0.05) is used and the table says so;
- m, the merge: seconds per record of ``cuts3d merge`` over ``--merge-records`` synthetic records
  (``benchmarks/merge_memory.py``'s generator).

``--cut-seconds`` / ``--gpu-seconds`` replace a measurement by a given value (for example c from
``benchmarks/cut_speed.py``). The arithmetic, per node of G GPUs and K cores: one shard per GPU, each with
``--cut-workers (K / G - 1)`` (one core stays with the shard's model process); the node extracts
min(G (K/G - 1) / c, G / g) images/s. Without cut workers a shard does g then c one image after another:
G / (g + c). N nodes divide the extraction time by N; the merge (one process) adds images x m.
Run it on your own node for your own estimate: c depends on the CPU and on the number of masks per image.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _results import append

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[0] / ".." / "shared" / "data" / "coco_val2017_dev128" / "images"


def per_stage(device: str, photos: int, data: Path) -> dict:
    """``extract_speed.py``'s per-stage row for ViT-B/8 on ``device`` with one cut worker, one thread each."""
    env = {**os.environ, **{k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    done = subprocess.run([sys.executable, str(HERE / "extract_speed.py"), "--single", "dino_vitb8",
                           "--images", str(photos), "--data", str(data), "--device", device, "--cut-workers", "1"],
                          capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def merge_seconds_per_record(records: int) -> float:
    from merge_memory import run_child, write_logs

    with tempfile.TemporaryDirectory(prefix="cuts3d-dataset-time-") as tmp:
        write_logs(Path(tmp), records, shards=8)
        return run_child(Path(tmp), "merge")["seconds"] / records


def node_rate(gpus: int, cores: int, c: float, g: float) -> tuple[float, float, float]:
    """(images/s the cut cores give, images/s the GPUs give, images/s without cut workers) for one node."""
    workers = max(cores // gpus - 1, 1)
    return gpus * workers / c, gpus / g, gpus / (g + c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1281167, help="dataset size (default: ImageNet-1k train)")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--cores-per-node", type=int, default=64)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--photos", type=int, default=8, help="COCO photos for the per-stage measurement")
    parser.add_argument("--merge-records", type=int, default=10000)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--gpu-seconds", type=float, default=None,
                        help="g, model stage s/image on one GPU (default: measured on cuda, else 0.05, assumed)")
    parser.add_argument("--cut-seconds", type=float, default=None, help="c, cut stage s/image on one core (default: measured)")
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    row = per_stage("cuda" if cuda else "cpu", args.photos, args.data)
    c = args.cut_seconds if args.cut_seconds is not None else row["cuts"] + row["crf"]
    c_from = "given (--cut-seconds)" if args.cut_seconds is not None else (
        f"measured: cuts {row['cuts']:.3f} + CRF {row['crf']:.3f} s/image in one single-threaded cut worker, "
        f"{row['images']} COCO photos, {row['masks']:.1f} masks/image")
    if args.gpu_seconds is not None:
        g, g_from = args.gpu_seconds, "given (--gpu-seconds)"
    elif cuda:
        g = row["load"] + row["vit"] + row["depth"]
        g_from = (f"measured on {torch.cuda.get_device_name(0)}: load {row['load']:.3f} + ViT {row['vit']:.3f} + "
                  f"depth {row['depth']:.3f} s/image")
    else:
        g, g_from = 0.05, "ASSUMED, not measured (no GPU on this machine): 0.05 s/image"
    print(f"c = {c:.3f} s ({c_from}); g = {g:.3f} s ({g_from})", flush=True)
    m = merge_seconds_per_record(args.merge_records)
    print(f"m = {m * 1e3:.2f} ms per record", flush=True)

    G, K = args.gpus_per_node, args.cores_per_node
    cut_rate, gpu_rate, inline_rate = node_rate(G, K, c, g)
    rate = min(cut_rate, gpu_rate)
    limit = "cut cores" if cut_rate < gpu_rate else "GPUs"
    merge_h = args.images * m / 3600
    lines = [f"{args.images} images; nodes of {G} GPUs and {K} cores: {G} shards per node, "
             f"`--cut-workers {max(K // G - 1, 1)}` each.", "",
             f"- c (cut stage, one core): {c:.3f} s/image; {c_from}",
             f"- g (model stage, one GPU): {g:.3f} s/image; {g_from}",
             f"- m (merge): {m * 1e3:.2f} ms per record, {args.merge_records} synthetic records",
             f"- per node: cut cores {cut_rate:.0f} images/s, GPUs {gpu_rate:.0f} images/s (limit: {limit}); "
             f"no cut workers (g + c in turn) {inline_rate:.1f} images/s", "",
             "| nodes | extraction h | merge h | total h | no cut workers (g + c per image in turn): total h |",
             "|---:|---:|---:|---:|---:|"]
    for n in args.nodes:
        hours = args.images / (rate * n) / 3600
        inline = args.images / (inline_rate * n) / 3600
        lines.append(f"| {n} | {hours:.2f} | {merge_h:.2f} | {hours + merge_h:.2f} | {inline + merge_h:.2f} |")
    table = "\n".join(lines)
    print(table)
    append("dataset_time: extraction hours for a dataset on GPU nodes", table,
           "Per-image costs measured as the script's docstring says; cut-stage masks per image on the photos "
           "depend on the random-weight ViT's features (real DINO features give other counts). m is measured on "
           f"{args.merge_records} records; per record it grows with the logs' size, "
           "e.g. 2.6 ms at 200k records in `benchmarks/merge_memory.py`: `--merge-records` sets it.")


if __name__ == "__main__":
    main()
