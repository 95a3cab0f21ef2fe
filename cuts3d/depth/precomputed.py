"""Precomputed depth maps read from a folder (paper Sec. 3.2; spec 3.1 and 8).

Instead of running a depth network, extraction can read one depth map per image from a folder that mirrors
the image folder: the depth of image ``rel`` (e.g. ``sub/a.jpg``) is ``ROOT/sub/a`` with the first of these
extensions that exists:

1. ``.npy`` - any real dtype, shape (H, W) (singleton axes such as (H, W, 1) are squeezed); values as stored.
2. ``.png`` - single-channel, 16-bit (or 8-bit) gray; integer values as stored (e.g. millimetres).
3. ``.tiff`` then ``.tif`` - single-channel 32-bit float or 16/32-bit integer.

Depth must be *larger = farther* and at the image's resolution after EXIF orientation (what
:func:`cuts3d.io.load_image` returns). The unit does not matter (the engine min-max normalises per image).
In the integer formats (PNG, integer TIFF) a value of 0 means "no measurement" (the KITTI / NYU convention)
and becomes NaN. NaN/inf are allowed and treated as missing by the engine; a constant map is allowed too (no
3D cue). :func:`depth_warnings` describes such maps for the caller's log.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

DEPTH_EXTENSIONS: tuple[str, ...] = (".npy", ".png", ".tiff", ".tif")
"""Looked up in this order for each image."""

# Errors numpy / PIL raise on corrupt files (no common base class).
_READ_ERRORS = (OSError, ValueError, EOFError, SyntaxError, UnidentifiedImageError)


class DepthInputError(ValueError):
    """A precomputed depth map that cannot be used.

    Attributes:
        reason: one sentence for a person: what is wrong and what to do.
    """

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def _read_npy(path: Path) -> np.ndarray:
    # allow_pickle=False: a depth file must never execute code.
    return np.load(path, allow_pickle=False)


def _read_pil(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        bands = img.getbands()
        if len(bands) != 1 or img.mode in ("1", "P"):
            raise DepthInputError(
                f"depth file {path} has colour mode {img.mode!r}; depth must be one channel (16-bit gray PNG, "
                "float32 TIFF or .npy), not a colour-mapped visualisation - save the raw depth values instead"
            )
        array = np.asarray(img)
        if img.mode != "F":
            # Integer depth: 0 marks pixels without a measurement (KITTI / NYU convention).
            array = array.astype(np.float32)
            array[array == 0] = np.nan
        return array


def _load(path: Path) -> np.ndarray:
    try:
        array = _read_npy(path) if path.suffix == ".npy" else _read_pil(path)
    except DepthInputError:
        raise
    except PermissionError:
        raise DepthInputError(f"depth file {path} is not readable (permission denied); fix its permissions") from None
    except _READ_ERRORS as err:
        raise DepthInputError(
            f"depth file {path} cannot be read ({type(err).__name__}: {err}); re-create it as a float .npy, a 16-bit "
            "gray PNG or a float32 TIFF"
        ) from None
    if array.dtype.kind not in "fiub":
        raise DepthInputError(f"depth file {path} holds {array.dtype} values, not numbers; save the depth as float32")
    if array.ndim > 2:
        array = np.squeeze(array)
    if array.ndim != 2:
        raise DepthInputError(
            f"depth file {path} has shape {array.shape}; a depth map must be 2-D (H, W) - one value per pixel"
        )
    return array.astype(np.float32)


class PrecomputedDepth:
    """Depth maps from a folder that mirrors the image folder (lookup rules in the module docstring).

    Usage::

        depth_source = PrecomputedDepth(Path("depth/"))
        depth = depth_source(record.rel, rgb.shape[:2])     # (H, W) float32, larger = farther
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"precomputed depth folder {self.root} does not exist or is not a folder; pass the folder that "
                "mirrors the image folder with one .npy / .png / .tiff depth map per image"
            )

    def candidates(self, rel: str) -> list[Path]:
        """The paths tried for image ``rel``, in lookup order."""
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts:
            raise DepthInputError(f"image path {rel!r} must be relative to the image folder and stay inside it")
        stem = pure.with_suffix("") if pure.suffix else pure
        return [self.root.joinpath(*stem.parts[:-1], stem.name + ext) for ext in DEPTH_EXTENSIONS]

    def __call__(self, rel: str, shape: tuple[int, int]) -> np.ndarray:
        """The depth map of image ``rel``.

        Args:
            rel: the image's path relative to the image folder (``ImageRecord.rel``), POSIX separators.
            shape: (H, W) of the decoded image (after EXIF orientation).

        Returns:
            (H, W) float32 depth, larger = farther; NaN where missing.

        Raises:
            DepthInputError: no file, unreadable file, not 2-D, or not (H, W).
        """
        tried = self.candidates(rel)
        path = next((p for p in tried if p.is_file()), None)
        if path is None:
            raise DepthInputError(
                f"no depth map for image {rel!r}: tried {', '.join(str(p) for p in tried)}; create one of these "
                "files or use a depth model instead of precomputed depth"
            )
        depth = _load(path)
        H, W = (int(v) for v in shape)
        if depth.shape != (H, W):
            h, w = depth.shape
            if (h, w) == (W, H):
                hint = (
                    "it looks transposed (rows and columns swapped) - often the depth was computed on the image "
                    "before its EXIF rotation was applied; compute it on the oriented image or rotate it"
                )
            else:
                hint = "depth must be at the image's full resolution (after EXIF orientation); resize it to match"
            raise DepthInputError(f"depth map {path} is {h}x{w} (HxW) but image {rel!r} is {H}x{W}; {hint}")
        return depth


def depth_warnings(depth: np.ndarray) -> list[str]:
    """Human-readable notes about a depth map the engine accepts but the caller should log.

    Args:
        depth: (H, W) float depth, NaN/inf = missing.

    Returns:
        zero or more sentences: all values missing, part of the values missing (with the share), or constant
        depth (no 3D cue; CutS3D then behaves like 2D MaskCut for this image).
    """
    depth = np.asarray(depth, dtype=np.float64)
    notes: list[str] = []
    if depth.size == 0:
        return ["depth map is empty (0 pixels)"]
    finite = np.isfinite(depth)
    missing = depth.size - int(finite.sum())
    if missing == depth.size:
        notes.append("depth is NaN/inf everywhere: no 3D cue, the cuts fall back to 2D (MaskCut) for this image")
        return notes
    if missing:
        notes.append(
            f"{100.0 * missing / depth.size:.1f}% of depth pixels are NaN/inf and are treated as missing "
            "(filled from the nearest valid patch)"
        )
    values = depth[finite]
    if float(values.max()) == float(values.min()):
        notes.append(
            f"depth is constant ({float(values[0]):g}) over all valid pixels: no 3D cue, the cuts fall back to "
            "2D (MaskCut) for this image"
        )
    return notes
