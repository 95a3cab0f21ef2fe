"""Does the tiny CPU recipe learn? Mask AP of the ``tiny_cpu`` preset on its training scenes and on unseen ones.

Usage::

    python benchmarks/tiny_detector.py [--train 24] [--unseen 16] [--variant NAME:key=value,key=value ...]

Data: blob scenes (``cuts3d.synthetic.detection``, ``--grid`` x 8 px a side, default 128) with their true masks as pseudo-masks; training
scenes are seeds 0..train-1, unseen ones 1000..1000+unseen-1. Each variant trains the ``tiny_cpu`` preset with
its overrides (the default variant ``preset`` has none), then predicts both sets and reports class-agnostic mask
AP50 / AP (``cuts3d.eval``) and the training wall time. Variants run one after the other in this process, so
their times compare directly.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _results import append
from cuts3d.engine.cli_train import preset_or_file
from cuts3d.engine.predict import run_predict
from cuts3d.engine.train import resolve_train_config, train
from cuts3d.eval import evaluate
from cuts3d.synthetic.detection import write_detection_set


def _variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition(":")
    return name, [o for o in overrides.split(",") if o]


def _ap(run: Path, data: Path, images: Path, out: Path) -> tuple[float, float]:
    pred = run_predict(run, images, out, gt=data)
    m = evaluate(str(data), str(pred), iou_types=("segm",), verbose=False)["segm"]
    return float(m["AP50"]), float(m["AP"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=24, help="number of training scenes")
    parser.add_argument("--unseen", type=int, default=16, help="number of held-out scenes")
    parser.add_argument("--variant", action="append", default=[], help="NAME:key=value,... (repeatable)")
    parser.add_argument("--grid", type=int, default=16, help="patches per side (8 px each): 16 -> 128 px images")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    variants = [_variant(v) for v in args.variant] or [("preset", [])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_data, train_images = write_detection_set(tmp / "train", range(args.train), grid=args.grid)
        test_data, test_images = write_detection_set(tmp / "unseen", range(1000, 1000 + args.unseen), grid=args.grid)
        for name, overrides in variants:
            run = tmp / f"run_{name}"
            base = {"data": str(train_data), "images": str(train_images), "output": str(run)}
            cfg = resolve_train_config(base, [preset_or_file("tiny_cpu")], overrides)
            t0 = time.perf_counter()
            train(cfg)
            seconds = time.perf_counter() - t0
            tr = _ap(run, train_data, train_images, tmp / f"{name}_train.json")
            te = _ap(run, test_data, test_images, tmp / f"{name}_unseen.json")
            rows.append((name, " ".join(overrides) or "-", cfg.max_iter, seconds, *tr, *te))
            print(rows[-1], flush=True)
    lines = ["| variant | overrides | iterations | train s | AP50 train | AP train | AP50 unseen | AP unseen |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {o} | {i} | {s:.0f} | {a:.1f} | {b:.1f} | {c:.1f} | {d:.1f} |" for n, o, i, s, a, b, c, d in rows]
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        append(f"Tiny detector recipe: {args.train} training scenes, {args.unseen} unseen, {args.grid * 8} px", table)


if __name__ == "__main__":
    main()
