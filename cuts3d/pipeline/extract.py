"""Pseudo-mask extraction over an image folder (paper Sec. 3 / Sec. 4 "Experiment Setup"; spec 2.1, 2.6, 3.5).

Usage::

    from cuts3d.pipeline.extract import ExtractConfig, extract
    extract(ExtractConfig(images="photos/", output="out/"))     # -> out/annotations.json

Per image (the ViT sees a batch of images at once), in a straight line: load (EXIF, any mode -> RGB) -> resize to ``size`` x ``size`` (480, LANCZOS)
-> ViT patch features (last-block keys) -> depth (model, cached, or precomputed files) -> :func:`cuts3d.segment`
-> masks resized to the original image size -> COCO annotations (RLE with str counts, bbox, area, score, the
Spatial Confidence map, its mean as ``confidence_score`` and the 3D ``front`` share) appended to the shard log. Bad input is recorded
with a reason and the job goes on. With ``cut_workers=K`` the cut stage (cuts, CRF, encoding) of each image runs in
one of K worker processes (:mod:`cuts3d.pipeline.cut_workers`) while this process goes on with the model stage
(load, ViT, depth) of the next images. The merged ``annotations.json`` (see :mod:`cuts3d.pipeline.shards`) sits
beside ``config.yaml`` (the resolved config), ``fingerprint.json`` (the settings that change results, checked
by a rerun: :mod:`cuts3d.pipeline.fingerprint`), ``errors.jsonl`` and ``run_meta.json``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import yaml
from PIL import Image
from tqdm import tqdm

from cuts3d.config_io import check_keys, coerce_fields, load_yaml_mapping, parse_overrides
from cuts3d.cuts.config import CutConfig
from cuts3d.cuts.segment import segment
from cuts3d.masks.coco import encode_confidence, mask_annotation
from cuts3d.pipeline.shards import (
    MergeResult,
    ShardLog,
    atomic_write_text,
    display_name,
    is_failed,
    latest_records,
    logged_status,
    merge,
    parse_shard,
    run_info,
    shard_items,
    shard_log_path,
    write_inputs,
)


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
        cache_depth: keep computed depth maps for later runs (in ``depth_cache``, default
            ``output/depth_cache``). Results are the same either way: fresh maps are cut exactly as the cache
            stores them (:func:`cuts3d.depth.cache.round_trip`; float32, exact).
        depth_cache: depth-cache folder to use instead of ``output/depth_cache``; output folders with other cut
            settings can share one, as maps are filed under a hash of every depth setting
            (:func:`cuts3d.pipeline.fingerprint.depth_cache_key`).
        max_pixels: images with more pixels are refused before decoding.
        seed: seeds torch before random-weight models are built (reproducible tests).
        depth_overrides: architecture overrides for a random-weight depth model, or ``"tiny"`` for
            :func:`cuts3d.depth.tiny_config` (offline dry runs, tests).
        depth_input_size: the depth network's input height (None: the model's default, 518 for Depth Anything).
        cut_workers: processes for the cut stage (:func:`cuts3d.segment` with the CRF, then the masks' encoding).
            0 (default): each image is cut in this process right after its depth, one image after another.
            K >= 1: K single-threaded worker processes (``spawn``ed; :mod:`cuts3d.pipeline.cut_workers`) cut
            while this process runs the model stage (load, ViT, depth) of the next images; at most
            ``2 * K`` images are in flight (one being cut and one queued per worker; bounds the memory) and each
            record is logged as soon as its image is done, in completion order (the merge sorts by name, so
            ``annotations.json`` is byte for byte the one of ``cut_workers=0``). A worker that dies fails the
            images in flight (stage ``cuts``; a rerun retries them) and is replaced. With ``--engine ray``
            the cut stage runs on K Ray actors per shard (``num_cpus=1``), ``2 * K`` in flight. Workers cut on
            the CPU, where ``eigensolver=auto`` is Lanczos (on a GPU the inline cuts use torch's eigh there, so
            on a GPU machine 0 and K >= 1 are different settings and the fingerprint tells them apart; on a
            CPU a rerun with another value resumes).
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
    depth_cache: str | None = None
    max_pixels: int = 100_000_000
    seed: int = 0
    depth_overrides: dict[str, Any] | str = field(default_factory=dict)
    depth_input_size: int | None = None
    cut_workers: int = 0
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
        d = coerce_fields(cls, d, "extract settings")  # size=abc is a one-line error here, not a crash later
        cfg = cls(cut=cut, **d)
        if cfg.batch_size < 1 or cfg.size < 1:
            raise ValueError(f"batch_size and size must be >= 1, got {cfg.batch_size} and {cfg.size}")
        if cfg.cut_workers < 0:
            raise ValueError(f"cut_workers must be >= 0 (0: cut in this process), got {cfg.cut_workers}")
        return cfg


def resolve_config(base: dict[str, Any], yaml_file: str | Path | None, overrides: Sequence[str]) -> ExtractConfig:
    """Defaults < YAML file < flags (``base``) < ``key=value`` overrides (``cut.tau_knn=0.1`` or ``tau_knn=0.1``)."""
    values = ExtractConfig().to_dict()
    if yaml_file is not None:
        loaded = load_yaml_mapping(yaml_file, "extract settings")
        cut = loaded.pop("cut", {}) or {}
        if not isinstance(cut, dict):
            raise ValueError(f"{yaml_file}: 'cut' must be a mapping of CutConfig fields, got {type(cut).__name__}")
        values["cut"].update(cut)
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
        from cuts3d.pipeline.fingerprint import depth_cache_key

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
            # Random depth weights must depend on the seed alone (they are part of the depth cache key), not
            # on how much randomness the backbone above happened to draw.
            torch.manual_seed(cfg.seed)
            self.depth_model = build_depth_model(
                cfg.depth,
                weights=cfg.depth_weights,
                device=cfg.device,
                config_overrides=overrides or None,
                input_size=cfg.depth_input_size,
            )
        self.cache = None
        if cfg.cache_depth and self.depth_model is not None:
            self.cache = DepthCache(depth_cache_root(cfg), depth_cache_key(cfg))
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


def _issue(stage: str, err: BaseException, image: dict[str, int] | None = None) -> dict[str, Any]:
    """The error record of one image that failed at ``stage``.

    Expected bad input (:class:`ImageLoadError`, :class:`DepthInputError`) carries its own ``reason``; any other
    exception is recorded with its type, message and the code line that raised it, plus a hint for images of an
    extreme aspect ratio (the usual cause of failures inside a depth model's preprocessing).
    """
    from cuts3d.depth import DepthInputError
    from cuts3d.io.images import ImageLoadError

    expected = isinstance(err, (ImageLoadError, DepthInputError))
    if expected:
        reason = err.reason
    else:
        reason = f"{type(err).__name__}: {err}"
        if image is not None:
            w, h = image["width"], image["height"]
            if max(w, h) >= 20 * min(w, h):
                reason += f" (the image is {w}x{h}, an extreme aspect ratio; crop or pad it to a less extreme shape)"
        reason += "; a rerun retries this image"
    issue: dict[str, Any] = {"stage": stage, "level": "error", "reason": reason}
    frames = traceback.extract_tb(err.__traceback__)
    if frames and not expected:
        issue["where"] = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}"
    if isinstance(err, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()  # let the next image start from a clean allocator
    return issue


def _fail(result: dict[str, Any], stage: str, err: BaseException) -> dict[str, Any]:
    """Mark ``result`` as failed at ``stage`` (no masks) and return it."""
    result["annotations"] = []
    result["issues"].append(_issue(stage, err, result.get("image")))
    return result


def _features(loaded: list[tuple[dict[str, Any], np.ndarray, np.ndarray]], cfg: ExtractConfig, models: Models,
              timings: dict[str, float]) -> list[torch.Tensor | Exception]:
    """ViT features of the loaded images: one batched pass; if it fails, one pass per image, so that only the
    image that breaks it fails. Each entry is that image's (C, h, w) features or the exception it raised."""
    backbone = models.backbone
    t = time.perf_counter()
    try:
        batch = torch.stack([backbone.preprocess(small, cfg.size) for _, _, small in loaded]).to(backbone.device)
        return list(backbone.extract(batch))
    except Exception as err:
        if len(loaded) == 1:
            return [err]
    finally:
        _add(timings, "vit", t)
    out: list[torch.Tensor | Exception] = []
    for _, _, small in loaded:
        t = time.perf_counter()
        try:
            out.append(backbone.extract(backbone.preprocess(small, cfg.size)[None].to(backbone.device))[0])
        except Exception as err:
            out.append(err)
        _add(timings, "vit", t)
    return out


@dataclass
class CutJob:
    """The cut stage of one image, as handed to a cut worker (:mod:`cuts3d.pipeline.cut_workers`): picklable,
    on the CPU, without the original image (only its size).

    Attributes:
        result: the image's record so far (``rel``, ``image``, no annotations, the issues so far).
        features: (C, h, w) float32 ViT features.
        depth: the depth the cuts use (see :func:`_depth`), None for MaskCut.
        small: the (size, size, 3) uint8 RGB the ViT saw (the CRF's image).
        shape: (H, W) of the original image (the masks are resized to it).
        cut: the cut settings (see :func:`worker_cut_config`).
    """

    result: dict[str, Any]
    features: np.ndarray
    depth: np.ndarray | None
    small: np.ndarray
    shape: tuple[int, int]
    cut: CutConfig


def worker_cut_config(cut: CutConfig) -> CutConfig:
    """``cut`` for a cut worker: on the CPU (workers hold no GPU), with the solver ``auto`` gives there pinned
    (:func:`cuts3d.pipeline.fingerprint.result_settings` records that one when ``cut_workers`` >= 1)."""
    from cuts3d.cuts.ncut import resolve_solver

    return dataclasses.replace(cut, device="cpu", eigensolver=resolve_solver(cut.eigensolver, "cpu", cut.method))


def process_batch(records: Sequence, cfg: ExtractConfig, models: Models | Callable[[], Models],
                  timings: dict[str, float], defer_cuts: bool = False) -> Iterator[dict[str, Any] | CutJob]:
    """Images -> their shard-log records (see cuts3d.pipeline.shards), each yielded as soon as it is final.

    Images that fail to load are yielded first; the others go through the ViT in one batch, then depth and
    cuts run per image and each record is yielded when its image is done, so the caller can log it at once
    (a kill loses at most the image in flight). Any exception while processing one image becomes an
    error-level ``issues`` entry of its record (stage: load, features, depth, cuts or encode) and the other
    images go on; KeyboardInterrupt and SystemExit still stop the job.

    Args:
        records: :class:`cuts3d.io.ImageRecord` of this batch.
        models: the built models, or a zero-argument function building them on first need (so a batch whose
            images all fail to load builds no model).
        timings: per-stage seconds, added to.
        defer_cuts: stop each image after its depth (the model stage): yield a :class:`CutJob` for the
            caller to cut (:func:`run_cut_job`, in a worker) instead of cutting it here. Records of images that
            failed before the cuts are still yielded as records.
    """
    from cuts3d.io.images import load_image, resize_square

    loaded: list[tuple[dict[str, Any], np.ndarray, np.ndarray]] = []
    for record in records:
        result: dict[str, Any] = {"rel": record.rel, "image": None, "annotations": [], "issues": []}
        t = time.perf_counter()
        try:
            rgb = load_image(record.path, max_pixels=cfg.max_pixels)
            result["image"] = {"width": int(rgb.shape[1]), "height": int(rgb.shape[0])}
            small = resize_square(rgb, cfg.size)
        except Exception as err:  # ImageLoadError (a bad file) or any decoder failure: it costs only this image
            yield _fail(result, "load", err)
            continue
        finally:
            _add(timings, "load", t)
        loaded.append((result, rgb, small))
    if not loaded:
        return
    if not isinstance(models, Models):
        models = models()
    cut = worker_cut_config(cfg.cut) if defer_cuts else cfg.cut
    for (result, rgb, small), feats in zip(loaded, _features(loaded, cfg, models, timings)):
        if isinstance(feats, Exception):
            yield _fail(result, "features", feats)
            continue
        if not defer_cuts:
            _cut_image(result, rgb, small, feats, cfg, models, timings)
            yield result
            continue
        ok, depth = _image_depth(result, rgb, cfg, models, timings)
        if not ok:
            yield result
            continue
        features = feats.detach().to(device="cpu", dtype=torch.float32).numpy().copy()  # not a view of the batch
        yield CutJob(result, features, depth, small, (int(rgb.shape[0]), int(rgb.shape[1])), cut)


def _cut_image(result: dict[str, Any], rgb: np.ndarray, small: np.ndarray, features: torch.Tensor,
               cfg: ExtractConfig, models: Models, timings: dict[str, float]) -> None:
    """Depth, cuts and annotations of one loaded image, written into its ``result`` record (``cut_workers=0``).

    A failure at any stage leaves the record with no annotations and one error issue naming the stage.
    """
    ok, depth = _image_depth(result, rgb, cfg, models, timings)
    if ok:
        cut_and_encode(result, features, depth, small, rgb.shape[:2], cfg.cut, timings)


def _image_depth(result: dict[str, Any], rgb: np.ndarray, cfg: ExtractConfig, models: Models,
                 timings: dict[str, float]) -> tuple[bool, np.ndarray | None]:
    """(True, the depth the cuts use: None for MaskCut), or (False, None) with ``result`` failed at stage depth.

    Depth warnings (constant map, missing values) are added to ``result``'s issues.
    """
    from cuts3d.depth import depth_warnings

    if cfg.cut.method != "cuts3d":
        return True, None
    t = time.perf_counter()
    try:
        depth = _depth(result["rel"], rgb, models, cfg.size)
        result["issues"] += [{"stage": "depth", "level": "warning", "reason": w} for w in depth_warnings(depth)]
        return True, depth
    except Exception as err:  # DepthInputError (bad depth file) or a model failing on this image
        _fail(result, "depth", err)
        return False, None
    finally:
        _add(timings, "depth", t)


def cut_and_encode(result: dict[str, Any], features: np.ndarray | torch.Tensor, depth: np.ndarray | None,
                   small: np.ndarray, shape: tuple[int, int], cut: CutConfig, timings: dict[str, float]) -> None:
    """The cut stage of one image (the same code in this process and in a cut worker): :func:`cuts3d.segment`
    (cuts and CRF), then each mask resized to the original ``shape`` and encoded into ``result["annotations"]``.

    A failure leaves the record with no annotations and one error issue (stage ``cuts`` or ``encode``).
    Seconds are added to ``timings`` under ``cuts``, ``crf`` and ``write``.
    """
    try:
        instances = segment(features, depth, small, cut, timings=timings)
    except Exception as err:
        _fail(result, "cuts", err)
        return

    t = time.perf_counter()
    try:
        for inst in instances:
            mask = _resize_mask(inst.mask, shape)
            if not mask.any():
                continue
            extra: dict[str, Any] = {"iscrowd": 0}
            if inst.confidence is not None:
                extra["confidence"] = encode_confidence(inst.confidence)
                extra["confidence_score"] = float(inst.mean_confidence)
                extra["front"] = float(inst.front)
            result["annotations"].append(mask_annotation(mask, None, inst.score, **extra))
    except Exception as err:
        _fail(result, "encode", err)
    finally:
        _add(timings, "write", t)


def run_cut_job(job: CutJob) -> tuple[dict[str, Any], dict[str, float]]:
    """A cut worker's job (process pool or Ray actor): the finished record and its seconds per stage."""
    from cuts3d.pipeline.cut_workers import fault_hook

    fault_hook(job.result["rel"])
    timings: dict[str, float] = {}
    # one thread: the worker process was limited when it started (cut_workers.limit_threads)
    cut_and_encode(job.result, job.features, job.depth, job.small, job.shape, job.cut, timings)
    return job.result, timings


def _depth(rel: str, rgb: np.ndarray, models: Models, size: int) -> np.ndarray:
    """Depth for the cuts at ``size`` x ``size``: precomputed file, cache, or the model on the original image.

    Returns:
        (H, W) float32 depth, larger = farther: the precomputed file's map at the image's size, else a
        (size, size) map that is bit-identical whether it was just computed or read from the cache.
    """
    from cuts3d.depth.cache import round_trip

    if models.precomputed is not None:
        return models.precomputed(rel, rgb.shape[:2])
    if models.cache is not None:
        cached = models.cache.get(rel, shape=(size, size))
        if cached is not None:
            return cached
    depth = models.depth_model(rgb)
    depth = np.asarray(Image.fromarray(depth.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
    # Cut on exactly what the cache returns for this map, cache or not, so a resumed run or a run that finds
    # the map cached gives the masks of a fresh run (a no-op for float32 storage; float16 would round the map).
    depth = models.cache.round_trip(depth) if models.cache is not None else round_trip(depth)
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
    cfg: ExtractConfig, records: list, index: int, count: int, progress: Callable[[int], None] | None = None,
    cut_executor: Callable[[], Any] | None = None,
) -> tuple[dict[str, float], Models | None]:
    """Process this shard's images that have no successful record in its log yet.

    Holds the shard's lock for the whole run (a second writer gets :class:`ShardLockedError`), records the
    shard's input for :func:`cuts3d.pipeline.shards.merge`, retries the images whose latest record is a failure
    and appends each image's record as soon as that image is done. Models are built only when an image loads.

    With ``cfg.cut_workers`` >= 1 this process runs only the model stage (load, ViT, depth) and hands each
    image's cut stage to a cut executor (:mod:`cuts3d.pipeline.cut_workers`): while the executor holds
    ``max_in_flight`` images, it waits for the first one to finish and logs it; records are logged in
    completion order. On any exit (an error, KeyboardInterrupt) the executor is shut down and its queued
    images are cancelled (they have no record yet: a rerun does them).

    Args:
        progress: called with 1 per logged record (replaces the progress bar).
        cut_executor: builds the cut executor (used when ``cfg.cut_workers`` >= 1); default a
            :class:`cuts3d.pipeline.cut_workers.ProcessCutExecutor` of ``cfg.cut_workers`` processes (the Ray
            engine passes :class:`cuts3d.pipeline.cut_workers.RayCutExecutor`, K Ray actors).

    Returns:
        the summed per-stage seconds (the workers' included) and the models (None when no image needed them).
    """
    timings: dict[str, float] = {}
    built: list[Models] = []

    def models() -> Models:
        if not built:
            built.append(Models(cfg))
        return built[0]

    if cfg.cut_workers >= 1 and cut_executor is None:
        from cuts3d.pipeline.cut_workers import ProcessCutExecutor

        cut_executor = lambda: ProcessCutExecutor(cfg.cut_workers)  # noqa: E731
    log_path = shard_log_path(Path(cfg.output), index, count)
    with ShardLog(log_path) as log:
        mine = shard_items(records, index, count)
        write_inputs(log_path, f"{index}/{count}", [r.rel for r in mine])
        todo = [r for r in mine if r.rel not in log.done]  # new images and earlier failures
        bar = tqdm(total=len(todo), desc=f"shard {index}/{count}", unit="img", disable=progress is not None)
        failed = 0

        def finished(result: dict[str, Any], stage_timings: dict[str, float] | None = None) -> None:
            nonlocal failed
            for stage, seconds in (stage_timings or {}).items():  # a worker's cuts, crf and write
                timings[stage] = timings.get(stage, 0.0) + seconds
            t = time.perf_counter()
            log.append(result)  # at once: a kill loses at most the images in flight
            _add(timings, "write", t)
            if is_failed(result):
                failed += 1
                bar.set_postfix(failed=failed)
            bar.update(1)
            if progress is not None:
                progress(1)

        executor = cut_executor() if cut_executor is not None and cfg.cut_workers >= 1 else None
        try:
            for start in range(0, len(todo), cfg.batch_size):
                batch = todo[start : start + cfg.batch_size]
                for item in process_batch(batch, cfg, models, timings, defer_cuts=executor is not None):
                    if not isinstance(item, CutJob):
                        finished(item)
                        continue
                    executor.submit(item)
                    while executor.in_flight >= executor.max_in_flight:  # the bound: wait for the first done
                        for result, stage_timings in executor.wait_first():
                            finished(result, stage_timings)
            while executor is not None and executor.in_flight:
                for result, stage_timings in executor.wait_first():
                    finished(result, stage_timings)
        except BaseException:
            if executor is not None:
                executor.close(abort=True)
            raise
        if executor is not None:
            executor.close()
        bar.close()
    return timings, (built[0] if built else None)


def shards_complete(output: Path, records: list, count: int) -> bool:
    """True when every shard log of an n-way split holds a record (success or failure) of all of its images.

    Reads only the names of each log's records (:func:`logged_status`), not their masks.
    """
    for i in range(count):
        done = logged_status(shard_log_path(output, i, count))
        if any(r.rel not in done for r in shard_items(records, i, count)):
            return False
    return True


def _skipped_text(skipped: dict[str, list[str]]) -> str:
    """``3 inputs skipped (2 unknown extension .txt, 1 dot-file)``; folders named like images are only noted."""
    real = {k: v for k, v in skipped.items() if not k.startswith("folder named")}
    # display_name: an extension with undecodable bytes must not break print()
    parts = [f"{len(v)} {display_name(k)}" for k, v in sorted(real.items(), key=lambda kv: -len(kv[1]))]
    text = f"{sum(len(v) for v in real.values())} inputs skipped"
    text += f" ({', '.join(parts)})" if parts else ""
    folders = skipped.get("folder named like an image (searched as a folder)", [])
    if folders:
        text += f"; {len(folders)} folder(s) named like an image searched as folders ({display_name(folders[0])}"
        text += ", ...)" if len(folders) > 1 else ")"
    return text


def summary_line(out: Path, skipped: dict[str, list[str]], merged: MergeResult | None = None,
                 shard: tuple[int, int] | None = None, records: list | None = None) -> str:
    """The end-of-run line: images done, failed (and where the reasons are), inputs skipped, masks written.

    Args:
        out: the output folder.
        skipped: ``ImageListing.skipped`` of the input.
        merged: the merge's result (the whole job), or None for one shard of an unfinished job.
        shard: (i, n) of that shard; ``records``: the input's images (to pick the shard's).
    """
    if merged is not None:
        # The counts, not merged.coco: reading the whole JSON back would undo the streaming merge.
        done, failed = merged.num_images, len(merged.failed)
        masks, where = merged.num_annotations, out / "errors.jsonl"
        written = f"{masks} masks written to {out / 'annotations.json'}"
        scope = "summary"
    else:
        if shard is None or records is None:
            raise ValueError("summary_line needs either merged or both shard and records")
        log = shard_log_path(out, *shard)
        latest = latest_records(log)
        mine = [latest[r.rel] for r in shard_items(records, *shard) if r.rel in latest]
        failed = sum(is_failed(r) for r in mine)
        done, masks = len(mine) - failed, sum(len(r["annotations"]) for r in mine)
        where = f"{log}, in {out / 'errors.jsonl'} after the merge"
        written = f"{masks} masks in the shard log"
        scope = f"shard {shard[0]}/{shard[1]} summary"
    return f"{scope}: {done} images done, {failed} failed (reasons in {where}), {_skipped_text(skipped)}, {written}"


def write_config(cfg: ExtractConfig) -> None:
    """The resolved config beside the outputs (after :func:`prepare_output` has checked the folder's fingerprint)."""
    atomic_write_text(Path(cfg.output) / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))


def depth_cache_root(cfg: ExtractConfig) -> Path:
    """The depth cache folder: ``cfg.depth_cache``, or ``output/depth_cache``."""
    return Path(cfg.depth_cache).expanduser() if cfg.depth_cache else Path(cfg.output) / "depth_cache"


def prepare_output(cfg: ExtractConfig, overwrite: bool = False) -> Any:
    """Claim ``cfg.output`` for this run's settings, clean what killed runs left, write ``config.yaml``.

    Checks the folder's ``fingerprint.json`` (:func:`cuts3d.pipeline.fingerprint.claim_output`): the same
    settings resume, other settings are refused unless ``overwrite``. Then deletes stale temporary files
    (:mod:`cuts3d.io.atomic`) beside the outputs, in ``shards/`` and in the depth cache's temporary folder.

    Returns:
        The :class:`cuts3d.pipeline.fingerprint.OutputClaim`; hold it (``with``) while the run writes.

    Raises:
        FingerprintMismatchError: the folder holds results of other settings (one line: keys and fix).
        FileNotFoundError: a weights file or folder in ``cfg`` does not exist.
    """
    from cuts3d.depth.cache import DepthCache
    from cuts3d.io.atomic import clean_stale_temps
    from cuts3d.pipeline.fingerprint import claim_output, depth_cache_key, result_settings

    out = Path(cfg.output)
    key = depth_cache_key(cfg)
    claim = claim_output(out, result_settings(cfg), overwrite=overwrite, depth_caches=(out / "depth_cache",))
    try:
        stale = clean_stale_temps(out) + clean_stale_temps(out / "shards")
        if key is not None and cfg.cache_depth:
            stale += DepthCache(depth_cache_root(cfg), key).clean_stale_temps()
        if stale:
            print(f"cuts3d extract: removed {len(stale)} temporary file(s) left by an interrupted run "
                  f"(e.g. {stale[0]})", file=sys.stderr)
        if claim.action == "overwritten":
            print(f"cuts3d extract: --overwrite: deleted the results of other settings in {out}", file=sys.stderr)
        write_config(cfg)
    except BaseException:
        claim.close()
        raise
    return claim


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


def extract(cfg: ExtractConfig, overwrite: bool = False) -> Path | None:
    """Run this job's shard; merge into ``output/annotations.json`` once all shards are complete.

    Args:
        cfg: the job.
        overwrite: if ``output`` holds results of other settings, delete them and start over (see
            :func:`prepare_output`); results of the same settings are always resumed.

    Returns the merged file, or None when other shards are still missing.
    """
    from cuts3d.io.images import scan_images

    listing = scan_images(cfg.images)  # an empty source fails here, before any model is loaded
    records = listing.records
    index, count = parse_shard(cfg.shard)
    out = Path(cfg.output)
    with prepare_output(cfg, overwrite):
        _, models = run_shard(cfg, records, index, count)
        write_run_meta(cfg, models.metadata() if models is not None else None)
        if not shards_complete(out, records, count):
            print(summary_line(out, listing.skipped, shard=(index, count), records=records))
            print(f"shard {index}/{count} done; run `cuts3d merge {out}` once all {count} shards have finished")
            return None
        finish_merge(cfg, listing)
    return out / "annotations.json"


def finish_merge(cfg: ExtractConfig, listing: Any) -> MergeResult:
    """Merge ``cfg.output``'s shard logs for the input ``listing`` (an ``ImageListing``), dropping images that
    are no longer in it; prints the warnings (stderr) and the summary line."""
    out = Path(cfg.output)
    result = merge([out], out, info=_info(cfg), expected=[r.rel for r in listing.records])
    for line in result.warnings:
        print(f"cuts3d extract: warning: {line}", file=sys.stderr)
    print(summary_line(out, listing.skipped, merged=result))
    return result


def _info(cfg: ExtractConfig) -> dict[str, Any]:
    """The JSON's ``info``. ``confidence_floor`` is the c_min the SC maps were clipped at: training's Table 5c
    switch reads it to refuse a lower floor, which the maps cannot provide (cuts3d.data.dataset)."""
    return run_info(cfg.to_dict())
