"""Detector losses for CAD training: CutLER's DropLoss (spec 4.2) and CutS3D's Spatial Confidence
Soft Target mask loss (paper Sec. 3.4, Eq. 6; spec 4.5).

* DropLoss: a proposal whose maximum IoU with every pseudo ground-truth box is <= 0.01 gets weight 0 in the
  classification cross entropy, so regions the pseudo-masks missed are not pushed to "background". The
  weighted per-proposal losses are averaged over *all* proposals (dropped ones count in the denominator).
* Eq. 6: L_mask = mean_p SC(p) * BCE(m_hat(p), m(p)), with SC cropped into each RoI like the mask target and
  SC = 1 outside the confidence map ("loss values outside the confidence map are left unchanged").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou, roi_align


def droploss_weights(proposal_boxes: Tensor, gt_boxes: Tensor, threshold: float = 0.01) -> Tensor:
    """DropLoss weights: 0 for proposals with max IoU <= ``threshold`` over all GT boxes, else 1.

    Args:
        proposal_boxes: (N, 4) float, xyxy (CutLER uses the boxes decoded from proposal + deltas per stage).
        gt_boxes: (M, 4) float, xyxy. With M == 0 every proposal is dropped (max IoU taken as 0).
        threshold: IoU at or below which a proposal is dropped (CutLER: 0.01).

    Returns:
        (N,) float tensor of 0/1 in ``proposal_boxes``' dtype, without gradient.
    """
    n = proposal_boxes.shape[0]
    dtype = proposal_boxes.dtype if proposal_boxes.is_floating_point() else torch.float32
    if gt_boxes.shape[0] == 0 or n == 0:
        return torch.zeros(n, dtype=dtype, device=proposal_boxes.device)
    with torch.no_grad():  # the weight is a mask on the loss, not something to differentiate through
        iou = box_iou(proposal_boxes.detach().to(dtype), gt_boxes.detach().to(dtype))
        return (iou.max(dim=1).values > threshold).to(dtype)


def droploss_cross_entropy(
    logits: Tensor, labels: Tensor, proposal_boxes: Tensor, gt_boxes: Tensor, threshold: float = 0.01
) -> Tensor:
    """Classification loss with DropLoss: sum_i w_i * CE_i / N over all N proposals.

    Args:
        logits: (N, K) float class scores (K includes the background class).
        labels: (N,) int64 target classes.
        proposal_boxes: (N, 4) xyxy boxes the weights are computed for.
        gt_boxes: (M, 4) xyxy pseudo ground-truth boxes.
        threshold: DropLoss IoU threshold.

    Returns:
        Scalar tensor. With N == 0 a zero that still depends on ``logits`` (keeps the graph connected).
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits, labels, reduction="none")
    weights = droploss_weights(proposal_boxes, gt_boxes, threshold).to(ce.dtype)
    # Mean over all proposals, not over the kept ones (spec 4.2).
    return (ce * weights).mean()


def sc_mask_loss(mask_logits: Tensor, mask_targets: Tensor, confidence: Tensor | None = None) -> Tensor:
    """Spatial Confidence Soft Target mask loss (Eq. 6), averaged over pixels and RoIs.

    Args:
        mask_logits: (R, S, S) float predicted mask logits (sigmoid gives m_hat).
        mask_targets: (R, S, S) float in {0, 1}, the pseudo-mask target cropped into each RoI.
        confidence: (R, S, S) float in [0, 1], SC cropped like the target (see :func:`crop_confidence_to_rois`),
            or None for the plain Mask R-CNN BCE.

    Returns:
        Scalar tensor; equals ``F.binary_cross_entropy_with_logits(mask_logits, mask_targets)`` when
        ``confidence`` is None or all ones. With R == 0, a zero connected to ``mask_logits``.
    """
    if mask_logits.numel() == 0:
        return mask_logits.sum() * 0.0
    targets = mask_targets.to(mask_logits.dtype)
    if confidence is None:
        return F.binary_cross_entropy_with_logits(mask_logits, targets, reduction="mean")
    if confidence.shape != mask_logits.shape:
        raise ValueError(f"confidence shape {tuple(confidence.shape)} != mask logits shape {tuple(mask_logits.shape)}")
    bce = F.binary_cross_entropy_with_logits(mask_logits, targets, reduction="none")
    # SC is a fixed per-pixel weight from extraction; no gradient flows into it.
    return (confidence.detach().to(bce.dtype) * bce).mean()


def crop_confidence_to_rois(
    confidence: Tensor | Sequence[Tensor],
    boxes: Tensor,
    matched_idx: Tensor,
    size: int = 28,
    aligned: bool = True,
) -> Tensor:
    """Crop and resize Spatial Confidence maps into RoIs exactly as the GT mask target is (RoIAlign).

    RoIAlign is linear in its input, so cropping the *deficit* 1 - SC and subtracting it from 1 gives the same
    values as cropping SC wherever the RoI lies inside the image, while samples falling outside the image
    (which RoIAlign reads as 0) count as SC = 1 instead of pulling the weight towards 0: the loss outside the
    confidence map stays unchanged (Eq. 6, SC = 1 there).

    Args:
        confidence: one (H, W) map shared by all RoIs, an (M, H, W) stack, or a list of M (H, W) maps, one per
            GT instance, at image resolution, values in [0, 1] (1 outside the confidence region).
        boxes: (R, 4) float xyxy RoIs in image pixels (the proposals matched to GT instances).
        matched_idx: (R,) int64 index of each RoI's GT instance (ignored for a single shared (H, W) map).
        size: output side S (Mask R-CNN: 28).
        aligned: RoIAlign's half-pixel alignment (detectron2's mask target crop uses True).

    Returns:
        (R, size, size) float32 tensor in [0, 1].
    """
    if isinstance(confidence, Tensor):
        maps = confidence[None] if confidence.dim() == 2 else confidence
    else:
        maps = torch.stack(list(confidence)) if len(confidence) else boxes.new_zeros((0, 1, 1))
    if maps.dim() != 3:
        raise ValueError(f"confidence must be (H, W), (M, H, W) or a list of (H, W); got {tuple(maps.shape)}")
    r = boxes.shape[0]
    if r == 0:
        return torch.zeros((0, size, size), dtype=torch.float32, device=boxes.device)
    if isinstance(confidence, Tensor) and confidence.dim() == 2:
        idx = torch.zeros(r, dtype=torch.float32, device=boxes.device)
    else:
        idx = matched_idx.to(device=boxes.device, dtype=torch.float32)
    deficit = (1.0 - maps.to(device=boxes.device, dtype=torch.float32))[:, None]  # (M, 1, H, W)
    rois = torch.cat([idx[:, None], boxes.to(torch.float32)], dim=1)
    cropped = roi_align(deficit, rois, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=aligned)[:, 0]
    return (1.0 - cropped).clamp_(0.0, 1.0)
