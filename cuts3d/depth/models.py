"""Monocular depth models for CutS3D's 3D cues (paper Sec. 3.2; spec 3.1 and 8).

This module runs a model (:class:`DepthModel`: preprocessing, batching, output conversion) and builds one
(:func:`build_depth_model`); the names, architectures and preprocessing of the models are in
:mod:`cuts3d.depth.registry`, finding and loading their weights is :mod:`cuts3d.depth.weights`.

CutS3D lifts every image into a point cloud with a depth map predicted by an off-the-shelf monocular depth
network. Two are available, both through Hugging Face ``transformers`` (imported lazily, so the rest of the
package works without it):

========================== ============================================= ==================================
name                       Hugging Face id                               raw output
========================== ============================================= ==================================
``depth_anything_v2_small`` ``depth-anything/Depth-Anything-V2-Small-hf`` relative inverse depth (disparity)
``zoedepth``               ``Intel/zoedepth-nyu-kitti``                  metric depth in metres
========================== ============================================= ==================================

Every model returns depth with *larger = farther* at the input image's resolution. Depth Anything's
disparity is only known up to scale and shift, so it is converted by :func:`disparity_to_depth`: min-max
normalise the disparity to [eps, 1], then depth = 1 / disparity (range [1, 1/eps]; eps = 0.05 assumes the
farthest pixel is at most 20 times as far as the nearest). Exactly: with d the network's disparity over the
image's finite pixels, n = 0.05 + 0.95 (d - min d) / (max d - min d) and depth = 1 / n. The nearest pixel gets
depth 1; pixels at the smallest disparity (sky, where the network outputs about 0) get 20 whatever their true
distance, and a pixel at a quarter of the nearest disparity gets about 1 / (0.05 + 0.95 / 4) = 3.5. If the
disparity were exact (d = a / Z, sky at 0), depth would be Z / Z_min up to the eps term, so depth *ratios*
between objects survive; that is why the engine's point cloud uses log depth by default
(:mod:`cuts3d.cuts.pointcloud`): a sky at 20 does not squeeze the objects' steps, as per-image min-max
scaling would. The unit does not matter to the engine.

Weights (``build_depth_model(weights=...)``):

* a local folder in Hugging Face format (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``,
  optionally ``preprocessor_config.json``) - loaded without touching the network;
* ``None`` - the official hub id, from the Hugging Face cache or downloaded; offline (``HF_HUB_OFFLINE=1``) or
  unreachable and not cached -> :class:`WeightsUnavailableError` naming the download command and the flag;
* ``"none"`` (or ``"random"``) - random initialisation of the architecture, for tests; combine with
  ``config_overrides=tiny_config(name)`` for a model that builds and runs in well under a second. No
  network access happens on this path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# The registry (names, architectures, preprocessing) and the weights loading live in their own modules; the public
# names stay importable from here, as before the split.
from cuts3d.depth.registry import DEFAULT_DEPTH_MODEL, DEPTH_MODELS, DepthModelSpec, _merge, _transformers, _unknown, tiny_config
from cuts3d.depth.weights import (
    WeightsUnavailableError,
    _check_weights_dir,
    _checkpoint_errors,
    _config_errors,
    _download_hint,
    _load_from_hub,
    _local_processor,
)

__all__ = [
    "DEFAULT_DEPTH_MODEL",
    "DEPTH_MODELS",
    "DISPARITY_EPS",
    "DepthModel",
    "DepthModelSpec",
    "WeightsUnavailableError",
    "build_depth_model",
    "disparity_to_depth",
    "tiny_config",
]

DISPARITY_EPS = 0.05


# --- output conversion ------------------------------------------------------------------------------------


def disparity_to_depth(disparity: np.ndarray, eps: float = DISPARITY_EPS) -> np.ndarray:
    """Relative inverse depth (larger = closer) -> relative depth (larger = farther).

    The disparity's finite values are min-max normalised to [eps, 1] (Depth Anything's disparity has an unknown
    scale and shift, and may touch 0), then inverted: depth = 1 / disparity, in [1, 1 / eps]. The order is
    reversed exactly: the closest pixel gets depth 1, the farthest 1 / eps. A constant disparity gives a
    constant depth of 1; NaN/inf stay NaN.

    Args:
        disparity: (H, W) float, larger = closer.
        eps: lower end of the normalised disparity, 0 < eps < 1.

    Returns:
        (H, W) float32 depth, larger = farther.
    """
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    d = np.asarray(disparity, dtype=np.float64)
    finite = np.isfinite(d)
    out = np.full(d.shape, np.nan, dtype=np.float32)
    if not finite.any():
        return out
    lo, hi = float(d[finite].min()), float(d[finite].max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        out[finite] = 1.0
        return out
    normalised = eps + (1.0 - eps) * (d[finite] - lo) / (hi - lo)
    out[finite] = (1.0 / normalised).astype(np.float32)
    return out


# --- the model ----------------------------------------------------------------------------------------------


class DepthModel:
    """A monocular depth network with its preprocessing and output conversion.

    Attributes:
        name: key in :data:`DEPTH_MODELS`.
        device: torch device string the model runs on.
        weights_id: the hub id, the absolute local folder, or ``"random"``.
        output: ``"disparity"`` or ``"metric"`` (the network's raw output before conversion).
        cache_key: folder name for :class:`cuts3d.depth.DepthCache` - the name, plus a hash of a local weights
            folder or ``-random``, plus the input size when it is not the default, so that caches of different
            models or weights never mix.
        batch_size: images per forward pass in :meth:`predict`.
    """

    def __init__(
        self,
        spec: DepthModelSpec,
        model: torch.nn.Module,
        processor: Any,
        device: str,
        weights_id: str,
        input_size: tuple[int, int] | None = None,
        disparity_eps: float = DISPARITY_EPS,
        batch_size: int = 4,
    ):
        self.spec = spec
        self.name = spec.name
        self.output = spec.output
        self.model = model.eval()
        self.processor = processor
        self.device = device
        self.weights_id = weights_id
        self.input_size = input_size
        self.disparity_eps = disparity_eps
        self.batch_size = max(1, min(batch_size, spec.max_batch))
        key = spec.name
        if weights_id == "random":
            key += "-random"
        elif weights_id != spec.hub_id:
            key += "-" + hashlib.sha1(weights_id.encode("utf-8")).hexdigest()[:8]
        if input_size is not None:
            key += f"-in{input_size[0]}x{input_size[1]}"
        self.cache_key = key

    def __repr__(self) -> str:
        return f"DepthModel(name={self.name!r}, weights_id={self.weights_id!r}, device={self.device!r})"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Depth of one image.

        Args:
            image: (H, W, 3) uint8 RGB.

        Returns:
            (H, W) float32 depth, larger = farther, at the image's resolution (Depth Anything: relative, in
            [1, 1 / disparity_eps]; ZoeDepth: metres).
        """
        return self.predict([image])[0]

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Depth of several images (batched per image size; sizes may differ).

        Args:
            images: (H_i, W_i, 3) uint8 RGB arrays.

        Returns:
            one (H_i, W_i) float32 depth map per image, larger = farther, in input order.
        """
        for i, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                got = f"shape {getattr(image, 'shape', None)} dtype {getattr(image, 'dtype', type(image).__name__)}"
                raise ValueError(f"depth model input {i} must be an (H, W, 3) uint8 RGB array, got {got}")
        results: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape[:2], []).append(i)
        for shape, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for i, depth in zip(chunk, self._forward([images[i] for i in chunk], shape)):
                    results[i] = depth
        return results  # type: ignore[return-value]

    def _forward(self, batch: list[np.ndarray], shape: tuple[int, int]) -> list[np.ndarray]:
        kwargs: dict[str, Any] = {"return_tensors": "pt", "input_data_format": "channels_last"}
        if self.input_size is not None:
            kwargs["size"] = {"height": self.input_size[0], "width": self.input_size[1]}
        # Read-only arrays (e.g. np.asarray of a PIL image) make torch.from_numpy warn; copy those.
        batch = [b if b.flags.writeable else b.copy() for b in batch]
        inputs = self.processor(images=batch, **kwargs)
        pixel_values = inputs["pixel_values"].to(self.device, dtype=next(self.model.parameters()).dtype)
        with torch.inference_mode():
            outputs = self.model(pixel_values=pixel_values)
            if self.output == "metric":
                # ZoeDepth pads the input by reflection; its post-processing crops the padding back off.
                post = self.processor.post_process_depth_estimation(outputs, source_sizes=[shape] * len(batch))
                pred = torch.stack([p["predicted_depth"].reshape(shape) for p in post])
            else:
                # Bilinear (not bicubic) back to (H, W): no overshoot, so the disparity range stays honest.
                pred = F.interpolate(
                    outputs.predicted_depth[:, None].float(), size=shape, mode="bilinear", align_corners=False
                )[:, 0]
        maps = pred.float().cpu().numpy()
        if self.output == "metric":
            # Bicubic resampling can overshoot below the model's minimum depth near sharp edges.
            floor = float(self.model.config.bin_configurations[0].get("min_depth", 1e-3))
            return [np.maximum(m, floor).astype(np.float32) for m in maps]
        return [disparity_to_depth(m, self.disparity_eps) for m in maps]


# --- building ------------------------------------------------------------------------------------------------


def _resolve_device(device: str) -> str:
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"invalid device {device!r} ({err}); use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available here; use device='cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} was requested but MPS is not available here; use device='cpu'")
    return str(dev)


def _input_size(spec: DepthModelSpec, input_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if input_size is None:
        return None
    if isinstance(input_size, int):
        h = input_size
        w = round(h * spec.input_aspect / spec.multiple) * spec.multiple
        input_size = (h, max(w, spec.multiple))
    h, w = (int(v) for v in input_size)
    if h < spec.multiple or w < spec.multiple:
        raise ValueError(f"input_size {input_size} is too small for {spec.name} (minimum {spec.multiple} px per side)")
    return h, w


def build_depth_model(
    name: str = DEFAULT_DEPTH_MODEL,
    weights: str | Path | None = None,
    device: str = "cpu",
    config_overrides: dict[str, Any] | None = None,
    *,
    input_size: int | tuple[int, int] | None = None,
    disparity_eps: float = DISPARITY_EPS,
    batch_size: int = 4,
    cache_dir: str | Path | None = None,
) -> DepthModel:
    """Build a depth model from :data:`DEPTH_MODELS`.

    Args:
        name: ``"depth_anything_v2_small"`` (default) or ``"zoedepth"``.
        weights: a local Hugging Face model folder, ``None`` for the official hub weights (cache or download),
            or ``"none"`` / ``"random"`` for random initialisation (tests; no network access).
        device: torch device, e.g. ``"cpu"`` or ``"cuda:0"``.
        config_overrides: changes to the architecture for random initialisation only, merged recursively into
            the official config (e.g. :func:`tiny_config`).
        input_size: the network's input size instead of the processor's (518 x 518 resp. 384 x 512 target,
            aspect ratio kept): an int is the height (width follows the model's aspect), or (height, width).
            Smaller is faster and coarser.
        disparity_eps: eps of :func:`disparity_to_depth` (Depth Anything only).
        batch_size: images per forward pass in :meth:`DepthModel.predict` (ZoeDepth always uses 1).
        cache_dir: Hugging Face cache folder for ``weights=None`` (default: the HF default, ``HF_HUB_CACHE``).

    Raises:
        ValueError: unknown name, bad device or input size, config_overrides with pretrained weights, or an
            invalid override.
        WeightsUnavailableError: weights missing, offline and not cached, incomplete or of another model.
        ImportError: ``transformers`` is not installed.
    """
    if name not in DEPTH_MODELS:
        raise ValueError(_unknown(name))
    spec = DEPTH_MODELS[name]
    device = _resolve_device(device)
    size = _input_size(spec, input_size)
    t = _transformers()
    config_cls = getattr(t, spec.config_class)
    model_cls = getattr(t, spec.model_class)
    processor_cls = getattr(t, spec.processor_class)

    random_init = isinstance(weights, str) and weights.strip().lower() in ("none", "random")
    if config_overrides and not random_init:
        raise ValueError(
            "config_overrides change the architecture and apply only to random initialisation (weights='none'); "
            "pretrained weights come with their own config.json"
        )

    if random_init:
        kwargs = _merge(spec.default_config(), config_overrides or {})
        try:
            config = config_cls(**kwargs)
            model = model_cls(config)
        except (TypeError, ValueError, KeyError, *_config_errors()) as err:
            raise ValueError(f"invalid config_overrides for depth model {name!r}: {err}") from None
        processor = spec.default_processor()
        weights_id = "random"
    elif weights is None:
        model, processor = _load_from_hub(spec, model_cls, processor_cls, cache_dir)
        weights_id = spec.hub_id
    else:
        folder = Path(weights).expanduser()
        if folder.is_file():
            raise WeightsUnavailableError(
                f"depth weights {folder} is a file; a folder in Hugging Face format is needed (checkpoints of the "
                "original Depth Anything / ZoeDepth repositories, .pth, are not supported). " + _download_hint(spec)
            )
        if not folder.is_dir():
            raise WeightsUnavailableError(f"depth weights folder {folder} does not exist. " + _download_hint(spec))
        _check_weights_dir(spec, folder)
        try:
            model = model_cls.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError, *_checkpoint_errors()) as err:
            raise WeightsUnavailableError(
                f"cannot load depth weights from {folder} ({err}); re-download them. " + _download_hint(spec)
            ) from None
        processor = _local_processor(spec, processor_cls, folder)
        weights_id = str(folder.resolve())

    model = model.to(device)
    return DepthModel(spec, model, processor, device, weights_id, size, disparity_eps, batch_size)
