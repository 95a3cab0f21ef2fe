"""Known-answer predictions for checking the class-agnostic evaluation (CutLER / CutS3D protocol).

Not part of the paper's method: this builds predictions from the ground truth itself, exactly
(AP must be 100) or with every mask shifted or eroded by a known number of pixels (AP must drop,
and must equal a direct pycocotools computation). The tests and the README example use it, so a
user can reproduce the numbers on their own ground truth::

    from cuts3d.eval.perturb import perturbed_predictions
    preds = perturbed_predictions("annotations.json", shift=(8, 0), seed=0)

or ``python -m cuts3d.eval.perturb annotations.json shift8.json --shift 8 0``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from scipy import ndimage


def _mask(seg: Any, h: int, w: int) -> np.ndarray:
    """(h, w) uint8 mask of a COCO segmentation (polygons, uncompressed or compressed RLE)."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_utils.decode(rle)


def shift_mask(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate an (H, W) mask by ``dx`` pixels right and ``dy`` pixels down; pixels moved past
    the border are lost, uncovered pixels are 0."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def erode_mask(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary erosion of an (H, W) mask with a 3x3 square, ``iterations`` times (pixels outside
    the image count as background). Equal to one erosion with a (2k+1)-square, computed as a
    separable minimum filter on the mask's bounding box."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    out = np.zeros_like(mask)
    if ys.size == 0 or iterations <= 0:
        return mask.copy() if iterations <= 0 else out
    y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
    crop = mask[y0:y1, x0:x1].astype(np.uint8)
    out[y0:y1, x0:x1] = ndimage.minimum_filter(crop, size=2 * iterations + 1, mode="constant", cval=0)
    return out


def perturbed_predictions(
    gt: str | os.PathLike[str] | Mapping[str, Any],
    shift: tuple[int, int] = (0, 0),
    erode: int = 0,
    seed: int | None = 0,
    category_id: int = 1,
    with_bbox: bool = False,
) -> list[dict[str, Any]]:
    """COCO results (compressed-RLE masks) made from the non-crowd ground-truth instances.

    Args:
        gt: COCO instances JSON path or dict.
        shift: (dx, dy) pixels every mask is moved (right, down).
        erode: iterations of 3x3 binary erosion applied to every mask (after the shift).
        seed: scores are uniform random in [0, 1) from this seed; ``None`` gives every score 1.0.
        category_id: category written into every prediction (the evaluation ignores it).
        with_bbox: also write ``bbox`` = the tight [x, y, w, h] box of the perturbed mask.

    Returns:
        one dict per non-crowd annotation: ``image_id``, ``category_id``, ``segmentation``
        (RLE, ``str`` counts, size [height, width]), ``score`` and optionally ``bbox``.
    """
    data = json.loads(Path(gt).read_text(encoding="utf-8")) if isinstance(gt, (str, os.PathLike)) else gt
    images = {img["id"]: img for img in data["images"]}
    rng = np.random.default_rng(seed) if seed is not None else None
    out: list[dict[str, Any]] = []
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        img = images[ann["image_id"]]
        m = _mask(ann["segmentation"], int(img["height"]), int(img["width"]))
        if shift != (0, 0):
            m = shift_mask(m, int(shift[0]), int(shift[1]))
        if erode > 0:
            m = erode_mask(m, erode)
        rle = mask_utils.encode(np.asfortranarray(m))
        res: dict[str, Any] = {
            "image_id": ann["image_id"],
            "category_id": category_id,
            "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "score": round(float(rng.random()), 6) if rng is not None else 1.0,
        }
        if with_bbox:
            res["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
        out.append(res)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m cuts3d.eval.perturb GT.json OUT.json --shift 8 0``: write known-answer predictions."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m cuts3d.eval.perturb", description="Write predictions made from the ground truth."
    )
    parser.add_argument("gt", help="COCO instances JSON")
    parser.add_argument("output", help="results JSON to write")
    parser.add_argument("--shift", nargs=2, type=int, default=(0, 0), metavar=("DX", "DY"), help="pixels right, down")
    parser.add_argument("--erode", type=int, default=0, help="3x3 erosion iterations")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random scores (-1: every score 1.0)")
    parser.add_argument("--category-id", type=int, default=1)
    parser.add_argument("--with-bbox", action="store_true", help="also write the masks' boxes")
    args = parser.parse_args(argv)
    preds = perturbed_predictions(
        args.gt,
        shift=(args.shift[0], args.shift[1]),
        erode=args.erode,
        seed=None if args.seed < 0 else args.seed,
        category_id=args.category_id,
        with_bbox=args.with_bbox,
    )
    Path(args.output).write_text(json.dumps(preds), encoding="utf-8")
    print(f"wrote {len(preds)} predictions to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
