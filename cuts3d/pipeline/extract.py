"""Pseudo-mask extraction over an image folder (paper Sec. 3 / Sec. 4 "Experiment Setup"; spec 2.1, 2.6, 3.5).

Usage::

    from cuts3d.pipeline.extract import ExtractConfig, extract
    extract(ExtractConfig(images="photos/", output="out/"))     # -> out/annotations.json

Per image (the ViT sees a batch of images at once), in a straight line: load (EXIF, any mode -> RGB) -> resize to ``size`` x ``size`` (480, LANCZOS)
-> ViT patch features (last-block keys) -> depth (model, cached, or precomputed files) -> :func:`cuts3d.segment`
-> masks resized to the original image size -> COCO annotations (RLE with str counts, bbox, area, score, the
Spatial Confidence map, its mean as ``confidence_score`` and the 3D ``front`` share) appended to the shard log. Bad input is recorded
with a reason and the job goes on. The merged ``annotations.json`` (see :mod:`cuts3d.pipeline.shards`) sits
beside ``config.yaml`` (the resolved config), ``errors.jsonl`` and ``run_meta.json``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import yaml
from PIL import Image
from tqdm import tqdm

from cuts3d.config_io import check_keys, load_yaml_mapping, parse_overrides
from cuts3d.cuts.config import CutConfig
from cuts3d.cuts.segment import segment
from cuts3d.masks.coco import encode_confidence, mask_annotation
from cuts3d.pipeline.shards import ShardLog, atomic_write_text, merge, parse_shard, read_log, shard_items, shard_log_path


@dataclass
class ExtractConfig:
    """Settings of one extraction job (the ``cut`` section holds :class:`CutConfig`).

    Attributes:
        images: folder (searched recursively) or text file of image paths.
        output: output folder; the merged result is ``output/annotations.json``.
        backbone: feature backbone name (see cuts3d.features.BACKBONES); default DINO ViT-B/8.
        weights: backbone checkpoint file in the official layout, None (official download) or "none" (random).
        feature: "k" (last-block keys, MaskCut's choice), "q", "v" or "tokens".
        depth: depth model name (see cuts3d.depth.DEPTH_MODELS) or ``precomputed:DIR``.
        depth_weights: depth model folder (Hugging Face format), None (hub) or "none" (random).
        size: the square input size of the ViT (MaskCut: 480).
        batch_size: images per ViT forward pass (each finished image is still logged on its own).
        device: torch device for the ViT, the depth model and the cuts.
        shard: ``"i/n"``: this job processes shard i of n.
        cache_depth: keep computed depth maps in ``output/depth_cache`` for later runs.
        max_pixels: images with more pixels are refused before decoding.
        seed: seeds torch before random-weight models are built (reproducible tests).
        depth_overrides: architecture overrides for a random-weight depth model, or ``"tiny"`` for
            :func:`cuts3d.depth.tiny_config` (offline dry runs, tests).
        depth_input_size: the depth network's input height (None: the model's default, 518 for Depth Anything).
        cut: the pseudo-mask engine's settings.
    """

    images: str = ""
    output: str = ""
    backbone: str = "dino_vitb8"
    weights: str | None = None
    feature: str = "k"
    depth: str = "depth_anything_v2_small"
    depth_weights: str | None = None
    size: int = 480
    batch_size: int = 4
    device: str = "cpu"
    shard: str = "0/1"
    cache_depth: bool = True
    max_pixels: int = 100_000_000
    seed: int = 0
    depth_overrides: dict[str, Any] | str = field(default_factory=dict)
    depth_input_size: int | None = None
    cut: CutConfig = field(default_factory=CutConfig)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "cut"}
        d["cut"] = self.cut.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExtractConfig":
        d = dict(d)
        cut = CutConfig.from_dict(d.pop("cut", {}) or {})
        check_keys(cls, d, "extract settings", " and cut.<CutConfig field>")
        cfg = cls(cut=cut, **d)
        if cfg.batch_size < 1 or cfg.size < 1:
            raise ValueError(f"batch_size and size must be >= 1, got {cfg.batch_size} and {cfg.size}")
        return cfg


def resolve_config(base: dict[str, Any], yaml_file: str | Path | None, overrides: Sequence[str]) -> ExtractConfig:
    """Defaults < YAML file < flags (``base``) < ``key=value`` overrides (``cut.tau_knn=0.1`` or ``tau_knn=0.1``)."""
    values = ExtractConfig().to_dict()
    if yaml_file is not None:
        loaded = load_yaml_mapping(yaml_file, "extract settings")
        values["cut"].update(loaded.pop("cut", {}) or {})
        values.update(loaded)
    values.update({k: v for k, v in base.items() if v is not None})
    extract_fields = {f.name for f in dataclasses.fields(ExtractConfig)}
    for key, value in parse_overrides(overrides).items():
        if key.startswith("cut."):
            values["cut"][key[4:]] = value
        elif key in extract_fields:
            values[key] = value
        else:
            values["cut"][key] = value  # CutConfig.from_dict names the valid keys if this is a typo
    values["cut"]["device"] = values["device"]
    return ExtractConfig.from_dict(values)


class Models:
    """The ViT and the depth source of one job, built once (after the image list is known to be non-empty)."""

    def __init__(self, cfg: ExtractConfig):
        from cuts3d.depth import DepthCache, PrecomputedDepth, build_depth_model, tiny_config
        from cuts3d.features import build_backbone

        torch.manual_seed(cfg.seed)
        self.backbone = build_backbone(cfg.backbone, weights=cfg.weights, device=cfg.device, feature=cfg.feature)
        self.precomputed = None
        self.depth_model = None
        if cfg.cut.method == "maskcut":
            pass  # MaskCut uses no depth: build no depth model
        elif cfg.depth.startswith("precomputed:"):
            self.precomputed = PrecomputedDepth(Path(cfg.depth.split(":", 1)[1]))
        else:
            overrides = cfg.depth_overrides
            if overrides == "tiny":  # a tiny random architecture: quick offline dry runs and tests
                overrides = tiny_config(cfg.depth)
            self.depth_model = build_depth_model(
                cfg.depth,
                weights=cfg.depth_weights,
                device=cfg.device,
                config_overrides=overrides or None,
                input_size=cfg.depth_input_size,
            )
        self.cache = None
        if cfg.cache_depth and self.depth_model is not None:
            self.cache = DepthCache.for_model(Path(cfg.output) / "depth_cache", self.depth_model)
        self.depth_name = cfg.depth

    def metadata(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone.name,
            "backbone_weights": self.backbone.weights_id,
            "backbone_weights_sha256": self.backbone.weights_sha256,
            "depth": self.depth_name,
            "depth_weights": getattr(self.depth_model, "weights_id", None),
            "depth_cache_key": getattr(self.cache, "model", None),
            "depth_weights_sha256": self._depth_weights_sha256(),
        }

    def _depth_weights_sha256(self) -> dict[str, str] | None:
        """sha256 of each weights file of a local depth-model folder (None for hub or random weights)."""
        from cuts3d.features import sha256_file

        weights_id = getattr(self.depth_model, "weights_id", None)
        # a local folder is recorded as an absolute path; hub ids and "random" are not paths to hash
        if not weights_id or not Path(weights_id).is_absolute() or not Path(weights_id).is_dir():
            return None
        folder = Path(weights_id)
        files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
        return {p.name: sha256_file(p) for p in files}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def _add(timings: dict[str, float], stage: str, since: float) -> None:
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - since


def process_batch(records: Sequence, cfg: ExtractConfig, models: Models, timings: dict[str, float]) -> list[dict[str, Any]]:
    """Images -> their shard-log records (see cuts3d.pipeline.shards), in the same order.

    The images that load go through the ViT in one batch; depth and cuts run per image. Bad input becomes an
    ``issues`` entry of its record; only programming errors raise.
    """
    from cuts3d.io.images import ImageLoadError, load_image, resize_square

    results: list[dict[str, Any]] = []
    loaded: list[tuple[dict[str, Any], np.ndarray, np.ndarray]] = []
    for record in records:
        result: dict[str, Any] = {"rel": record.rel, "image": None, "annotations": [], "issues": []}
        results.append(result)
        t = time.perf_counter()
        try:
            rgb = load_image(record.path, max_pixels=cfg.max_pixels)
        except ImageLoadError as err:
            result["issues"].append({"stage": "load", "level": "error", "reason": err.reason})
            continue
        result["image"] = {"width": int(rgb.shape[1]), "height": int(rgb.shape[0])}
        loaded.append((result, rgb, resize_square(rgb, cfg.size)))
        _add(timings, "load", t)
    if not loaded:
        return results

    t = time.perf_counter()
    backbone = models.backbone
    batch = torch.stack([backbone.preprocess(small, cfg.size) for _, _, small in loaded]).to(backbone.device)
    features = backbone.extract(batch)
    _add(timings, "vit", t)

    for (result, rgb, small), feats in zip(loaded, features):
        _cut_image(result, rgb, small, feats, cfg, models, timings)
    return results


def _cut_image(result: dict[str, Any], rgb: np.ndarray, small: np.ndarray, features: torch.Tensor,
               cfg: ExtractConfig, models: Models, timings: dict[str, float]) -> None:
    """Depth, cuts and annotations of one loaded image, written into its ``result`` record."""
    from cuts3d.depth import DepthInputError, depth_warnings

    issues = result["issues"]
    depth = None
    if cfg.cut.method == "cuts3d":
        t = time.perf_counter()
        try:
            depth = _depth(result["rel"], rgb, models, cfg.size)
        except DepthInputError as err:
            issues.append({"stage": "depth", "level": "error", "reason": err.reason})
            return
        issues += [{"stage": "depth", "level": "warning", "reason": w} for w in depth_warnings(depth)]
        _add(timings, "depth", t)

    try:
        instances = segment(features, depth, small, cfg.cut, timings=timings)
    except ValueError as err:
        issues.append({"stage": "cuts", "level": "error", "reason": str(err)})
        return

    t = time.perf_counter()
    for inst in instances:
        mask = _resize_mask(inst.mask, rgb.shape[:2])
        if not mask.any():
            continue
        extra: dict[str, Any] = {"iscrowd": 0}
        if inst.confidence is not None:
            extra["confidence"] = encode_confidence(inst.confidence)
            extra["confidence_score"] = float(inst.mean_confidence)
            extra["front"] = float(inst.front)
        result["annotations"].append(mask_annotation(mask, None, inst.score, **extra))
    _add(timings, "write", t)


def _depth(rel: str, rgb: np.ndarray, models: Models, size: int) -> np.ndarray:
    """Depth for the cuts at ``size`` x ``size``: precomputed file, cache, or the model on the original image."""
    if models.precomputed is not None:
        return models.precomputed(rel, rgb.shape[:2])
    if models.cache is not None:
        cached = models.cache.get(rel)
        if cached is not None:
            return cached
    depth = models.depth_model(rgb)
    depth = np.asarray(Image.fromarray(depth.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
    if models.cache is not None:
        models.cache.put(rel, depth)
    return depth


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Back to the original size as CutLER's MaskCut does (spec 2.5).

    CutLER resizes the 0/255 uint8 mask with PIL's default filter for 8-bit images (bicubic) and keeps the
    pixels above half of the resized mask's *maximum* (which is below 255 for masks thinner than the scale
    factor), so the threshold is ``max / 2``, not 127.
    """
    if mask.shape == shape:
        return mask
    img = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.BICUBIC))
    return img > img.max() / 2.0


def run_shard(
    cfg: ExtractConfig, records: list, index: int, count: int, progress: Callable[[int], None] | None = None
) -> tuple[dict[str, float], Models | None]:
    """Process this shard's images not yet in its log (models are built only if there is work).

    Returns the summed per-stage seconds and the models (None when nothing was left to do).
    """
    timings: dict[str, float] = {}
    models = None
    with ShardLog(shard_log_path(Path(cfg.output), index, count)) as log:
        todo = [r for r in shard_items(records, index, count) if r.rel not in log.done]
        if todo:
            models = Models(cfg)
        bar = tqdm(total=len(todo), desc=f"shard {index}/{count}", unit="img", disable=progress is not None)
        for start in range(0, len(todo), cfg.batch_size):
            chunk = todo[start : start + cfg.batch_size]
            for result in process_batch(chunk, cfg, models, timings):
                t = time.perf_counter()
                log.append(result)
                _add(timings, "write", t)
            bar.update(len(chunk))
            if progress is not None:
                progress(len(chunk))
        bar.close()
    return timings, models


def shards_complete(output: Path, records: list, count: int) -> bool:
    """True when every shard log of an n-way split holds all of its images."""
    for i in range(count):
        done = {r["rel"] for r in read_log(shard_log_path(output, i, count))}
        if any(r.rel not in done for r in shard_items(records, i, count)):
            return False
    return True


def write_config(cfg: ExtractConfig) -> None:
    """The resolved config beside the outputs."""
    atomic_write_text(Path(cfg.output) / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))


def write_run_meta(cfg: ExtractConfig, model_meta: dict[str, Any] | None) -> None:
    """Package version, git commit, torch, device and the weights (ids and hashes) of this run."""
    from cuts3d import __version__

    out = Path(cfg.output)
    meta = {
        "cuts3d_version": __version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": cfg.device,
        **(model_meta or {}),
    }
    atomic_write_text(out / "run_meta.json", json.dumps(meta, indent=2))


def extract(cfg: ExtractConfig) -> Path | None:
    """Run this job's shard; merge into ``output/annotations.json`` once all shards are complete.

    Returns the merged file, or None when other shards are still missing.
    """
    from cuts3d.io.images import list_images

    records = list_images(cfg.images)  # an empty source fails here, before any model is loaded
    index, count = parse_shard(cfg.shard)
    out = Path(cfg.output)
    write_config(cfg)
    _, models = run_shard(cfg, records, index, count)
    write_run_meta(cfg, models.metadata() if models is not None else None)
    if not shards_complete(out, records, count):
        print(f"shard {index}/{count} done; run `cuts3d merge {out}` once all {count} shards have finished")
        return None
    merge([out], out, info=_info(cfg))
    return out / "annotations.json"


def _info(cfg: ExtractConfig) -> dict[str, Any]:
    """The JSON's ``info``. ``confidence_floor`` is the c_min the SC maps were clipped at: training's Table 5c
    switch reads it to refuse a lower floor, which the maps cannot provide (cuts3d.data.dataset)."""
    return {"description": "cuts3d pseudo-masks", "method": cfg.cut.method, "backbone": cfg.backbone, "depth": cfg.depth,
            "confidence_floor": cfg.cut.confidence_floor}
