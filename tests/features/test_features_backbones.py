"""DINO / DINOv2 backbones: feature shapes, key extraction, checkpoint loading, hashing, offline errors, preprocessing.

All models use random weights (no downloads); sizes are small to keep the module fast.
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cuts3d.features import (
    BACKBONES,
    FEATURES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    CheckpointError,
    WeightsUnavailableError,
    build_backbone,
    save_official_checkpoint,
)
from cuts3d.features import weights as weights_mod


def _side(patch: int) -> int:
    """A small input side (a 4 x 4 grid) that needs position-embedding interpolation."""
    return 4 * patch


def _random(name: str, seed: int = 0, feature: str = "k") -> Backbone:
    torch.manual_seed(seed)
    return build_backbone(name, weights="none", feature=feature)


@pytest.fixture(scope="module")
def vits16() -> Backbone:
    return _random("dino_vits16")


@pytest.fixture(scope="module")
def vits16_file(tmp_path_factory: pytest.TempPathFactory, vits16: Backbone) -> Path:
    return save_official_checkpoint(vits16, tmp_path_factory.mktemp("ckpt") / "dino_deitsmall16_pretrain.pth")


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_builder_extracts_every_feature_on_the_patch_grid(name: str) -> None:
    backbone = _random(name)
    spec = BACKBONES[name]
    assert (backbone.name, backbone.patch_size, backbone.embed_dim) == (name, spec.patch_size, spec.embed_dim)
    assert backbone.weights_id == "random" and backbone.weights_sha256 is None
    grid = 3  # a 3 x 3 grid: few tokens keep ViT-B cheap, and it differs from the stored grid (interpolation)
    batch = torch.randn(2, 3, grid * spec.patch_size, grid * spec.patch_size)
    out = {}
    for feature in FEATURES:
        out[feature] = Backbone(name, backbone.vit, feature).extract(batch)
        assert out[feature].shape == (2, spec.embed_dim, grid, grid)
        assert out[feature].dtype == torch.float32 and torch.isfinite(out[feature]).all()
    assert not torch.allclose(out["k"], out["q"]) and not torch.allclose(out["k"], out["v"])


def test_official_key_layout_and_position_grid() -> None:
    blocks = {"norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"}
    dino = BACKBONES["dino_vitb8"](init=False).state_dict()
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    expected |= {f"blocks.{i}.{m}.{p}" for i in range(12) for m in blocks for p in ("weight", "bias")}
    assert set(dino) == expected
    assert dino["pos_embed"].shape == (1, 28 * 28 + 1, 768)  # 224 px / 8
    assert dino["blocks.11.attn.qkv.weight"].shape == (3 * 768, 768)
    v2 = BACKBONES["dinov2_vits14"](init=False).state_dict()
    extra = {"mask_token"} | {f"blocks.{i}.ls{j}.gamma" for i in range(12) for j in (1, 2)}
    assert set(v2) == expected | extra
    assert v2["pos_embed"].shape == (1, 37 * 37 + 1, 384) and v2["mask_token"].shape == (1, 384)
    assert BACKBONES["dinov2_vits14"]().blocks[0].attn.num_heads == 6
    assert BACKBONES["dino_vitb8"](init=False).blocks[0].attn.num_heads == 12


def test_init_weights_covers_every_parameter() -> None:
    vit = BACKBONES["dinov2_vits14"](init=False).to_empty(device="cpu")
    with torch.no_grad():
        for p in vit.parameters():
            p.fill_(float("nan"))
    vit.init_weights()
    assert all(torch.isfinite(p).all() for p in vit.parameters())
    assert torch.equal(vit.blocks[0].ls1.gamma, torch.ones(384)) and not vit.mask_token.any()


@pytest.mark.parametrize("name", ["dino_vits16", "dinov2_vits14"])
def test_keys_are_the_last_blocks_qkv_keys_as_cutler_hooks_them(name: str) -> None:
    backbone = _random(name, seed=3)
    vit, d, heads = backbone.vit, backbone.embed_dim, backbone.vit.num_heads
    side = _side(backbone.patch_size)
    grid = side // backbone.patch_size
    x = torch.randn(2, 3, side, side)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        vit.blocks[-1].register_forward_pre_hook(lambda m, args: seen.__setitem__("block_in", args[0])),
        vit.blocks[-1].attn.qkv.register_forward_hook(lambda m, args, out: seen.update(qkv_in=args[0], qkv=out)),
    ]
    try:
        with torch.no_grad():
            final = vit(x)
    finally:
        for h in hooks:
            h.remove()
    last = vit.blocks[-1]
    with torch.no_grad():
        normed = last.norm1(seen["block_in"])
        manual_qkv = F.linear(normed, last.attn.qkv.weight, last.attn.qkv.bias)
    # The hooked Linear really sees the normed tokens entering the last block, and its output is W x + b.
    torch.testing.assert_close(seen["qkv_in"], normed)
    torch.testing.assert_close(seen["qkv"], manual_qkv)
    # CutLER's ViTFeat: reshape to (3, B, heads, N, head_dim), concatenate heads, drop CLS, (B, D, h*w).
    qkv = manual_qkv.reshape(2, grid * grid + 1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    for index, feature in enumerate(("q", "k", "v")):
        ref = qkv[index].transpose(1, 2).reshape(2, grid * grid + 1, d)[:, 1:].transpose(1, 2).reshape(2, d, grid, grid)
        torch.testing.assert_close(Backbone(name, vit, feature).extract(x), ref, rtol=1e-5, atol=1e-5)
    tokens = final[:, 1:].transpose(1, 2).reshape(2, d, grid, grid)
    torch.testing.assert_close(Backbone(name, vit, "tokens").extract(x), tokens, rtol=1e-5, atol=1e-5)


def test_batched_extract_equals_per_image(vits16: Backbone) -> None:
    x = torch.randn(3, 3, 48, 80)  # non-square works too: a 3 x 5 grid
    batched = vits16.extract(x)
    assert batched.shape == (3, 384, 3, 5)
    single = torch.cat([vits16.extract(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_position_embeddings_native_and_interpolated(vits16: Backbone) -> None:
    vit = vits16.vit
    assert vit.interpolate_pos_encoding(14, 14) is vit.pos_embed  # 224 px / 16: the stored grid, untouched
    assert vit.interpolate_pos_encoding(30, 30).shape == (1, 901, 384)  # 480 px / 16
    with torch.no_grad():
        saved = vit.pos_embed.clone()
        vit.pos_embed.fill_(0.5)
        try:
            # Bicubic resampling keeps a constant field constant; the CLS position is never resampled.
            torch.testing.assert_close(vit.interpolate_pos_encoding(5, 7), torch.full((1, 36, 384), 0.5))
        finally:
            vit.pos_embed.copy_(saved)
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        vits16.extract(torch.zeros(1, 3, 50, 64))


def test_checkpoint_round_trip_gives_identical_features(vits16: Backbone, vits16_file: Path) -> None:
    loaded = build_backbone("dino_vits16", weights=vits16_file)
    assert loaded.weights_id == str(vits16_file.resolve())
    assert loaded.weights_sha256 == hashlib.sha256(vits16_file.read_bytes()).hexdigest()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(loaded.extract(x), vits16.extract(x))
    assert not torch.allclose(_random("dino_vits16", seed=1).extract(x), vits16.extract(x))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.vit.training


def test_checkpoint_with_extra_or_missing_key_is_rejected(vits16_file: Path, tmp_path: Path) -> None:
    state = torch.load(vits16_file, weights_only=True)
    extra = tmp_path / "extra.pth"
    torch.save({**state, "head.weight": torch.zeros(3)}, extra)
    with pytest.raises(CheckpointError, match="unexpected keys: head.weight") as info:
        build_backbone("dino_vits16", weights=extra)
    assert str(extra) in str(info.value)
    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if k != "blocks.11.attn.qkv.bias"}, missing)
    with pytest.raises(CheckpointError, match="missing keys: blocks.11.attn.qkv.bias") as info:
        build_backbone("dino_vits16", weights=missing)
    assert str(missing) in str(info.value)


def test_checkpoint_for_another_architecture_is_rejected(vits16_file: Path) -> None:
    with pytest.raises(CheckpointError, match=r"pos_embed \(1, 197, 384\) != \(1, 785, 384\)"):
        build_backbone("dino_vits8", weights=vits16_file)
    with pytest.raises(CheckpointError, match="missing keys: blocks.0.ls1.gamma"):
        build_backbone("dinov2_vits14", weights=vits16_file)


def test_unreadable_or_nested_checkpoints_are_rejected(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        build_backbone("dino_vits16", weights=garbage)
    nested = tmp_path / "full.pth"
    torch.save({"teacher": {"backbone.cls_token": torch.zeros(1)}, "epoch": torch.tensor(3)}, nested)
    with pytest.raises(CheckpointError, match="not a flat state dict.*teacher"):
        build_backbone("dino_vits16", weights=nested)
    with pytest.raises(FileNotFoundError, match="--weights"):
        build_backbone("dino_vits16", weights=tmp_path / "absent.pth")


def test_sha256_is_verified(vits16_file: Path) -> None:
    good = hashlib.sha256(vits16_file.read_bytes()).hexdigest()
    assert build_backbone("dino_vits16", weights=vits16_file, sha256=good.upper()).weights_sha256 == good
    with pytest.raises(CheckpointError, match="sha256 mismatch") as info:
        build_backbone("dino_vits16", weights=vits16_file, sha256="0" * 64)
    assert str(vits16_file) in str(info.value) and good in str(info.value)
    with pytest.raises(ValueError, match="sha256"):
        build_backbone("dino_vits16", weights="none", sha256=good)


def test_offline_download_names_url_file_and_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []

    def offline(url: str, dst: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    url = "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone(weights=None, cache_dir=tmp_path)
    message = str(info.value)
    assert calls == [url] and url in message and "dino_vitbase8_pretrain.pth" in message and "--weights" in message
    assert not list(tmp_path.iterdir())


def test_download_then_cache_reuse_and_known_hash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, vits16: Backbone, vits16_file: Path
) -> None:
    calls: list[str] = []

    def fake_download(url: str, dst: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        shutil.copyfile(vits16_file, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    url = BACKBONES["dino_vits16"].url
    first = build_backbone("dino_vits16", weights=None, cache_dir=tmp_path)
    second = build_backbone("dino_vits16", weights=None, cache_dir=tmp_path)
    assert calls == [url] and (tmp_path / "dino_deitsmall16_pretrain.pth").is_file()
    assert first.weights_id == url and first.weights_sha256 == second.weights_sha256 is not None
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(second.extract(x), vits16.extract(x))
    monkeypatch.setitem(weights_mod.KNOWN_SHA256, "dino_vits16", "f" * 64)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        build_backbone("dino_vits16", weights=None, cache_dir=tmp_path)


def test_preprocess_resizes_with_lanczos_and_normalises(vits16: Backbone) -> None:
    colour = np.array([200, 30, 120], dtype=np.uint8)
    flat = np.broadcast_to(colour, (37, 53, 3)).copy()
    out = vits16.preprocess(flat)
    assert out.shape == (3, 480, 480) and out.dtype == torch.float32
    expected = (colour / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float32)[:, None, None].expand(3, 480, 480))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(image).resize((96, 96), Image.Resampling.LANCZOS), np.float32) / 255.0
    ref = (ref - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    torch.testing.assert_close(vits16.preprocess(image, size=100), torch.from_numpy(ref.transpose(2, 0, 1)))
    with pytest.raises(ValueError, match="uint8"):
        vits16.preprocess(image.astype(np.float32))


def test_preprocess_snaps_size_to_the_patch_grid() -> None:
    v2 = Backbone("dinov2_vits14", BACKBONES["dinov2_vits14"](init=False), "k")
    assert v2.preprocess(np.zeros((20, 20, 3), np.uint8)).shape == (3, 476, 476)  # round(480 / 14) = 34 patches
    assert v2.preprocess(np.zeros((20, 20, 3), np.uint8), size=56).shape == (3, 56, 56)


def test_bad_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="dino_vitb8"):
        build_backbone("dino_vitl16", weights="none")
    with pytest.raises(ValueError, match="tokens"):
        build_backbone("dino_vits16", weights="none", feature="kqv")
