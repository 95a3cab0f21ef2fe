"""Synthetic detection sets: shape scenes written as an image folder + a pseudo-mask COCO JSON.

Used to check that the detector recipe learns (issue 10, item 15: the tiny CPU preset trained on 24 scenes must
reach mask AP50 >= 50 on them and >= 25 on 16 unseen ones) and by the training tests. The pseudo-masks are the
scenes' true instance masks, so the number measures the detector and its recipe, not the pseudo-mask quality.

Usage::

    from cuts3d.synthetic.detection import write_detection_set
    data, images = write_detection_set("tmp/train", seeds=range(24))
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from cuts3d.masks.coco import encode_confidence, ground_truth_dataset
from cuts3d.synthetic.blobs import make_scene


def write_detection_set(
    folder: str | Path, seeds: Iterable[int], grid: int = 16, patch_size: int = 8, uncertain_patches: int = 4
) -> tuple[Path, Path]:
    """Write scenes ``seeds`` of the blob generator as PNGs and a CutS3D-style pseudo-mask JSON.

    Args:
        folder: output folder; gets ``images/`` and ``pseudo.json``.
        seeds: scene seeds (one image each, ids 1..N in this order).
        grid, patch_size: the image is ``grid * patch_size`` pixels a side (default 128 px).
        uncertain_patches: patches of the first row given Spatial Confidence 0.5 in every mask's map, so that
            the confidence-aware training paths (alpha blending, Eq. 6) are exercised; 0 gives all-ones maps.

    Returns:
        (pseudo-mask JSON path, image folder path).
    """
    folder = Path(folder)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    scenes = [make_scene(int(s), grid=grid, patch_size=patch_size) for s in seeds]
    coco = ground_truth_dataset([s.masks for s in scenes])
    for info, scene in zip(coco["images"], scenes):
        Image.fromarray(scene.image).save(images / info["file_name"])
    conf = np.ones((grid, grid), np.float32)
    conf[0, :uncertain_patches] = 0.5
    for ann in coco["annotations"]:
        ann["confidence"] = encode_confidence(conf)
        ann["confidence_score"] = ann["score"] = 0.9
    data = folder / "pseudo.json"
    data.write_text(json.dumps(coco))
    return data, images
