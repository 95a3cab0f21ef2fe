"""Self-supervised ViT backbones (DINO, DINOv2) and MaskCut's patch features (CutLER Sec. 3.1; issue 5).

Usage::

    from cuts3d.features import build_backbone
    backbone = build_backbone("dino_vitb8", weights=None)        # or weights="path/to/dino_vitbase8_pretrain.pth"
    feats = backbone.extract(backbone.preprocess(image)[None])[0]  # (768, 60, 60) float32 keys
"""

from cuts3d.features.backbone import (
    BACKBONES,
    DEFAULT_BACKBONE,
    FEATURES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneSpec,
    build_backbone,
    save_official_checkpoint,
    snap_to_patch,
)
from cuts3d.features.vit import VisionTransformer
from cuts3d.features.weights import KNOWN_SHA256, CheckpointError, WeightsUnavailableError, sha256_file

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "FEATURES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KNOWN_SHA256",
    "Backbone",
    "BackboneSpec",
    "CheckpointError",
    "VisionTransformer",
    "WeightsUnavailableError",
    "build_backbone",
    "save_official_checkpoint",
    "sha256_file",
    "snap_to_patch",
]
