"""Class-agnostic Cascade R-CNN RoI heads with DropLoss and the Spatial Confidence mask loss (spec 4.1, 4.2, 4.5).

Follows CutLER's ``CustomCascadeROIHeads`` (detectron2's ``CascadeROIHeads`` + DropLoss), on torchvision's
building blocks:

* Stage 0 matches the RPN proposals (+ the GT boxes) at IoU 0.5 and samples 512 RoIs per image with positive
  fraction 0.25. Stages 1 and 2 take the previous stage's refined boxes (detached, clipped, empty ones dropped)
  and *re-label* them at IoU 0.6 / 0.7 without re-sampling (as detectron2 does).
* Each stage has its own two-FC box head and a 2-way classifier (background 0, object 1) with class-agnostic
  box deltas; box-coder weights (10,10,5,5), (20,20,10,10), (30,30,15,15). The RoI features' gradient is scaled
  by 1/num_stages (detectron2's ``_ScaleGradient``: summing the stage losses then equals averaging them).
* Classification loss per stage: DropLoss (spec 4.2) computed on the boxes decoded from that stage's deltas, or
  plain CE. Box loss: smooth-L1 (beta 0 = L1, detectron2's default) on positives, summed and divided by the
  number of sampled RoIs.
* Inference: mean of the stages' softmax scores on the last stage's boxes, score threshold, NMS, top-k.
* Mask head: trained on the foreground RoIs of ``mask_train_stage`` (0 = detectron2/CutLER: the stage-0
  sampled proposals); loss = Eq. 6 with the SC map cropped into the RoI like the mask target (torchvision's
  ``roi_align`` with ``aligned=False``), plain BCE when SC is absent or ``sc_loss=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import project_masks_on_boxes
from torchvision.ops import boxes as box_ops

from cuts3d.model.losses import (
    crop_confidence_to_rois,
    droploss_cross_entropy,
    sc_mask_loss,
)

DEFAULT_STAGE_IOUS: tuple[float, ...] = (0.5, 0.6, 0.7)
DEFAULT_STAGE_BBOX_REG_WEIGHTS: tuple[tuple[float, float, float, float], ...] = (
    (10.0, 10.0, 5.0, 5.0),
    (20.0, 20.0, 10.0, 10.0),
    (30.0, 30.0, 15.0, 15.0),
)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` backward (detectron2's cascade trick)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output * ctx.scale, None


class CascadeBoxPredictor(nn.Module):
    """Two-class classifier + class-agnostic box regressor of one cascade stage.

    Args:
        in_channels: size of the box head's representation.
        num_classes: including background (CAD: 2).
    """

    def __init__(self, in_channels: int, num_classes: int = 2) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)  # class-agnostic: one set of deltas per RoI
        # detectron2's FastRCNNOutputLayers init: small std for the regressor keeps early refinements tiny.
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.constant_(self.cls_score.bias, 0.0)
        nn.init.constant_(self.bbox_pred.bias, 0.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (R, C) or (R, C, ...) -> (class logits (R, num_classes), deltas (R, 4))."""
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


def match_proposals(
    proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, matcher: det_utils.Matcher
) -> tuple[Tensor, Tensor]:
    """Match one image's proposals to its GT boxes at the matcher's IoU threshold.

    Args:
        proposals: (N, 4) xyxy.
        gt_boxes: (M, 4) xyxy.
        gt_labels: (M,) int64 (all 1 for the CAD).
        matcher: torchvision Matcher with equal high/low thresholds (no "ignore" band, like detectron2).

    Returns:
        matched_idx (N,) int64 index of the matched GT (0 where unmatched or M == 0) and labels (N,) int64:
        the GT label for IoU >= threshold, else 0 (background).
    """
    n = proposals.shape[0]
    if gt_boxes.numel() == 0:
        zeros = torch.zeros(n, dtype=torch.int64, device=proposals.device)
        return zeros, zeros.clone()
    matched = matcher(box_ops.box_iou(gt_boxes, proposals))
    matched_idx = matched.clamp(min=0)
    labels = gt_labels[matched_idx].to(torch.int64)
    labels[matched < 0] = 0
    return matched_idx, labels


def cascade_stage_losses(
    class_logits: Tensor,
    box_deltas: Tensor,
    proposals: Sequence[Tensor],
    labels: Sequence[Tensor],
    matched_gt_boxes: Sequence[Tensor],
    gt_boxes: Sequence[Tensor],
    box_coder: det_utils.BoxCoder,
    droploss: bool = True,
    droploss_threshold: float = 0.01,
    droploss_max_gt: int = 100,
    box_loss_beta: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Classification and box losses of one cascade stage.

    Args:
        class_logits: (N, 2) logits for the N RoIs of all images, concatenated in image order.
        box_deltas: (N, 4) class-agnostic deltas.
        proposals: per image (N_i, 4) xyxy RoIs the deltas refer to (sum N_i = N).
        labels: per image (N_i,) int64, 1 = object, 0 = background.
        matched_gt_boxes: per image (N_i, 4) the GT box each RoI is matched to (used for positives only).
        gt_boxes: per image (M_i, 4) all GT boxes (DropLoss' IoU reference).
        box_coder: the stage's BoxCoder.
        droploss: use DropLoss for the classification term (spec 4.2), else plain CE.
        droploss_threshold: DropLoss IoU threshold (0.01).
        droploss_max_gt: only the first this-many GT boxes per image count for DropLoss (CutLER: 100).
        box_loss_beta: smooth-L1 beta (0 = L1, detectron2's default).

    Returns:
        (loss_cls, loss_box) scalars; both averaged over all N RoIs (DropLoss: dropped RoIs stay in the
        denominator).
    """
    labels_all = torch.cat(list(labels)) if len(labels) else class_logits.new_zeros(0, dtype=torch.int64)
    n = labels_all.numel()
    if droploss:
        counts = [p.shape[0] for p in proposals]
        with torch.no_grad():
            # CutLER decodes the stage's own predicted boxes (proposal + deltas) for the IoU test.
            pred_boxes = box_coder.decode_single(box_deltas.detach(), torch.cat(list(proposals)))
        loss_cls = class_logits.sum() * 0.0
        start = 0
        for n_i, gt_i in zip(counts, gt_boxes):
            end = start + n_i
            if n_i:
                # droploss_cross_entropy averages over the image's RoIs; re-weight by n_i / n to get the batch mean.
                per_image = droploss_cross_entropy(
                    class_logits[start:end],
                    labels_all[start:end],
                    pred_boxes[start:end],
                    gt_i[:droploss_max_gt],
                    threshold=droploss_threshold,
                )
                loss_cls = loss_cls + per_image * (n_i / max(n, 1))
            start = end
    elif n:
        loss_cls = F.cross_entropy(class_logits, labels_all)
    else:
        loss_cls = class_logits.sum() * 0.0

    pos = torch.where(labels_all > 0)[0]
    if pos.numel() == 0:
        loss_box = box_deltas.sum() * 0.0
    else:
        targets = box_coder.encode_single(torch.cat(list(matched_gt_boxes))[pos], torch.cat(list(proposals))[pos])
        loss_box = F.smooth_l1_loss(box_deltas[pos], targets, beta=box_loss_beta, reduction="sum") / max(n, 1)
    return loss_cls, loss_box


class CascadeRoIHeads(nn.Module):
    """Cascade box heads + one mask head (class-agnostic, 2 classes incl. background).

    Args:
        box_roi_pool: MultiScaleRoIAlign for the box heads (7x7).
        box_heads: one box head per stage (e.g. TwoMLPHead), output (R, C).
        box_predictors: one :class:`CascadeBoxPredictor` per stage.
        stage_iou_thresholds: per-stage foreground IoU thresholds, (0.5, 0.6, 0.7).
        stage_bbox_reg_weights: per-stage BoxCoder weights.
        batch_size_per_image: RoIs sampled per image at stage 0 (512).
        positive_fraction: foreground fraction of the stage-0 sample (0.25).
        score_thresh: test score threshold (spec: 0.0; kept boxes need score > thresh).
        nms_thresh: test NMS IoU (0.5).
        detections_per_img: test top-k (100).
        mask_roi_pool, mask_head, mask_predictor: torchvision Mask R-CNN mask branch (1 class), or None.
        droploss: DropLoss for the classification terms.
        droploss_threshold: DropLoss IoU threshold.
        sc_loss: weight the mask BCE with the Spatial Confidence map (Eq. 6) when targets carry ``confidence``.
        mask_train_stage: whose foreground RoIs train the mask head (0 = detectron2/CutLER behaviour).
        box_loss_beta: smooth-L1 beta of the box loss.

    Attributes:
        last_training_samples: after a training forward, per stage a dict with detached ``proposals``,
            ``matched_idxs`` and ``labels`` (lists over images); a debugging/testing hook.
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_heads: Sequence[nn.Module],
        box_predictors: Sequence[nn.Module],
        stage_iou_thresholds: Sequence[float] = DEFAULT_STAGE_IOUS,
        stage_bbox_reg_weights: Sequence[Sequence[float]] = DEFAULT_STAGE_BBOX_REG_WEIGHTS,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.0,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        mask_roi_pool: nn.Module | None = None,
        mask_head: nn.Module | None = None,
        mask_predictor: nn.Module | None = None,
        droploss: bool = True,
        droploss_threshold: float = 0.01,
        sc_loss: bool = True,
        mask_train_stage: int = 0,
        box_loss_beta: float = 0.0,
    ) -> None:
        super().__init__()
        n = len(box_heads)
        if not (len(box_predictors) == len(stage_iou_thresholds) == len(stage_bbox_reg_weights) == n) or n == 0:
            raise ValueError("box_heads, box_predictors, stage_iou_thresholds and stage_bbox_reg_weights must match")
        if not 0 <= mask_train_stage < n:
            raise ValueError(f"mask_train_stage must be in [0, {n}), got {mask_train_stage}")
        self.num_stages = n
        self.box_roi_pool = box_roi_pool
        self.box_heads = nn.ModuleList(box_heads)
        self.box_predictors = nn.ModuleList(box_predictors)
        self.stage_iou_thresholds = tuple(float(t) for t in stage_iou_thresholds)
        # Equal high/low thresholds: IoU >= t is foreground, else background (detectron2's Matcher([t], [0, 1])).
        self.proposal_matchers = [det_utils.Matcher(t, t, allow_low_quality_matches=False) for t in self.stage_iou_thresholds]
        self.box_coders = [det_utils.BoxCoder(tuple(float(v) for v in w)) for w in stage_bbox_reg_weights]
        self.fg_bg_sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.droploss = droploss
        self.droploss_threshold = droploss_threshold
        self.sc_loss = sc_loss
        self.mask_train_stage = mask_train_stage
        self.box_loss_beta = box_loss_beta
        self.last_training_samples: list[dict[str, list[Tensor]]] = []

    @property
    def has_mask(self) -> bool:
        return self.mask_roi_pool is not None and self.mask_head is not None and self.mask_predictor is not None

    def _run_stage(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]], stage: int
    ) -> tuple[Tensor, Tensor]:
        """Pool, box head and predictor of one stage -> (logits (R, 2), deltas (R, 4))."""
        x = self.box_roi_pool(features, proposals, image_shapes)
        if self.training:
            x = _ScaleGradient.apply(x, 1.0 / self.num_stages)
        x = self.box_heads[stage](x)
        return self.box_predictors[stage](x)

    def _refine(
        self, deltas: Tensor, proposals: list[Tensor], image_shapes: list[tuple[int, int]], stage: int
    ) -> list[Tensor]:
        """Decode a stage's deltas into per-image boxes, clipped to the image (no gradient, like RPN output)."""
        boxes = self.box_coders[stage].decode_single(deltas.detach(), torch.cat(proposals))
        out = []
        for b, shape in zip(boxes.split([p.shape[0] for p in proposals]), image_shapes):
            out.append(box_ops.clip_boxes_to_image(b, shape))
        return out

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Run the cascade.

        Args:
            features: FPN maps by name.
            proposals: per image (P_i, 4) RPN boxes in the transformed image's pixels.
            image_shapes: per image (h, w) after the transform (before padding).
            targets: training only; per image ``boxes`` (M, 4), ``labels`` (M,), ``masks`` (M, h, w) and
                optionally ``confidence`` (M, h, w) at the same resolution as the masks.

        Returns:
            (detections, losses). Training: ([], losses with ``loss_cls_stage{t}``, ``loss_box_stage{t}`` and
            ``loss_mask``). Eval: (per image dict with ``boxes`` (D, 4), ``scores`` (D,), ``labels`` (D,) all 1
            and ``masks`` (D, 1, 28, 28) probabilities, {}).
        """
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return [], self._forward_train(features, proposals, image_shapes, targets)
        return self._forward_test(features, proposals, image_shapes), {}

    def _forward_train(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        dtype = proposals[0].dtype
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"].to(torch.int64) for t in targets]
        losses: dict[str, Tensor] = {}
        records: list[dict[str, list[Tensor]]] = []
        props: list[Tensor] = []
        prev_boxes: list[Tensor] = []
        for k in range(self.num_stages):
            if k == 0:
                # Stage 0: append the GT boxes to the RPN proposals, match at IoU 0.5 and sample 512 (1:3).
                props = [torch.cat([p.detach(), g]) for p, g in zip(proposals, gt_boxes)]
                matched_labels = [match_proposals(p, g, l, self.proposal_matchers[0]) for p, g, l in zip(props, gt_boxes, gt_labels)]
                pos_masks, neg_masks = self.fg_bg_sampler([ml[1] for ml in matched_labels])
                keep = [torch.where(pm | nm)[0] for pm, nm in zip(pos_masks, neg_masks)]
                props = [p[i] for p, i in zip(props, keep)]
                matched = [ml[0][i] for ml, i in zip(matched_labels, keep)]
                labels = [ml[1][i] for ml, i in zip(matched_labels, keep)]
            else:
                # Later stages: the previous stage's refined boxes, empty ones dropped, re-labelled at this
                # stage's threshold without re-sampling (detectron2's _match_and_label_boxes).
                props = [b[box_ops.remove_small_boxes(b, 1e-5)] for b in prev_boxes]
                matched_labels = [match_proposals(p, g, l, self.proposal_matchers[k]) for p, g, l in zip(props, gt_boxes, gt_labels)]
                matched = [ml[0] for ml in matched_labels]
                labels = [ml[1] for ml in matched_labels]
            matched_gt = [
                g[m] if g.numel() else torch.zeros((m.shape[0], 4), dtype=dtype, device=m.device)
                for g, m in zip(gt_boxes, matched)
            ]
            logits, deltas = self._run_stage(features, props, image_shapes, k)
            loss_cls, loss_box = cascade_stage_losses(
                logits,
                deltas,
                props,
                labels,
                matched_gt,
                gt_boxes,
                self.box_coders[k],
                droploss=self.droploss,
                droploss_threshold=self.droploss_threshold,
                box_loss_beta=self.box_loss_beta,
            )
            losses[f"loss_cls_stage{k}"] = loss_cls
            losses[f"loss_box_stage{k}"] = loss_box
            records.append({"proposals": props, "matched_idxs": matched, "labels": labels})
            prev_boxes = self._refine(deltas, props, image_shapes, k)
        self.last_training_samples = records
        if self.has_mask:
            losses["loss_mask"] = self._mask_loss(features, image_shapes, targets, records[self.mask_train_stage])
        return losses

    def _mask_loss(
        self,
        features: dict[str, Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
        record: dict[str, list[Tensor]],
    ) -> Tensor:
        """Eq. 6 (or BCE) on the foreground RoIs of one stage's training sample."""
        assert self.mask_roi_pool is not None and self.mask_head is not None and self.mask_predictor is not None
        pos_boxes, pos_matched = [], []
        for p, m, lab in zip(record["proposals"], record["matched_idxs"], record["labels"]):
            fg = torch.where(lab > 0)[0]
            pos_boxes.append(p[fg])
            pos_matched.append(m[fg])
        x = self.mask_roi_pool(features, pos_boxes, image_shapes)
        mask_logits = self.mask_predictor(self.mask_head(x))[:, 0]  # (R, S, S): the single object class
        size = mask_logits.shape[-1]
        use_sc = self.sc_loss and any("confidence" in t for t in targets)
        mask_targets, confs = [], []
        for t, b, m in zip(targets, pos_boxes, pos_matched):
            if b.shape[0] == 0:
                continue
            # torchvision's target crop (roi_align, aligned=False); SC is cropped the same way so they line up.
            mask_targets.append(project_masks_on_boxes(t["masks"], b, m, size))
            if use_sc:
                conf = t.get("confidence")
                if conf is None:  # e.g. self-training predictions: no SC, weight 1 everywhere
                    confs.append(torch.ones((b.shape[0], size, size), dtype=torch.float32, device=b.device))
                else:
                    confs.append(crop_confidence_to_rois(conf, b, m, size=size, aligned=False))
        if not mask_targets:
            return mask_logits.sum() * 0.0
        return sc_mask_loss(mask_logits, torch.cat(mask_targets), torch.cat(confs) if use_sc else None)

    @torch.no_grad()
    def _forward_test(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        props = proposals
        scores_per_stage: list[Tensor] = []
        boxes: list[Tensor] = proposals
        for k in range(self.num_stages):
            if k > 0:
                # Empty boxes are kept at test time so that the stages' scores stay aligned per RoI.
                props = boxes
            logits, deltas = self._run_stage(features, props, image_shapes, k)
            scores_per_stage.append(F.softmax(logits, dim=-1))
            boxes = self._refine(deltas, props, image_shapes, k)
        fg_scores = (sum(scores_per_stage) / self.num_stages)[:, 1]
        results: list[dict[str, Tensor]] = []
        for b, s in zip(boxes, fg_scores.split([p.shape[0] for p in props])):
            keep = torch.isfinite(b).all(dim=1) & torch.isfinite(s) & (s > self.score_thresh)
            b, s = b[keep], s[keep]
            keep = box_ops.remove_small_boxes(b, min_size=1e-2)
            b, s = b[keep], s[keep]
            keep = box_ops.nms(b, s, self.nms_thresh)[: self.detections_per_img]
            b, s = b[keep], s[keep]
            results.append({"boxes": b, "scores": s, "labels": torch.ones_like(s, dtype=torch.int64)})
        if self.has_mask:
            assert self.mask_roi_pool is not None and self.mask_head is not None and self.mask_predictor is not None
            x = self.mask_roi_pool(features, [r["boxes"] for r in results], image_shapes)
            probs = self.mask_predictor(self.mask_head(x)).sigmoid()[:, :1]  # (D, 1, S, S)
            for r, p in zip(results, probs.split([r["boxes"].shape[0] for r in results])):
                r["masks"] = p
        return results
