"""Detector training speed: iterations/s and data-loader images/s, tiny CPU recipe and R50-FPN at 800 px.

Usage::

    python benchmarks/train_speed.py [--iters 3] [--loader-samples 16]

Data: COCO val2017 dev128 (../shared/data) with its instance masks as pseudo-masks (category 1, confidence 1).
- tiny: the ``tiny_cpu`` preset (tiny backbone, 128/160 px, batch 2);
- r50_fpn: ResNet-50 FPN, random init, min size 800, batch 2, the paper's detector settings;
on a CUDA machine also R50-FPN batch 8 with AMP. Iteration time is (time of 2 + N iterations - time of 2) / N, so
model construction and warm-up are excluded (precise BN is off: it is a one-off cost at the end of a run); the loader rate is augmented samples (copy-paste, flip) per second
with 2 workers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from _results import append
from cuts3d.engine.cli_train import preset_or_file
from cuts3d.engine.train import TrainSamples, resolve_train_config, train
from cuts3d.data.dataset import PseudoMaskDataset

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "coco_val2017_dev128"


def _pseudo_json(tmp: Path) -> Path:
    d = json.loads((DATA / "annotations.json").read_text())
    d["annotations"] = [dict(a, category_id=1) for a in d["annotations"] if not a.get("iscrowd")]
    d["categories"] = [{"id": 1, "name": "object"}]
    out = tmp / "pseudo.json"
    out.write_text(json.dumps(d))
    return out


def _loader_rate(cfg_args: dict, files: list, overrides: list[str], samples: int) -> float:
    cfg = resolve_train_config({**cfg_args, "output": "unused"}, files, overrides + ["num_workers=2"])
    ds = TrainSamples(PseudoMaskDataset(cfg.data, cfg.images), cfg)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, sampler=range(samples), num_workers=2, collate_fn=lambda b: b)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t = time.perf_counter()
    n = sum(1 for _ in it)
    return n / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--loader-samples", type=int, default=16)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = {"data": str(_pseudo_json(Path(tmp))), "images": str(DATA / "images")}
        setups = {
            "tiny_cpu (tiny backbone, 128/160 px, batch 2)": ([preset_or_file("tiny_cpu")], ["num_workers=0"]),
            "r50_fpn, 800 px, batch 2, CPU": ([], ["backbone=r50_fpn", "backbone_weights=none", "min_sizes=[800]", "batch_size=2", "num_workers=0", "device=cpu", "amp=false"]),
        }
        if torch.cuda.is_available():
            setups["r50_fpn, 800 px, batch 8, AMP, GPU"] = ([], ["backbone=r50_fpn", "backbone_weights=none", "min_sizes=[800]", "batch_size=8", "num_workers=8", "device=cuda", "amp=true"])
        for name, (files, overrides) in setups.items():
            its = []
            for n in (2, 2 + args.iters):
                with tempfile.TemporaryDirectory() as run:
                    cfg = resolve_train_config({**base, "output": run}, files, overrides + [f"max_iter={n}", f"checkpoint_period={10**9}", "precise_bn_iters=0"])
                    t = time.perf_counter()
                    train(cfg)
                    its.append(time.perf_counter() - t)
            it_s = args.iters / (its[1] - its[0])
            loader = _loader_rate(base, files, overrides, args.loader_samples)
            rows.append(f"| {name} | {it_s:.3f} | {1 / it_s:.2f} | {loader:.1f} |")
            print(rows[-1], flush=True)
    table = "\n".join([
        f"COCO val2017 dev128 masks as pseudo-masks; {args.iters} timed iterations after 2 warm-up; loader: 2 workers, copy-paste + flip",
        "",
        "| setup | iterations/s | s/iteration | loader images/s |",
        "|---|---:|---:|---:|",
        *rows,
    ])
    print(table)
    append("train_speed: detector training", table)


if __name__ == "__main__":
    main()
