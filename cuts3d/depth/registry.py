"""The depth models CutS3D can use: their Hugging Face ids, architectures and preprocessing (spec 3.1).

:data:`DEPTH_MODELS` maps each ``--depth`` name to a :class:`DepthModelSpec`; :func:`tiny_config` gives a tiny random
architecture for tests. ``transformers`` is imported only when a processor or model is built.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_DEPTH_MODEL = "depth_anything_v2_small"

_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]


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
