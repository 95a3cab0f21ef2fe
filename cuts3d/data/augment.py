"""Copy-paste augmentation for CAD training: CutLER's rules (spec 4.3) with CutS3D's confident selection and
Spatial Confidence alpha-blending (paper Sec. 3.4, Eq. 5; spec 4.5).

One call pastes instances of a *source* image into a *target* image (CutLER pairs each image with the batch
reversed):

1. count: 1 if the source has n == 1 masks, else uniform in [1, n - 1] (CutLER's
   ``np.random.randint(1, max(1, n))``, exclusive upper bound);
2. which: random without replacement (CutLER) or, ``confident=True``, the top-k by per-mask score = mean SC
   over the mask (CutS3D "confident copy-paste"; keeping CutLER's random k is the spec's GUESS);
3. the *whole* source image, its masks and SC maps are resized to r * (target size), r ~ U[scale], and placed
   at a random offset inside the target (bilinear; masks are True wherever the resized value is > 0, as
   CutLER's ``.bool()`` of the bilinear result);
4. a pasted instance is dropped if intersection / (target mask area) >= ``overlap_thresh`` for any target mask;
5. Eq. 5: I_new = alpha * I_s + (1 - alpha) * I_t, with alpha = SC inside the pasted instances and 0 elsewhere
   (``alpha_blend=False``: alpha = binary union, CutLER). ``alpha_mode="scalar"`` (Table 5b's alternative)
   replaces the SC map by its mean over the mask's own pixels (at source resolution, before the resize), so
   alpha is constant over each pasted instance; the pasted masks keep their SC *maps* for the Eq. 6 loss either
   way (Table 5b trains without that loss). Existing target masks are occluded by the *binary*
   union (spec GUESS), empties removed; their SC maps are reset to 1 on the occluded pixels (those pixels are
   now certainly not theirs). Pasted masks keep their SC maps.

Images are (H, W, 3) numpy arrays (uint8 or float), masks (N, H, W) bool, SC maps (N, H, W) float at image
resolution (1 outside the confidence region), scores (N,).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


ALPHA_MODES: tuple[str, ...] = ("spatial", "scalar")
"""Eq. 5's alpha inside a pasted instance: its SC map ("spatial", the paper's choice) or the map's mean over
the mask ("scalar"); Table 5b compares the two."""


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight xyxy boxes of (N, H, W) bool masks, detectron2's ``BitMasks.get_bounding_boxes`` convention.

    Returns:
        (N, 4) float32 [x0, y0, x1 + 1, y1 + 1] in pixels; all zeros for an empty mask.
    """
    n = masks.shape[0]
    boxes = np.zeros((n, 4), dtype=np.float32)
    if n == 0:
        return boxes
    cols = masks.any(axis=1)  # (N, W)
    rows = masks.any(axis=2)  # (N, H)
    for i in range(n):
        xs = np.flatnonzero(cols[i])
        ys = np.flatnonzero(rows[i])
        if xs.size:
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def num_to_copy(n: int, rng: np.random.Generator) -> int:
    """CutLER's random count: 0 for n == 0, 1 for n == 1, else uniform in [1, n - 1]."""
    if n <= 0:
        return 0
    if n == 1:
        return 1
    return int(rng.integers(1, n))  # exclusive high, like np.random.randint(1, n)


def select_instances(scores: np.ndarray, k: int, rng: np.random.Generator, confident: bool) -> np.ndarray:
    """Indices of the k instances to copy: top-k by score (ties keep the earlier index) or random, no replacement."""
    n = len(scores)
    if confident:
        return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    return rng.choice(n, size=k, replace=False)


def _resize(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (align_corners=False) resize of a (C, h, w) float32 stack to (C, *size); identity if same size."""
    if stack.shape[0] == 0:
        return np.zeros((0, *size), np.float32)
    if stack.shape[1:] == tuple(size):
        return stack
    t = torch.from_numpy(np.ascontiguousarray(stack))[None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0].numpy()


def copy_paste(
    target_image: np.ndarray,
    target_masks: np.ndarray,
    source_image: np.ndarray,
    source_masks: np.ndarray,
    source_conf: np.ndarray,
    source_scores: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.3, 1.0),
    confident: bool = True,
    alpha_blend: bool = True,
    overlap_thresh: float = 0.5,
    target_conf: np.ndarray | None = None,
    alpha_mode: str = "spatial",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Paste source instances into the target image (see the module docstring for the rules).

    Args:
        target_image: (H, W, 3) uint8 or float.
        target_masks: (N, H, W) bool.
        source_image: (Hs, Ws, 3), same dtype family as the target.
        source_masks: (Ns, Hs, Ws) bool.
        source_conf: (Ns, Hs, Ws) float SC maps of the source masks (1 outside their confidence regions).
        source_scores: (Ns,) per-mask scores (CutS3D: mean SC over the mask) used by ``confident``.
        rng: the only randomness source (count, choice, ratio, offset), so a seeded generator reproduces a call.
        scale: range of the resize ratio r (CutLER: (0.3, 1.0); self-training (0.5, 1.0)).
        confident: take the top-k masks by score instead of k random ones.
        alpha_blend: Eq. 5 with alpha = SC; False gives CutLER's binary paste.
        overlap_thresh: drop a pasted instance whose intersection over a target mask's area reaches this.
        target_conf: (N, H, W) float SC maps of the target masks; None means all ones.
        alpha_mode: with ``alpha_blend``, ``"spatial"`` (Eq. 5: alpha = the SC map) or ``"scalar"`` (alpha = the
            mask's mean SC over its own pixels, one value per pasted instance; Table 5b). Ignored without
            ``alpha_blend``.

    Returns:
        image: (H, W, 3) in the target's dtype (uint8 results are rounded).
        masks: (K, H, W) bool, surviving target masks first, then the pasted ones.
        conf: (K, H, W) float32 SC maps aligned with ``masks``.
        info: ``target_keep`` (indices of surviving target masks), ``pasted`` (source indices pasted, in
            order), ``chosen`` (source indices selected before the overlap filter), ``ratio``, ``offset``
            (y, x), ``alpha`` ((H, W) float32 compositing weights, zeros when nothing was pasted).

    Raises:
        ValueError: ``alpha_mode`` is not one of :data:`ALPHA_MODES`.
    """
    if alpha_mode not in ALPHA_MODES:
        raise ValueError(f"alpha_mode={alpha_mode!r}; choose one of {ALPHA_MODES}")
    H, W = target_image.shape[:2]
    n_t = target_masks.shape[0]
    t_conf = np.ones((n_t, H, W), np.float32) if target_conf is None else np.asarray(target_conf, np.float32)
    info: dict[str, Any] = {
        "target_keep": np.arange(n_t),
        "pasted": np.zeros(0, dtype=np.int64),
        "chosen": np.zeros(0, dtype=np.int64),
        "ratio": None,
        "offset": None,
        "alpha": np.zeros((H, W), np.float32),
    }
    unchanged = (target_image.copy(), target_masks.astype(bool, copy=True), t_conf.copy(), info)

    n_s = source_masks.shape[0]
    k = num_to_copy(n_s, rng)
    if k == 0:
        return unchanged
    chosen = np.asarray(select_instances(source_scores, k, rng, confident), dtype=np.int64)
    info["chosen"] = chosen

    ratio = float(rng.uniform(scale[0], scale[1]))
    h_new, w_new = max(1, int(ratio * H)), max(1, int(ratio * W))
    y0 = int(rng.integers(0, H - h_new + 1))
    x0 = int(rng.integers(0, W - w_new + 1))
    info["ratio"], info["offset"] = ratio, (y0, x0)

    # Resize the whole source (image, chosen masks, their SC maps) and place it in a target-sized canvas.
    src_img = _resize(np.moveaxis(source_image.astype(np.float32), -1, 0), (h_new, w_new))
    src_masks = _resize(source_masks[chosen].astype(np.float32), (h_new, w_new)) > 0
    src_conf = _resize(np.asarray(source_conf, np.float32)[chosen], (h_new, w_new))
    canvas_img = np.zeros((H, W, 3), np.float32)
    canvas_img[y0 : y0 + h_new, x0 : x0 + w_new] = np.moveaxis(src_img, 0, -1)
    pasted_masks = np.zeros((k, H, W), bool)
    pasted_masks[:, y0 : y0 + h_new, x0 : x0 + w_new] = src_masks
    pasted_conf = np.ones((k, H, W), np.float32)  # SC = 1 outside the pasted window
    pasted_conf[:, y0 : y0 + h_new, x0 : x0 + w_new] = src_conf

    # A resize can erase a tiny mask; an empty instance carries no signal.
    keep = pasted_masks.reshape(k, H * W).any(axis=1)
    if n_t > 0:
        # Intersection over *target* mask area (CutLER's 'ioy'); empty target masks cannot be covered.
        inter = pasted_masks.reshape(k, H * W).astype(np.float32) @ target_masks.reshape(n_t, H * W).astype(np.float32).T
        area_t = target_masks.reshape(n_t, H * W).sum(axis=1).astype(np.float32)
        ioy = np.where(area_t[None] > 0, inter / np.maximum(area_t[None], 1.0), 0.0)
        keep &= ioy.max(axis=1) < overlap_thresh
    if not keep.any():
        return unchanged
    pasted_masks, pasted_conf = pasted_masks[keep], pasted_conf[keep]
    info["pasted"] = chosen[keep]

    union = pasted_masks.any(axis=0)
    if alpha_blend and alpha_mode == "scalar":
        # Table 5b: one alpha per instance, the mean SC over the mask as loaded (before the resize blurs both),
        # constant over its pasted pixels; max where pasted instances overlap, as for the spatial map.
        conf_src, masks_src = np.asarray(source_conf, np.float32), np.asarray(source_masks, bool)
        mean_sc = np.array([conf_src[i][masks_src[i]].mean() if masks_src[i].any() else 1.0
                            for i in info["pasted"]], np.float32)
        alpha = np.where(pasted_masks, mean_sc[:, None, None], 0.0).max(axis=0).astype(np.float32)
    elif alpha_blend:
        # Eq. 5: alpha = SC inside the pasted instances (max where pasted instances overlap), 0 elsewhere.
        alpha = np.where(pasted_masks, pasted_conf, 0.0).max(axis=0).astype(np.float32)
    else:
        alpha = union.astype(np.float32)
    info["alpha"] = alpha
    a = alpha[..., None]
    blended = a * canvas_img + (1.0 - a) * target_image.astype(np.float32)
    if np.issubdtype(target_image.dtype, np.integer):
        info_range = np.iinfo(target_image.dtype)
        image = np.clip(np.rint(blended), info_range.min, info_range.max).astype(target_image.dtype)
    else:
        image = blended.astype(target_image.dtype, copy=False)

    # Occlude target masks with the binary union even where alpha < 1 (spec 4.5 GUESS); drop emptied ones.
    occluded = target_masks.astype(bool) & ~union[None]
    t_keep = np.flatnonzero(occluded.reshape(n_t, H * W).any(axis=1))
    occluded_conf = np.where(union[None], np.float32(1.0), t_conf)  # covered pixels are no longer uncertain
    info["target_keep"] = t_keep
    masks = np.concatenate([occluded[t_keep], pasted_masks], axis=0)
    conf = np.concatenate([occluded_conf[t_keep], pasted_conf], axis=0).astype(np.float32, copy=False)
    return image, masks, conf, info
