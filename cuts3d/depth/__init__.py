"""Depth maps for CutS3D's 3D cues (paper Sec. 3.2; spec 3.1 and 8): models, precomputed files and a cache.

Usage::

    from cuts3d.depth import DepthCache, PrecomputedDepth, build_depth_model, depth_warnings

    model = build_depth_model("depth_anything_v2_small", weights="path/to/hf_folder")  # or None: hub / cache
    depth = model(rgb)                          # (H, W) float32, larger = farther
    cache = DepthCache.for_model("out/depth_cache", model)
    cache.put(record.rel, depth)

    depth = PrecomputedDepth("depth_dir")(record.rel, rgb.shape[:2])
    for note in depth_warnings(depth):
        log.warning(note)

``transformers`` is imported only when a model is built.
"""

from cuts3d.depth.cache import DepthCache
from cuts3d.depth.models import (
    DEFAULT_DEPTH_MODEL,
    DEPTH_MODELS,
    DepthModel,
    DepthModelSpec,
    WeightsUnavailableError,
    build_depth_model,
    disparity_to_depth,
    tiny_config,
)
from cuts3d.depth.precomputed import DEPTH_EXTENSIONS, DepthInputError, PrecomputedDepth, depth_warnings

__all__ = [
    "DEFAULT_DEPTH_MODEL",
    "DEPTH_EXTENSIONS",
    "DEPTH_MODELS",
    "DepthCache",
    "DepthInputError",
    "DepthModel",
    "DepthModelSpec",
    "PrecomputedDepth",
    "WeightsUnavailableError",
    "build_depth_model",
    "depth_warnings",
    "disparity_to_depth",
    "tiny_config",
]
