"""Monocular depth models for CutS3D's 3D cues (paper Sec. 3.2; spec 3.1 and 8).

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

import copy
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_DEPTH_MODEL = "depth_anything_v2_small"
DISPARITY_EPS = 0.05

_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]
_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


class WeightsUnavailableError(RuntimeError):
    """Pretrained depth weights cannot be found or loaded; the message says how to get them."""


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError(
            "depth models need the 'transformers' package (>= 5.0): pip install 'transformers>=5' - or pass "
            "precomputed depth maps instead of a depth model"
        ) from None
    return transformers


# --- architecture and preprocessing of each model -------------------------------------------------------


def _depth_anything_v2_small_config() -> dict[str, Any]:
    # The published config of depth-anything/Depth-Anything-V2-Small-hf: a DINOv2 ViT-S/14 whose layers
    # 3, 6, 9, 12 feed the DPT neck (V1 used the last four).
    return {
        "backbone_config": {
            "model_type": "dinov2",
            "image_size": 518,
            "patch_size": 14,
            "hidden_size": 384,
            "num_attention_heads": 6,
            "out_indices": [3, 6, 9, 12],
            "reshape_hidden_states": False,
        },
        "patch_size": 14,
        "reassemble_hidden_size": 384,
        "reassemble_factors": [4, 2, 1, 0.5],
        "neck_hidden_sizes": [48, 96, 192, 384],
        "fusion_hidden_size": 64,
        "head_hidden_size": 32,
        "depth_estimation_type": "relative",
    }


def _zoedepth_nyu_kitti_config() -> dict[str, Any]:
    # Intel/zoedepth-nyu-kitti: BEiT-L/16 384 backbone, one metric-bins head per domain (NYU indoor up to
    # 10 m, KITTI outdoor up to 80 m) and a small patch transformer that picks the domain per image.
    return {
        "backbone_config": {
            "model_type": "beit",
            "image_size": 384,
            "num_hidden_layers": 24,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "use_relative_position_bias": True,
            "reshape_hidden_states": False,
            "out_features": ["stage6", "stage12", "stage18", "stage24"],
        },
        "bin_configurations": [
            {"n_bins": 64, "min_depth": 0.001, "max_depth": 10.0, "name": "nyu"},
            {"n_bins": 64, "min_depth": 0.001, "max_depth": 80.0, "name": "kitti"},
        ],
        "num_patch_transformer_layers": 4,
        "patch_transformer_hidden_size": 128,
        "patch_transformer_intermediate_size": 1024,
        "patch_transformer_num_attention_heads": 4,
    }


def _dpt_processor(**kwargs: Any):
    # preprocessor_config.json of Depth-Anything-V2-Small-hf: keep the aspect ratio, 518 px, multiple of 14.
    t = _transformers()
    settings: dict[str, Any] = {
        "do_resize": True,
        "size": {"height": 518, "width": 518},
        "keep_aspect_ratio": True,
        "ensure_multiple_of": 14,
        "resample": 3,  # bicubic
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": _IMAGENET_MEAN,
        "image_std": _IMAGENET_STD,
        "do_pad": False,
    }
    settings.update(kwargs)
    return t.DPTImageProcessor(**settings)


def _zoedepth_processor(**kwargs: Any):
    # preprocessor_config.json of Intel/zoedepth-nyu-kitti: reflect padding, 384 x 512, multiple of 32.
    t = _transformers()
    settings: dict[str, Any] = {
        "do_pad": True,
        "do_resize": True,
        "size": {"height": 384, "width": 512},
        "keep_aspect_ratio": True,
        "ensure_multiple_of": 32,
        "resample": 2,  # bilinear
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    settings.update(kwargs)
    return t.ZoeDepthImageProcessor(**settings)


@dataclass(frozen=True)
class DepthModelSpec:
    """How to build one depth model.

    Attributes:
        name: key in :data:`DEPTH_MODELS` (the ``--depth`` value).
        hub_id: official Hugging Face repository of the weights.
        model_type: ``config.json``'s ``model_type`` that a weights folder must have.
        output: ``"disparity"`` (relative inverse depth, larger = closer) or ``"metric"`` (metres).
        config_class, model_class, processor_class: ``transformers`` class names.
        default_config: constructor arguments of the config for random initialisation (official architecture).
        default_processor: builds the official image processor without any file (random path, or a weights
            folder without ``preprocessor_config.json``).
        input_aspect: width / height of the processor's target size (used by ``input_size``).
        multiple: the processor's ``ensure_multiple_of``.
        max_batch: largest batch the model supports (ZoeDepth's domain vote needs batch size 1).
    """

    name: str
    hub_id: str
    model_type: str
    output: str
    config_class: str
    model_class: str
    processor_class: str
    default_config: Callable[[], dict[str, Any]]
    default_processor: Callable[..., Any]
    input_aspect: float
    multiple: int
    max_batch: int = 8
    files: tuple[str, ...] = field(default=("config.json", "model.safetensors", "preprocessor_config.json"))


DEPTH_MODELS: dict[str, DepthModelSpec] = {
    "depth_anything_v2_small": DepthModelSpec(
        name="depth_anything_v2_small",
        hub_id="depth-anything/Depth-Anything-V2-Small-hf",
        model_type="depth_anything",
        output="disparity",
        config_class="DepthAnythingConfig",
        model_class="DepthAnythingForDepthEstimation",
        processor_class="DPTImageProcessor",
        default_config=_depth_anything_v2_small_config,
        default_processor=_dpt_processor,
        input_aspect=1.0,
        multiple=14,
    ),
    "zoedepth": DepthModelSpec(
        name="zoedepth",
        hub_id="Intel/zoedepth-nyu-kitti",
        model_type="zoedepth",
        output="metric",
        config_class="ZoeDepthConfig",
        model_class="ZoeDepthForDepthEstimation",
        processor_class="ZoeDepthImageProcessor",
        default_config=_zoedepth_nyu_kitti_config,
        default_processor=_zoedepth_processor,
        input_aspect=512 / 384,
        multiple=32,
        max_batch=1,
    ),
}
"""The depth models by name; :func:`build_depth_model` builds them."""


def tiny_config(name: str) -> dict[str, Any]:
    """``config_overrides`` for a tiny random model of ``name`` (2-4 layers, hidden size 32), for tests.

    Use as ``build_depth_model(name, weights="none", config_overrides=tiny_config(name), input_size=56)``; the
    model has ~0.2 M parameters and runs in milliseconds on a CPU. Its output is meaningless (random weights)
    but has the right shape, dtype and conversions.
    """
    if name == "depth_anything_v2_small":
        return {
            "backbone_config": {
                "hidden_size": 32,
                "num_hidden_layers": 4,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "out_indices": [1, 2, 3, 4],
            },
            "reassemble_hidden_size": 32,
            "neck_hidden_sizes": [8, 16, 24, 32],
            "fusion_hidden_size": 16,
            "head_hidden_size": 8,
        }
    if name == "zoedepth":
        return {
            "backbone_config": {
                "hidden_size": 32,
                "num_hidden_layers": 4,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "out_features": ["stage1", "stage2", "stage3", "stage4"],
            },
            "neck_hidden_sizes": [8, 16, 24, 32],
            "fusion_hidden_size": 16,
            "bottleneck_features": 16,
            "num_relative_features": 8,
            "bin_embedding_dim": 16,
            "num_attractors": [4, 2, 2, 1],
            "bin_configurations": [
                {"n_bins": 8, "min_depth": 0.001, "max_depth": 10.0, "name": "nyu"},
                {"n_bins": 8, "min_depth": 0.001, "max_depth": 80.0, "name": "kitti"},
            ],
            "num_patch_transformer_layers": 4,  # transformers runs exactly 4 (hard-coded loop)
            "patch_transformer_hidden_size": 128,  # transformers hard-codes 128 in the domain classifier
            "patch_transformer_intermediate_size": 32,
            "patch_transformer_num_attention_heads": 2,
        }
    raise ValueError(_unknown(name))


def _unknown(name: str) -> str:
    return f"unknown depth model {name!r}; choose one of: {', '.join(DEPTH_MODELS)}"


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update (nested dicts such as ``backbone_config`` are merged, not replaced)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


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


def _config_errors() -> tuple[type[Exception], ...]:
    # transformers >= 5 validates configs with huggingface_hub's strict dataclasses, whose errors are not
    # ValueErrors.
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return ()
    return (StrictDataclassError,)


def _checkpoint_errors() -> tuple[type[Exception], ...]:
    # A corrupt or truncated model.safetensors raises safetensors' own error type (not an OSError).
    try:
        from safetensors import SafetensorError
    except ImportError:
        return ()
    return (SafetensorError,)


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read the environment too, so that setting it later
    # (tests, notebooks) still prevents any network access.
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    if any(v.strip().lower() in ("1", "true", "yes", "on") for v in flags):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _download_hint(spec: DepthModelSpec) -> str:
    return (
        f"On a machine with internet run `hf download {spec.hub_id} {' '.join(spec.files)} --local-dir DIR` "
        f"(older huggingface_hub: `huggingface-cli download {spec.hub_id} --local-dir DIR`); copy "
        f"DIR here and pass --depth-weights DIR (build_depth_model({spec.name!r}, weights=DIR)). Or pass "
        "precomputed depth maps instead of a depth model."
    )


def _check_weights_dir(spec: DepthModelSpec, folder: Path) -> None:
    config = folder / "config.json"
    if not config.is_file():
        raise WeightsUnavailableError(
            f"depth weights folder {folder} has no config.json, so it is not a Hugging Face model folder. "
            + _download_hint(spec)
        )
    if not any((folder / f).is_file() for f in _WEIGHT_FILES):
        raise WeightsUnavailableError(
            f"depth weights folder {folder} has config.json but no weights ({' or '.join(_WEIGHT_FILES[:2])}); "
            "the download is incomplete. " + _download_hint(spec)
        )
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsUnavailableError(
            f"cannot read {config} ({err}); re-download the weights. " + _download_hint(spec)
        ) from None
    if model_type != spec.model_type:
        others = [s.name for s in DEPTH_MODELS.values() if s.model_type == model_type]
        hint = f"use --depth {others[0]}" if others else "pass the weights of the chosen model"
        raise WeightsUnavailableError(
            f"depth weights folder {folder} holds a {model_type!r} model, but depth model {spec.name!r} needs "
            f"{spec.model_type!r} weights; {hint}."
        )


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


def _local_processor(spec: DepthModelSpec, processor_cls: Any, folder: Path) -> Any:
    # A folder without preprocessor_config.json gets the official preprocessing (it is fixed per model).
    if not (folder / "preprocessor_config.json").is_file():
        return spec.default_processor()
    try:
        return processor_cls.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise WeightsUnavailableError(
            f"cannot read {folder / 'preprocessor_config.json'} ({err}); delete it to use the official "
            "preprocessing, or re-download the weights."
        ) from None


def _load_from_hub(
    spec: DepthModelSpec, model_cls: Any, processor_cls: Any, cache_dir: str | Path | None
) -> tuple[Any, Any]:
    """The official weights: from the local HF cache first (no network), then a download unless offline."""
    cache = str(cache_dir) if cache_dir is not None else None
    errors: list[str] = []
    attempts = [True] if _hub_offline() else [True, False]
    for local_only in attempts:
        try:
            model = model_cls.from_pretrained(spec.hub_id, local_files_only=local_only, cache_dir=cache)
            try:
                processor = processor_cls.from_pretrained(spec.hub_id, local_files_only=local_only, cache_dir=cache)
            except (OSError, ValueError):
                processor = spec.default_processor()
            return model, processor
        except (OSError, ValueError, RuntimeError, *_checkpoint_errors()) as err:
            errors.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
    why = (
        "offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) and they are not in the Hugging Face cache"
        if _hub_offline()
        else f"they are not in the Hugging Face cache and the download failed: {errors[-1]}"
    )
    raise WeightsUnavailableError(
        f"depth model {spec.name!r} needs the pretrained weights {spec.hub_id}, but {why}. " + _download_hint(spec)
    )
