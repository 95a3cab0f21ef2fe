"""On-disk cache of predicted depth maps (paper Sec. 3.2; spec 3.1 and 8).

Depth prediction is the slowest per-image step after the ViT, and extraction jobs are re-run (other
thresholds, crashed shards), so predicted maps are cached as ``ROOT/<key>/<rel>.npy``: one folder per key,
where the extraction's key is a hash of every setting that changes the map (model, weights, input size,
output size; :func:`cuts3d.pipeline.fingerprint.depth_cache_key`), so that maps of two settings never mix;
``<rel>`` is the image's relative path with ``.npy`` appended (``sub/a.jpg`` -> ``sub/a.jpg.npy``, so
``a.jpg`` and ``a.png`` do not collide).

Exactness: a cut on a fresh map and a cut on the map read back must be bit-identical (issue 11, item 1).
Maps are stored as float32 by default, exactly as computed (4 bytes per pixel: 0.92 MB per image at 480 x
480). float16 halves the disk space but rounds to a 5e-4 relative step, which turns a nearly flat map
constant and changes what min-max normalised Spatial Importance sees; with it, the caller must cut on
:meth:`DepthCache.round_trip` of a fresh map, which is exactly what :meth:`DepthCache.get` returns after
:meth:`DepthCache.put` (extraction always does, so either storage type is exact).

Writes are atomic (:func:`cuts3d.io.atomic.atomic_write`): the array goes to a temporary file in
``ROOT/<key>/.cuts3d-tmp/`` (one flat folder, so that cleaning the temporary files a kill left behind never
walks the whole cache), is flushed to disk, and is then renamed over the target with ``os.replace``, so a
job killed mid-write never leaves a truncated cache file that a later run would read. A cache file that
cannot be read anyway (e.g. a disk error) counts as a miss.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath

import numpy as np

from cuts3d.io.atomic import atomic_write, clean_stale_temps

log = logging.getLogger(__name__)

_FLOAT16_MAX = float(np.finfo(np.float16).max)
#: Storage type of cached maps unless a cache is built with another one.
DEFAULT_DTYPE = "float32"
#: Folder (inside each key's folder) that holds the temporary files of writes in progress.
TEMP_FOLDER = ".cuts3d-tmp"


def storage_dtype(depth: np.ndarray, dtype: str | np.dtype = DEFAULT_DTYPE) -> np.dtype:
    """The type ``depth`` is stored as: ``dtype``, or float32 when float16 cannot hold its finite values."""
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        finite = depth[np.isfinite(depth)]
        if finite.size and float(np.abs(finite).max()) > _FLOAT16_MAX:
            return np.dtype(np.float32)
    return dtype


def round_trip(depth: np.ndarray, dtype: str | np.dtype = DEFAULT_DTYPE) -> np.ndarray:
    """What a cache of storage type ``dtype`` returns for ``depth``: (H, W) float32, bit for bit.

    Cutting on this instead of the fresh map makes a run that computes depth and a run that reads it from
    the cache give identical masks. For float32 input and storage it is the map itself (no copy).
    """
    depth = np.asarray(depth)
    return depth.astype(storage_dtype(depth, dtype), copy=False).astype(np.float32, copy=False)


def _safe_folder_name(model: str) -> str:
    # Model keys become one folder name: no separators, no "..".
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", model).strip(".")
    if not name:
        raise ValueError(f"depth cache model name {model!r} has no usable characters")
    return name


class DepthCache:
    """Depth maps of one depth setting, stored under ``root/<model>/``.

    Args:
        root: cache folder (created on the first write); several jobs may share it.
        model: the cache key, one folder name: it must change whenever the maps would (extraction uses
            :func:`cuts3d.pipeline.fingerprint.depth_cache_key`); :meth:`for_model` takes
            ``DepthModel.cache_key`` of a :class:`cuts3d.depth.DepthModel`.
        dtype: ``"float32"`` (default; exact) or ``"float16"`` (half the disk space, ~3 significant digits;
            maps with finite values beyond float16's range, 65504, are stored as float32 automatically).
            Use :meth:`round_trip` on fresh maps so that fresh and cached maps are identical.
    """

    def __init__(self, root: str | Path, model: str, dtype: str = DEFAULT_DTYPE):
        if dtype not in ("float16", "float32"):
            raise ValueError(f"DepthCache dtype must be 'float16' or 'float32', got {dtype!r}")
        self.root = Path(root).expanduser()
        self.model = model
        self.dtype = np.dtype(dtype)
        self.folder = self.root / _safe_folder_name(model)

    @classmethod
    def for_model(cls, root: str | Path, depth_model, dtype: str = DEFAULT_DTYPE) -> DepthCache:
        """The cache of a built :class:`cuts3d.depth.DepthModel` (keyed by its ``cache_key``)."""
        return cls(root, depth_model.cache_key, dtype)

    @property
    def temp_folder(self) -> Path:
        """Folder of this cache's temporary files (flat, so :meth:`clean_stale_temps` is cheap)."""
        return self.folder / TEMP_FOLDER

    def round_trip(self, depth: np.ndarray) -> np.ndarray:
        """(H, W) float32: exactly what :meth:`get` returns after ``put(rel, depth)``."""
        return round_trip(depth, self.dtype)

    def clean_stale_temps(self) -> list[Path]:
        """Delete temporary files left by killed writers (rules: :mod:`cuts3d.io.atomic`); returns them."""
        return clean_stale_temps(self.temp_folder)

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
        stored = depth.astype(storage_dtype(depth, self.dtype), copy=False)
        atomic_write(self.path(rel), lambda f: np.save(f, stored, allow_pickle=False), temp_folder=self.temp_folder)
