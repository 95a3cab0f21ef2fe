"""Scoring pseudo-masks on synthetic scenes: class-agnostic mask AP and background masks that outrank objects.

Usage::

    from cuts3d import CutConfig
    from cuts3d.synthetic.quality import score_config, scene_set
    scenes = scene_set("indoor", seeds=range(20), far_backdrop=True)
    row = score_config(CutConfig(crf=False), scenes)   # {"AP50": .., "AP": .., "bg_outranks": .., ...}

A *background mask* is a prediction whose mask-IoU with every ground-truth object is below 0.1 and whose pixels
are mostly (> 50 %) outside every object: a wall, floor, sky or the whole image. It *outranks the objects* in a
scene when it is the scene's highest-scoring prediction (ties go against it): the first mask a user sees, and
the first that "confident" copy-paste picks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from cuts3d.cuts.config import CutConfig
from cuts3d.cuts.segment import Instance, segment
from cuts3d.masks.coco import ground_truth_dataset, mask_annotation
from cuts3d.synthetic import Scene, make_family_scene

# IoU below which a prediction matches no object, and the share of its pixels that must lie off all objects.
BACKGROUND_MAX_IOU = 0.1
BACKGROUND_MIN_OFF = 0.5


@dataclass
class SceneSet:
    """Named scenes of one family (``far`` marks the far-backdrop variant)."""

    family: str
    far: bool
    seeds: list[int]
    scenes: list[Scene] = field(repr=False)

    @property
    def name(self) -> str:
        return f"{self.family}{' far' if self.far else ''}"


def scene_set(family: str, seeds: Iterable[int], far_backdrop: bool = False) -> SceneSet:
    """The scenes ``seeds`` of ``family`` (see :data:`cuts3d.synthetic.FAMILIES`)."""
    seeds = list(seeds)
    return SceneSet(family, far_backdrop, seeds, [make_family_scene(family, s, far_backdrop=far_backdrop) for s in seeds])


def _ious(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(P, K) mask IoU of (P, H, W) and (K, H, W) bool stacks."""
    if len(pred) == 0 or len(gt) == 0:
        return np.zeros((len(pred), len(gt)))
    p = pred.reshape(len(pred), -1).astype(np.float64)
    g = gt.reshape(len(gt), -1).astype(np.float64)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    return inter / np.maximum(union, 1.0)


def background_outranks(instances: list[Instance], gt_masks: np.ndarray) -> bool:
    """Whether the highest-scoring prediction (ties included) is a background mask (module docstring)."""
    if not instances:
        return False
    pred = np.stack([i.mask for i in instances])
    scores = np.array([i.score for i in instances])
    iou = _ious(pred, gt_masks)
    best = iou.max(axis=1) if iou.size else np.zeros(len(pred))
    on_objects = gt_masks.any(axis=0) if len(gt_masks) else np.zeros(pred.shape[1:], dtype=bool)
    off = np.array([(m & ~on_objects).sum() / max(int(m.sum()), 1) for m in pred])
    background = (best < BACKGROUND_MAX_IOU) & (off > BACKGROUND_MIN_OFF)
    return bool(background[scores == scores.max()].any())


def score_config(config: CutConfig, scenes: SceneSet | list[Scene], use_image: bool | None = None) -> dict[str, float]:
    """Segment every scene with ``config`` and score it.

    Args:
        config: the engine settings (``method`` included).
        scenes: a :class:`SceneSet` or a list of scenes.
        use_image: pass the RGB image (needed for the CRF); default: when ``config.crf``.

    Returns:
        dict with ``AP50``, ``AP75``, ``AP`` (percent, class-agnostic mask AP, pycocotools),
        ``bg_outranks`` (scenes where a background mask outranks every object), ``scenes``, ``masks``
        (predictions per scene) and ``instances`` (ground-truth objects).
    """
    from cuts3d.eval import evaluate

    scenes = scenes.scenes if isinstance(scenes, SceneSet) else scenes
    use_image = config.crf if use_image is None else use_image
    dets, outranks = [], 0
    for idx, s in enumerate(scenes, start=1):
        insts = segment(s.features, s.depth, s.image if use_image else None, config)
        dets += [mask_annotation(i.mask, idx, i.score) for i in insts]
        outranks += background_outranks(insts, s.masks)
    gt = ground_truth_dataset([s.masks for s in scenes])
    if dets:
        m = evaluate(gt, dets, iou_types=("segm",), verbose=False)["segm"]
    else:
        m = {"AP50": 0.0, "AP75": 0.0, "AP": 0.0}
    return {
        "AP50": float(m["AP50"]),
        "AP75": float(m["AP75"]),
        "AP": float(m["AP"]),
        "bg_outranks": int(outranks),
        "scenes": len(scenes),
        "masks": len(dets) / max(len(scenes), 1),
        "instances": len(gt["annotations"]),
    }
