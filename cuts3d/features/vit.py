"""Compact Vision Transformer for the DINO and DINOv2 backbones (MaskCut's feature extractor, CutLER Sec. 3.1).

Parameter names are those of the official checkpoints, so their state dicts load with a strict key check:

* DINO (facebookresearch/dino ``vision_transformer.py``, which CutLER copies as ``maskcut/dino.py``):
  ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``,
  ``norm.*``; LayerNorm eps 1e-6, qkv bias, exact GELU, no classifier head.
* DINOv2 (facebookresearch/dinov2 hub models: ``block_chunks=0``, no register tokens) adds LayerScale
  ``blocks.N.ls{1,2}.gamma`` and ``mask_token``. The mask token is only used by DINOv2's masked-image training; it is
  kept here as an unused parameter so the official file loads without exceptions to the key check.

Inference only: no dropout and no stochastic depth (both are identities at eval time in the originals).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: a (p x p, stride p) convolution."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, h*w, D) patch tokens in row-major (h, w) order."""
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection laid out as (3, heads, head_dim) on the output axis."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        # SDPA's default scale is head_dim ** -0.5, the originals' qk_scale=None.
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Two-layer MLP with exact GELU (hidden = 4 * dim)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel residual scaling (DINOv2); the hub models are built with init value 1.0."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, dim: int, num_heads: int, layerscale: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim) if layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim) if layerscale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT backbone with one CLS token and learned absolute position embeddings.

    Args:
        patch_size: patch side p in pixels.
        embed_dim: token width D.
        depth: number of blocks.
        num_heads: attention heads (D must be divisible by it).
        img_size: training resolution in pixels; fixes the stored ``pos_embed`` grid ((img_size // p) ** 2 + 1 rows).
        layerscale: add DINOv2's LayerScale to every block.
        mask_token: own DINOv2's (unused) ``mask_token`` parameter.
    """

    num_prefix_tokens = 1  # the CLS token; DINOv2's register variants are not supported

    def __init__(
        self,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        img_size: int,
        layerscale: bool = False,
        mask_token: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, layerscale) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        if mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.init_weights()

    def init_weights(self) -> None:
        """Random initialisation of every parameter (DINO's scheme: timm's original ViT init).

        Covers all parameters, so a model built on the meta device and materialised with ``to_empty`` is fully
        initialised by this call alone (the cheap path :class:`~cuts3d.features.backbone.BackboneSpec` takes).
        """
        # DINO's trunc_normal_(std=0.02) truncates at +-2 absolute, i.e. 100 std, which a float32 normal draw never
        # reaches: a plain normal draw is the same distribution and is cheaper (ViT-B has 86M parameters).
        with torch.no_grad():
            nn.init.normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=0.02)
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Conv2d):
                    m.reset_parameters()  # DINO keeps PyTorch's default init for the patch embedding
                elif isinstance(m, LayerScale):
                    nn.init.constant_(m.gamma, 1.0)  # the DINOv2 hub models' init_values
            if hasattr(self, "mask_token"):
                nn.init.zeros_(self.mask_token)

    def interpolate_pos_encoding(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an (h, w) patch grid, (1, 1 + h*w, D).

        Bicubic resampling of the stored square grid exactly as DINO's ``interpolate_pos_encoding`` (and DINOv2's
        non-register hub models: offset 0.1, no antialiasing): the +0.1 on the target size avoids the floor in
        ``interpolate`` dropping a row through floating-point error (facebookresearch/dino issue 8).
        """
        n = self.pos_embed.shape[1] - 1
        if n == h * w and h == w:
            return self.pos_embed
        side = int(math.sqrt(n))
        dim = self.pos_embed.shape[-1]
        cls_pos = self.pos_embed[:, :1]
        grid = self.pos_embed[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic")
        if grid.shape[-2:] != (h, w):
            raise RuntimeError(f"position-embedding interpolation gave {tuple(grid.shape[-2:])}, expected {(h, w)}")
        grid = grid.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, h * w, dim)
        return torch.cat((cls_pos, grid), dim=1)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, 1 + h*w, D) tokens (CLS first) with position embeddings added."""
        b, _, height, width = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)
        return tokens + self.interpolate_pos_encoding(height // self.patch_size, width // self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + h*w, D) output tokens of the last block after the final norm."""
        tokens = self.prepare_tokens(x)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)
