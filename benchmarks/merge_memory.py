"""Peak memory and seconds of ``cuts3d merge`` over N synthetic shard-log records (issue 12, section 3).

Usage::

    python benchmarks/merge_memory.py [--sizes 20000 200000] [--shards 16] [--no-record]

For each N, writes N records shaped like ``cuts3d extract``'s into K shard logs in a temporary folder (with the
shards' recorded inputs, so the merge checks completeness as a real one does): 0-3 masks per image (10 / 30 /
35 / 25 %), each a real COCO RLE of a 480x640 blob plus a real confidence code of a 60x60 Spatial Confidence
map (``cuts3d.masks.coco``; a pool of 64 encoded masks is reused to keep the writing fast), and 1 % failed
images. Then merges them in a fresh Python process and reports its wall seconds and peak RSS
(``ru_maxrss``, measured in that process, so one size's peak does not hide the next), next to the
baseline RSS of a process that only imports the merge. The target: peak RSS minus baseline grows with N only
by the per-image index (names, offsets, sizes), not by the records' masks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from cuts3d.pipeline.shards import merge
out = Path(sys.argv[1])
t = time.perf_counter()
result = None if sys.argv[2] == "baseline" else merge([out], out / "merged")
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "images": result.num_images if result else 0,
                  "annotations": result.num_annotations if result else 0}))
"""


def _annotation_pool(size: int = 64, seed: int = 0) -> list[dict]:
    """Encoded masks (480x640 ellipses) with confidence codes (60x60 smooth maps at 4 decimals), as extract writes."""
    from cuts3d.masks.coco import encode_confidence, mask_annotation

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:480, :640]
    gy, gx = np.mgrid[:60, :60] / 60.0
    pool = []
    for _ in range(size):
        cy, cx = rng.uniform(60, 420), rng.uniform(80, 560)
        ry, rx = rng.uniform(20, 150), rng.uniform(20, 200)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + 0.3 * np.sin(xx / rng.uniform(5, 30)) < 1
        conf = np.clip(0.5 + 0.5 * np.sin(gx * rng.uniform(2, 9)) * np.cos(gy * rng.uniform(2, 9)), 0.5, 1.0)
        pool.append(mask_annotation(mask, None, float(rng.uniform(0.1, 1.0)), iscrowd=0,
                                    confidence=encode_confidence(conf), confidence_score=float(conf.mean()),
                                    front=float(rng.uniform(0, 1))))
    return pool


def write_logs(out: Path, n: int, shards: int, seed: int = 0) -> int:
    """N records in ``shards`` logs under ``out/shards`` (+ their inputs); returns the logs' total bytes."""
    from cuts3d.pipeline.shards import json_line, shard_log_path, write_inputs

    rng = np.random.default_rng(seed)
    pool = _annotation_pool(seed=seed)
    rels = [f"n{k // 1300:08d}/img_{k:08d}.JPEG" for k in range(n)]  # ImageNet-like names
    total = 0
    for i in range(shards):
        path = shard_log_path(out, i, shards)
        path.parent.mkdir(parents=True, exist_ok=True)
        mine = rels[i::shards]
        with path.open("w", encoding="utf-8") as f:
            for rel in mine:
                if rng.random() < 0.01:
                    record = {"rel": rel, "image": None, "annotations": [],
                              "issues": [{"stage": "load", "reason": "truncated file", "level": "error"}]}
                else:
                    masks = int(rng.choice(4, p=[0.10, 0.30, 0.35, 0.25]))
                    record = {"rel": rel, "image": {"width": 640, "height": 480},
                              "annotations": [pool[j] for j in rng.integers(0, len(pool), masks)], "issues": []}
                f.write(json_line(record) + "\n")
        write_inputs(path, f"{i}/{shards}", mine)
        total += path.stat().st_size
    return total


def run_child(out: Path, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(out), mode], check=True, capture_output=True,
                          text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 200000])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--no-record", action="store_true", help="print the table without appending to RESULTS.md")
    args = parser.parse_args()
    rows = ["| images (records) | shard logs | logs MB | merged images / masks | merge s | peak RSS MB | "
            "RSS over baseline MB |", "|---|---|---|---|---|---|---|"]
    baseline = None
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="cuts3d-merge-bench-") as tmp:
            out = Path(tmp)
            t = time.perf_counter()
            size = write_logs(out, n, args.shards)
            print(f"N={n}: wrote {size / 1e6:.0f} MB of logs in {time.perf_counter() - t:.0f} s", flush=True)
            if baseline is None:
                baseline = run_child(out, "baseline")["rss_mb"]
            r = run_child(out, "merge")
        rows.append(f"| {n} | {args.shards} | {size / 1e6:.0f} | {r['images']} / {r['annotations']} | "
                    f"{r['seconds']:.1f} | {r['rss_mb']:.0f} | {r['rss_mb'] - baseline:.0f} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(table)
    notes = (f"Baseline: {baseline:.0f} MB peak RSS of a process that only imports cuts3d.pipeline.shards. The merge "
             "streams annotations.json (pass 1: per-image index of names, log offsets, sizes; pass 2: records read "
             "back one at a time), so the RSS over the baseline is the index and the sorted names.")
    if not args.no_record:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _results import append

        append("Merge memory: streaming merge of synthetic shard logs", table, notes)


if __name__ == "__main__":
    main()
