"""On-disk cache of predicted depth maps (paper Sec. 3.2; spec 3.1 and 8).

Depth prediction is the slowest per-image step after the ViT, and extraction jobs are re-run (other
thresholds, crashed shards), so predicted maps are cached as ``ROOT/<model>/<rel>.npy``: one folder per
depth model (and weights), so that caches of two models never mix; ``<rel>`` is the image's relative path
with ``.npy`` appended (``sub/a.jpg`` -> ``sub/a.jpg.npy``, so ``a.jpg`` and ``a.png`` do not collide).

Writes are atomic: the array goes to a temporary file in the same folder, is flushed to disk, and is then
renamed over the target with ``os.replace``, so a job killed mid-write never leaves a truncated cache file
that a later run would read. A cache file that cannot be read anyway (e.g. a disk error) counts as a miss.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np

log = logging.getLogger(__name__)

_FLOAT16_MAX = float(np.finfo(np.float16).max)


def _safe_folder_name(model: str) -> str:
    # Model keys become one folder name: no separators, no "..".
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", model).strip(".")
    if not name:
        raise ValueError(f"depth cache model name {model!r} has no usable characters")
    return name


class DepthCache:
    """Depth maps of one depth model, stored under ``root/<model>/``.

    Args:
        root: cache folder (created on the first write).
        model: the depth model's key, e.g. ``DepthModel.cache_key`` or the ``--depth`` name; use
            :meth:`for_model` to take it from a :class:`cuts3d.depth.DepthModel`.
        dtype: ``"float16"`` (default; half the disk space, ~3 significant digits, far more than the engine
            resolves after pooling to the patch grid) or ``"float32"``. Maps with finite values beyond
            float16's range (65504) are stored as float32 automatically.
    """

    def __init__(self, root: str | Path, model: str, dtype: str = "float16"):
        if dtype not in ("float16", "float32"):
            raise ValueError(f"DepthCache dtype must be 'float16' or 'float32', got {dtype!r}")
        self.root = Path(root).expanduser()
        self.model = model
        self.dtype = np.dtype(dtype)
        self.folder = self.root / _safe_folder_name(model)

    @classmethod
    def for_model(cls, root: str | Path, depth_model, dtype: str = "float16") -> DepthCache:
        """The cache of a built :class:`cuts3d.depth.DepthModel` (keyed by its ``cache_key``)."""
        return cls(root, depth_model.cache_key, dtype)

    def path(self, rel: str) -> Path:
        """Cache file of image ``rel`` (relative POSIX path, as in ``ImageRecord.rel``)."""
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise ValueError(f"image path {rel!r} must be relative to the image folder and stay inside it")
        return self.folder.joinpath(*pure.parts[:-1], pure.name + ".npy")

    def get(self, rel: str, shape: tuple[int, int] | None = None) -> np.ndarray | None:
        """The cached depth of ``rel``, or None when absent, unreadable or (if ``shape`` is given) of another shape.

        Returns:
            (H, W) float32 depth, larger = farther, or None.
        """
        path = self.path(rel)
        try:
            depth = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as err:
            log.warning("ignoring unreadable depth cache file %s (%s); it will be recomputed", path, err)
            return None
        if depth.ndim != 2 or (shape is not None and depth.shape != tuple(shape)):
            return None
        return depth.astype(np.float32)

    def put(self, rel: str, depth: np.ndarray) -> None:
        """Store the depth of ``rel`` atomically.

        Args:
            rel: relative POSIX image path.
            depth: (H, W) float depth, larger = farther.
        """
        depth = np.asarray(depth)
        if depth.ndim != 2:
            raise ValueError(f"depth to cache must be (H, W), got shape {depth.shape}")
        dtype = self.dtype
        if dtype == np.float16:
            finite = depth[np.isfinite(depth)]
            if finite.size and float(np.abs(finite).max()) > _FLOAT16_MAX:
                dtype = np.dtype(np.float32)
        path = self.path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
        replaced = False
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, depth.astype(dtype, copy=False), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            replaced = True
        finally:
            # On any failure (also KeyboardInterrupt) never leave the temporary file behind.
            if not replaced:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
