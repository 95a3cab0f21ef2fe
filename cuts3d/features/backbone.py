"""Self-supervised ViT feature extraction for MaskCut / CutS3D (CutLER Sec. 3.1, ``maskcut/dino.py`` ``ViTFeat``).

MaskCut's patch features are the **keys** of the last block's self-attention: CutLER hooks
``blocks[-1].attn.qkv``, takes the key third of its output (all heads concatenated, in head order) and drops the CLS
token, giving F of shape (D, h*w); with the default DINO ViT-B/8 on a 480 x 480 image that is (768, 3600), a 60 x 60
grid. Images are resized to 480 x 480 with PIL's LANCZOS filter and normalised with the ImageNet mean/std.

Usage::

    backbone = build_backbone("dino_vitb8", weights=None)   # official weights, downloaded once and cached
    feats = backbone.extract(backbone.preprocess(image)[None])  # (1, 768, 60, 60) float32
    metadata["weights_sha256"] = backbone.weights_sha256
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from cuts3d.features.vit import VisionTransformer
from cuts3d.features.weights import (
    KNOWN_SHA256,
    download_checkpoint,
    load_checkpoint,
    save_state_dict,
    sha256_file,
    verify_sha256,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURES = ("k", "q", "v", "tokens")
DEFAULT_BACKBONE = "dino_vitb8"

_DINO_URL = "https://dl.fbaipublicfiles.com/dino"
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"


@dataclass(frozen=True)
class BackboneSpec:
    """Architecture and official weights of one backbone; calling it builds the randomly initialised ViT.

    Attributes:
        patch_size: patch side in pixels.
        embed_dim: feature width D (= channels of every extracted feature).
        num_heads: attention heads.
        img_size: training resolution in pixels, which fixes the stored position-embedding grid
            (224 for DINO, 518 = 37 * 14 for DINOv2).
        dinov2: DINOv2 layout (LayerScale and ``mask_token``).
        url: official checkpoint URL.
        depth: number of blocks.
    """

    patch_size: int
    embed_dim: int
    num_heads: int
    img_size: int
    dinov2: bool
    url: str
    depth: int = 12

    @property
    def filename(self) -> str:
        """Basename of the official checkpoint file."""
        return self.url.rsplit("/", 1)[-1]

    def __call__(self, device: str | torch.device = "cpu", init: bool = True) -> VisionTransformer:
        """The ViT with random weights on ``device``, or uninitialised on the meta device when ``init`` is False.

        Built on the meta device first so that no memory is filled twice: PyTorch's per-layer default init would be
        overwritten by DINO's anyway, and a checkpoint replaces everything (``load_state_dict(assign=True)``).
        """
        with torch.device("meta"):
            vit = VisionTransformer(
                self.patch_size,
                self.embed_dim,
                self.depth,
                self.num_heads,
                self.img_size,
                layerscale=self.dinov2,
                mask_token=self.dinov2,
            )
        if init:
            vit.to_empty(device=device)
            vit.init_weights()
        return vit


def _dino(stem: str, patch: int, dim: int, heads: int) -> BackboneSpec:
    return BackboneSpec(patch, dim, heads, 224, False, f"{_DINO_URL}/{stem}_pretrain/{stem}_pretrain.pth")


def _dinov2(stem: str, dim: int, heads: int) -> BackboneSpec:
    return BackboneSpec(14, dim, heads, 518, True, f"{_DINOV2_URL}/{stem}/{stem}_pretrain.pth")


#: Backbone name -> builder (a :class:`BackboneSpec`; ``BACKBONES[name]()`` gives the random-init ViT).
BACKBONES: dict[str, BackboneSpec] = {
    "dino_vits16": _dino("dino_deitsmall16", 16, 384, 6),
    # CutLER's ViT-S/8 default is DINO's 300-epoch checkpoint (the one DINO's paper visualises), not the
    # 800-epoch dino_deitsmall8_pretrain.pth.
    "dino_vits8": _dino("dino_deitsmall8_300ep", 8, 384, 6),
    "dino_vitb16": _dino("dino_vitbase16", 16, 768, 12),
    "dino_vitb8": _dino("dino_vitbase8", 8, 768, 12),
    "dinov2_vits14": _dinov2("dinov2_vits14", 384, 6),
    "dinov2_vitb14": _dinov2("dinov2_vitb14", 768, 12),
}


def snap_to_patch(size: int, patch_size: int) -> int:
    """``size`` rounded to the nearest multiple of ``patch_size`` (CutLER's ``resize_pil``: Python ``round``)."""
    snapped = int(round(size / patch_size)) * patch_size
    if snapped <= 0:
        raise ValueError(f"image size {size} rounds to 0 patches of {patch_size} px; use size >= {patch_size}")
    return snapped


class Backbone(nn.Module):
    """A frozen ViT with MaskCut's preprocessing and patch-feature extraction.

    Attributes:
        name: key of :data:`BACKBONES`.
        patch_size: patch side p in pixels.
        embed_dim: channels C of the extracted features.
        feature: "k", "q", "v" (last block's attention keys/queries/values, heads concatenated) or "tokens"
            (last block's output tokens after the final norm).
        weights_id: checkpoint path, download URL, or "random".
        weights_sha256: sha256 of the loaded checkpoint file, None for random weights.
        vit: the underlying :class:`VisionTransformer` (eval mode, no gradients).
    """

    def __init__(
        self,
        name: str,
        vit: VisionTransformer,
        feature: str = "k",
        weights_id: str = "random",
        weights_sha256: str | None = None,
    ) -> None:
        super().__init__()
        if feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}; choose one of {', '.join(FEATURES)}")
        self.name = name
        self.vit = vit.eval().requires_grad_(False)
        self.patch_size = vit.patch_size
        self.embed_dim = vit.embed_dim
        self.feature = feature
        self.weights_id = weights_id
        self.weights_sha256 = weights_sha256

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters, where :meth:`extract` computes and returns features."""
        return self.vit.cls_token.device

    def preprocess(self, image: np.ndarray, size: int = 480) -> torch.Tensor:
        """MaskCut's input transform of one image.

        Args:
            image: (H, W, 3) uint8 RGB.
            size: target side in pixels, snapped to the nearest multiple of the patch size (480 for /8 and /16;
                476 = 34 * 14 for DINOv2). The image is resized once, straight to S x S, with PIL LANCZOS.

        Returns:
            (3, S, S) float32 on the CPU, ImageNet-normalised ((x / 255 - mean) / std per channel).
        """
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"preprocess needs an (H, W, 3) uint8 RGB image, got a {desc}")
        side = snap_to_patch(size, self.patch_size)
        resized = Image.fromarray(image).resize((side, side), resample=Image.Resampling.LANCZOS)
        pixels = np.asarray(resized, dtype=np.float32) / 255.0
        pixels = (pixels - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    @torch.no_grad()
    def extract(self, batch: torch.Tensor) -> torch.Tensor:
        """Patch features of a batch of preprocessed images.

        Args:
            batch: (B, 3, H, W) float, H and W multiples of ``patch_size`` (any device; moved to the backbone's).

        Returns:
            (B, C, H/p, W/p) float32 on the backbone's device, C = ``embed_dim``; channel order for k/q/v is
            head-major (head 0's head_dim channels first), as in CutLER's ``ViTFeat``.
        """
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"extract needs a (B, 3, H, W) batch, got shape {tuple(batch.shape)}")
        height, width = batch.shape[-2:]
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {p}; use preprocess() or crop"
            )
        x = batch.to(device=self.device, dtype=torch.float32)
        vit = self.vit
        tokens = vit.prepare_tokens(x)
        if self.feature == "tokens":
            for blk in vit.blocks:
                tokens = blk(tokens)
            out = vit.norm(tokens)
        else:
            # CutLER reads the output of blocks[-1].attn.qkv with a forward hook during a full forward pass; the
            # same tensor is computed directly here, so the last block's attention and MLP need not run.
            for blk in vit.blocks[:-1]:
                tokens = blk(tokens)
            last = vit.blocks[-1]
            qkv = last.attn.qkv(last.norm1(tokens))  # (B, N, 3D), laid out as (3, heads, head_dim)
            d = self.embed_dim
            index = {"q": 0, "k": 1, "v": 2}[self.feature]
            out = qkv[..., index * d : (index + 1) * d]
        out = out[:, vit.num_prefix_tokens :]  # drop CLS
        return out.transpose(1, 2).reshape(x.shape[0], self.embed_dim, height // p, width // p).contiguous()

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`extract`."""
        return self.extract(batch)


def build_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    device: str = "cpu",
    feature: str = "k",
    sha256: str | None = None,
    cache_dir: Path | None = None,
) -> Backbone:
    """Build a frozen backbone with its weights.

    Args:
        name: a key of :data:`BACKBONES` (default DINO ViT-B/8, MaskCut's).
        weights: a local checkpoint in the official key layout; None for the official file (downloaded once into
            ``cache_dir`` and reused); the string "none" for random initialisation (tests).
        device: torch device for the model and the features.
        feature: "k" (default, MaskCut), "q", "v" or "tokens"; see :class:`Backbone`.
        sha256: expected sha256 of the checkpoint file; a mismatch raises. Without it, downloaded official files are
            checked against :data:`~cuts3d.features.weights.KNOWN_SHA256` when it has an entry.
        cache_dir: download cache (default ``torch.hub.get_dir()/checkpoints``).

    Returns:
        The backbone; ``weights_sha256`` holds the checkpoint file's sha256 (None for random weights) for run metadata.

    Raises:
        ValueError: unknown name or feature, or a sha256 given with random weights.
        FileNotFoundError: ``weights`` names no file.
        CheckpointError: unreadable checkpoint, wrong keys or shapes, or sha256 mismatch.
        WeightsUnavailableError: weights=None, the file is not cached and cannot be downloaded.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    if isinstance(weights, str) and weights == "none":
        if sha256 is not None:
            raise ValueError("sha256 was given but weights='none' (random initialisation) has no file to check")
        return Backbone(name, spec(device=device), feature)
    if weights is None:
        path = download_checkpoint(spec.url, cache_dir)
        weights_id = spec.url
        expected_sha = sha256 if sha256 is not None else KNOWN_SHA256.get(name)
    else:
        path = Path(weights).expanduser()
        weights_id = str(path.resolve()) if path.exists() else str(path)
        expected_sha = sha256
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of {spec.filename} with --weights")
    # Hash before unpickling: a corrupt or substituted file is reported as such, not as a key mismatch.
    actual_sha = sha256_file(path)
    if expected_sha is not None:
        verify_sha256(path, expected_sha, actual_sha)
    vit = spec(init=False)
    state = load_checkpoint(path, {k: v.shape for k, v in vit.state_dict().items()}, name, spec.filename)
    # The model computes in float32 whatever precision the file stores.
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    vit.load_state_dict(state, strict=True, assign=True)
    return Backbone(name, vit, feature, weights_id=weights_id, weights_sha256=actual_sha).to(device)


def save_official_checkpoint(backbone: Backbone | VisionTransformer, path: str | Path) -> Path:
    """Write the model's weights as an official-layout checkpoint (a flat dict of tensors) and return the path."""
    vit = backbone.vit if isinstance(backbone, Backbone) else backbone
    return save_state_dict(vit, path)
