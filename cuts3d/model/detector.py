"""Class-agnostic Cascade Mask R-CNN, the CAD of CutLER/CutS3D (spec 4.1; losses 4.2 and 4.5).

Torchvision building blocks (GeneralizedRCNNTransform, ResNet-50 + FPN, RPN, MultiScaleRoIAlign, Mask R-CNN mask
head) around :class:`cuts3d.model.cascade.CascadeRoIHeads`. Config values follow CutLER's
``cascade_mask_rcnn_R_50_FPN.yaml``: anchors 32-512 (one size per FPN level) x ratios {0.5, 1, 2}, RPN NMS 0.65,
post-NMS top-k 4000 in training, 1 class with class-agnostic regression, positive fraction 0.25, test score
threshold 0.0 and 100 detections per image; backbone fully trainable (FREEZE_AT 0) with BatchNorm (the
trainer may convert it to SyncBN).

Targets may carry ``confidence`` (K, H, W) Spatial Confidence maps; they are resized with the image (nearest,
as SC is patch-level) so that the mask head's Eq. 6 loss can crop them like the mask targets.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet50
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from cuts3d.model.backbone_weights import (
    RANDOM_RECORD,
    BackboneWeightsRecord,
    is_random,
    load_resnet50_weights,
)
from cuts3d.model.cascade import (
    DEFAULT_STAGE_BBOX_REG_WEIGHTS,
    DEFAULT_STAGE_IOUS,
    CascadeBoxPredictor,
    CascadeRoIHeads,
)

# torchvision's RPN loss names -> the detectron2-style names the trainer logs.
_RPN_LOSS_NAMES = {"loss_objectness": "loss_rpn_cls", "loss_rpn_box_reg": "loss_rpn_loc"}


@dataclass(frozen=True)
class DetectorConfig:
    """Every knob of :func:`build_detector` (defaults: spec 4.1 / detectron2 Base-RCNN-FPN).

    ``representation_size`` / ``mask_head_layers`` / ``fpn_channels`` are smaller for the "tiny" backbone.
    """

    min_size: int | tuple[int, ...] = 800
    max_size: int = 1333
    test_size: int | None = None
    fpn_norm: str = "bn"
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 4000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.65
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    box_pool_size: int = 7
    mask_pool_size: int = 14
    pooler_sampling_ratio: int = 0  # detectron2's ROIAlignV2 default (adaptive)
    representation_size: int = 1024
    mask_head_layers: tuple[int, ...] = (256, 256, 256, 256)
    stage_iou_thresholds: tuple[float, ...] = DEFAULT_STAGE_IOUS
    stage_bbox_reg_weights: tuple[tuple[float, float, float, float], ...] = DEFAULT_STAGE_BBOX_REG_WEIGHTS
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    score_thresh: float = 0.0
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    droploss_threshold: float = 0.01
    mask_train_stage: int = 0
    box_loss_beta: float = 0.0
    fpn_channels: int = 256
    backbone_weights: str | None = None  # random; TrainConfig defaults to DINO's RN50
    backbone_weights_sha256: str | None = None


class TinyBackbone(nn.Module):
    """A few-channel 4-stage CNN (strides 4, 8, 16, 32) + FPN, for fast CPU tests; same outputs as the R50-FPN.

    Args:
        channels: output channels of the four stages.
        out_channels: FPN channels.

    Output of ``forward(x (B, 3, H, W))``: OrderedDict "0".."3" (strides 4..32) and "pool" (stride 64), each
    (B, out_channels, h, w).
    """

    def __init__(self, channels: tuple[int, int, int, int] = (8, 16, 24, 32), out_channels: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.stem = nn.Sequential(block(3, channels[0], 2), block(channels[0], channels[0], 2))
        self.stages = nn.ModuleList(
            [block(channels[0], channels[0], 1)]
            + [block(channels[i - 1], channels[i], 2) for i in range(1, 4)]
        )
        self.fpn = FeaturePyramidNetwork(list(channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stem(x)
        feats: OrderedDict[str, Tensor] = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            feats[str(i)] = x
        return self.fpn(feats)


def build_backbone(name: str, cfg: DetectorConfig) -> nn.Module:
    """"r50_fpn" (torchvision ResNet-50 + FPN) or "tiny"; ``weights_record`` on the result says what was loaded.

    r50_fpn starts from ``cfg.backbone_weights`` ("dino_resnet50", a file, or None / "none" for random weights;
    see :mod:`cuts3d.model.backbone_weights`); "tiny" has no pretrained weights and accepts only None / "none".
    """
    if name == "r50_fpn":
        body = resnet50(weights=None, norm_layer=nn.BatchNorm2d)
        record = RANDOM_RECORD
        if not is_random(cfg.backbone_weights):
            record = load_resnet50_weights(body, cfg.backbone_weights, cfg.backbone_weights_sha256)
        elif cfg.backbone_weights_sha256 is not None:
            raise ValueError("backbone_weights_sha256 was given but backbone_weights is none (random): no file to check")
        # FREEZE_AT 0: all 5 blocks trainable; trainable BatchNorm in the body and, as CutLER's FPN.NORM, in the
        # FPN (both SyncBN in CutLER; cuts3d.engine.train converts them under multi-GPU DDP).
        if cfg.fpn_norm not in ("bn", "none"):
            raise ValueError(f"fpn_norm={cfg.fpn_norm!r}; choose bn (CutLER) or none")
        fpn_norm = nn.BatchNorm2d if cfg.fpn_norm == "bn" else None
        fpn = _resnet_fpn_extractor(body, trainable_layers=5, extra_blocks=LastLevelMaxPool(), norm_layer=fpn_norm)
        fpn.weights_record = record
        return fpn
    if name == "tiny":
        if not is_random(cfg.backbone_weights) or cfg.backbone_weights_sha256 is not None:
            raise ValueError(
                f"backbone_weights={cfg.backbone_weights} is a ResNet-50 file; the tiny backbone has no pretrained "
                "weights: set backbone_weights=none (the tiny_cpu preset does) or use backbone=r50_fpn"
            )
        tiny = TinyBackbone(out_channels=cfg.fpn_channels)
        tiny.weights_record = RANDOM_RECORD
        return tiny
    raise ValueError(f"unknown backbone {name!r}; expected 'r50_fpn' or 'tiny'")


class CascadeMaskRCNN(nn.Module):
    """GeneralizedRCNN-style wrapper: transform -> backbone -> RPN -> cascade RoI heads -> postprocess.

    ``forward(images, targets=None)``: images a list of (3, H_i, W_i) float tensors in [0, 1]; targets (training)
    a list of dicts with ``boxes`` (K, 4) xyxy, ``labels`` (K,), ``masks`` (K, H, W) uint8 and optionally
    ``confidence`` (K, H, W) float. Training returns a dict of scalar losses; eval a list of dicts with ``boxes``
    (D, 4), ``scores`` (D,), ``labels`` (D,) all 1 and ``masks`` (D, 1, H, W) probabilities.
    """

    def __init__(
        self,
        transform: GeneralizedRCNNTransform,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        roi_heads: CascadeRoIHeads,
        config: DetectorConfig | None = None,
    ) -> None:
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.config = config

    @property
    def backbone_weights_record(self) -> BackboneWeightsRecord:
        """What the ResNet started from (set by :func:`build_backbone`; random for a backbone built elsewhere)."""
        return getattr(self.backbone, "weights_record", RANDOM_RECORD)

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        confidences: list[Tensor | None] = []
        if targets is not None:
            # The transform does not know SC; take it out and resize it like the masks afterwards.
            targets = [dict(t) for t in targets]
            confidences = [t.pop("confidence", None) for t in targets]
        image_list, targets = self.transform(images, targets)
        if targets is not None:
            for t, conf in zip(targets, confidences):
                if conf is not None:
                    size = tuple(t["masks"].shape[-2:])
                    # Nearest: SC is patch-level and piecewise constant (spec 3.5).
                    t["confidence"] = F.interpolate(conf[:, None].float(), size=size, mode="nearest")[:, 0] if conf.shape[0] else conf.new_zeros((0, *size))
        features = self.backbone(image_list.tensors)
        proposals, rpn_losses = self.rpn(image_list, features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        if self.training:
            losses = {_RPN_LOSS_NAMES.get(k, k): v for k, v in rpn_losses.items()}
            losses.update(roi_losses)
            return losses
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)


class _Transform(GeneralizedRCNNTransform):
    """torchvision's transform with detectron2's separate test size (INPUT.MIN_SIZE_TEST; CutLER: 800).

    torchvision tests at the *last* training size (1024 with CutLER's multi-scale list); ``test_size`` sets the
    shorter side used in eval mode instead (None keeps torchvision's rule).
    """

    def __init__(self, *args: Any, test_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.test_size = test_size

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None):
        if self.training or self.test_size is None:
            return super().resize(image, target)
        train_sizes = self.min_size
        self.min_size = (int(self.test_size),)
        try:
            return super().resize(image, target)
        finally:
            self.min_size = train_sizes


def build_detector(
    backbone: str = "r50_fpn",
    droploss: bool = True,
    sc_loss: bool = True,
    min_size: int | tuple[int, ...] = 800,
    max_size: int = 1333,
    **cfg: Any,
) -> CascadeMaskRCNN:
    """Build the class-agnostic Cascade Mask R-CNN.

    Args:
        backbone: "r50_fpn" (ResNet-50 FPN, random init unless ``backbone_weights`` is "dino_resnet50" or a
            ResNet-50 file in torchvision or detectron2 layout, checked strictly; see
            :mod:`cuts3d.model.backbone_weights`) or "tiny" (CPU tests).
        droploss: DropLoss on the cascade classification losses (spec 4.2; off for self-training).
        sc_loss: Spatial Confidence weighted mask loss (Eq. 6) when targets carry ``confidence``.
        min_size: shorter side (an int, or a tuple sampled per image in training: multi-scale).
        max_size: longer-side cap.
        (``test_size`` in ``cfg``: shorter side at test time; None tests at the last training size.)
        **cfg: any other :class:`DetectorConfig` field (e.g. ``rpn_post_nms_top_n_train``, ``score_thresh``,
            ``detections_per_img``, ``backbone_weights``, ``backbone_weights_sha256``).

    Raises:
        TypeError: unknown config key.
    """
    known = {f.name for f in fields(DetectorConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise TypeError(f"unknown detector config keys: {unknown}")
    defaults: dict[str, Any] = {}
    if backbone == "tiny":
        defaults = {"representation_size": 64, "mask_head_layers": (16, 16), "fpn_channels": 32}
    config = replace(DetectorConfig(), min_size=min_size, max_size=max_size, **{**defaults, **cfg})

    body = build_backbone(backbone, config)
    out_ch = int(body.out_channels)
    levels = ["0", "1", "2", "3"]
    transform = _Transform(config.min_size, config.max_size, list(config.image_mean), list(config.image_std), test_size=config.test_size)
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in config.anchor_sizes),
        aspect_ratios=(tuple(config.aspect_ratios),) * len(config.anchor_sizes),
    )
    rpn = RegionProposalNetwork(
        anchors,
        RPNHead(out_ch, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=config.rpn_fg_iou_thresh,
        bg_iou_thresh=config.rpn_bg_iou_thresh,
        batch_size_per_image=config.rpn_batch_size_per_image,
        positive_fraction=config.rpn_positive_fraction,
        pre_nms_top_n={"training": config.rpn_pre_nms_top_n_train, "testing": config.rpn_pre_nms_top_n_test},
        post_nms_top_n={"training": config.rpn_post_nms_top_n_train, "testing": config.rpn_post_nms_top_n_test},
        nms_thresh=config.rpn_nms_thresh,
    )
    n_stages = len(config.stage_iou_thresholds)
    box_pool = MultiScaleRoIAlign(levels, config.box_pool_size, config.pooler_sampling_ratio)
    box_in = out_ch * config.box_pool_size**2
    roi_heads = CascadeRoIHeads(
        box_roi_pool=box_pool,
        box_heads=[TwoMLPHead(box_in, config.representation_size) for _ in range(n_stages)],
        box_predictors=[CascadeBoxPredictor(config.representation_size, 2) for _ in range(n_stages)],
        stage_iou_thresholds=config.stage_iou_thresholds,
        stage_bbox_reg_weights=config.stage_bbox_reg_weights,
        batch_size_per_image=config.batch_size_per_image,
        positive_fraction=config.positive_fraction,
        score_thresh=config.score_thresh,
        nms_thresh=config.nms_thresh,
        detections_per_img=config.detections_per_img,
        mask_roi_pool=MultiScaleRoIAlign(levels, config.mask_pool_size, config.pooler_sampling_ratio),
        mask_head=MaskRCNNHeads(out_ch, list(config.mask_head_layers), 1),
        mask_predictor=MaskRCNNPredictor(config.mask_head_layers[-1], config.mask_head_layers[-1], 1),
        droploss=droploss,
        droploss_threshold=config.droploss_threshold,
        sc_loss=sc_loss,
        mask_train_stage=config.mask_train_stage,
        box_loss_beta=config.box_loss_beta,
    )
    return CascadeMaskRCNN(transform, body, rpn, roi_heads, config)
