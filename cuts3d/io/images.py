"""Image folders and lists, robust image decoding and MaskCut's fixed-size input (issue 5; spec 2.1).

Pseudo-mask extraction (paper Sec. 3, "Experiment Setup") runs over a whole folder of real images, so this
module turns a folder or a list file into a deterministic list of :class:`ImageRecord` and decodes each
image into (H, W, 3) uint8 RGB, refusing bad files with an :class:`ImageLoadError` whose ``reason`` says what
is wrong and what to do, instead of crashing the job or silently producing garbage.

Decoding rules (:func:`load_image`):

* EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so the array is what a viewer shows and
  its (H, W) is the size that depth maps and masks must have.
* The pixel count is checked from the header *before* decoding, so a 20000 x 20000 image is refused
  without allocating it.
* Truncated files are errors: this module relies on PIL's default ``ImageFile.LOAD_TRUNCATED_IMAGES =
  False`` and never changes it (setting it to True elsewhere would let truncated JPEGs through, grey-filled).
* Colour modes: gray ("1", "L"), palette ("P"), CMYK, YCbCr and LAB are converted to RGB; images with
  alpha (RGBA, LA, PA, P with transparency) are composited on white (what viewers and web pages show;
  dropping alpha would expose whatever colour the transparent pixels happen to store, often black);
  16/32-bit gray ("I;16", "I", "F") is scaled by the image's own min..max range to 0..255 (a constant
  image becomes black).

MaskCut resizes every image to a fixed square (480 x 480) before the ViT: :func:`resize_square`.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""Extensions (lower case) that :func:`list_images` picks up, case-insensitively."""

MAX_PIXELS_DEFAULT = 100_000_000
MIN_SIDE_DEFAULT = 16

# Errors PIL raises on corrupt or truncated data while decoding (it has no common base class for them).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError)


class NoImagesError(ValueError):
    """An image source (folder or list file) holds no images."""


class ImageLoadError(Exception):
    """An image file that cannot be used.

    Attributes:
        path: the file.
        reason: one sentence for a person: what is wrong and what to do.
    """

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a source.

    Attributes:
        path: absolute path of the file.
        rel: POSIX path relative to the source's root (the folder, or the list file's folder), used as the
            COCO ``file_name`` and as the key for precomputed / cached depth.
        image_id: stable positive id < 2**31 derived from ``rel`` (same rel -> same id on every machine; see
            :func:`image_id_for`).
    """

    path: Path
    rel: str
    image_id: int


def image_id_for(rel: str, salt: int = 0) -> int:
    """Stable COCO image id of a relative path: the first 4 bytes of sha1(NFC(rel)), in [1, 2**31).

    The path is NFC-normalised first so that macOS (which stores decomposed Unicode names) and Linux give the
    same id for the same visible name. ``salt`` > 0 re-hashes (used only to resolve collisions).
    """
    key = unicodedata.normalize("NFC", rel)
    if salt:
        key = f"{key}\x00{salt}"
    # surrogateescape: a file name that is not valid UTF-8 (e.g. Latin-1 bytes) arrives from os.walk with its
    # bad bytes as lone surrogates; hashing its raw bytes keeps the id stable instead of failing the listing.
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()
    value = int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
    return value or 1  # 0 is not a valid COCO id in most tools


def _assign_ids(rels: list[str]) -> list[int]:
    """Ids for ``rels`` (unique strings); collisions of the 31-bit hash are re-hashed deterministically.

    With 31 bits a collision is expected among ~50k images (birthday bound), so it must be handled: the
    rel that sorts first keeps its hash, the others are re-hashed with an increasing salt.
    """
    ids: dict[str, int] = {}
    used: set[int] = set()
    for rel in sorted(rels):
        salt = 0
        value = image_id_for(rel)
        while value in used:
            salt += 1
            value = image_id_for(rel, salt)
        ids[rel] = value
        used.add(value)
    return [ids[r] for r in rels]


def _is_image_name(name: str) -> bool:
    # Names starting with "." are skipped: macOS AppleDouble files ("._IMG_1.jpg") carry an image
    # extension but are not images, and hidden folders (.ipynb_checkpoints, .git) are never wanted.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _skip_reason(name: str) -> str:
    """Why a file in a searched folder is not taken as an image (a key of :attr:`ImageListing.skipped`)."""
    if name.startswith("."):
        return "dot-file"
    ext = os.path.splitext(name)[1].lower()
    if ext == ".gif":
        return "GIF (not supported: convert to PNG)"
    return f"unknown extension {ext}" if ext else "no extension"


def _walk(root: Path) -> tuple[list[Path], dict[str, list[str]]]:
    """Image files under ``root`` (recursive) and the skipped entries, grouped by reason (paths relative to root)."""
    found: list[Path] = []
    skipped: dict[str, list[str]] = {}

    def skip(reason: str, path: str) -> None:
        skipped.setdefault(reason, []).append(os.path.relpath(path, root))

    for folder, dirs, files in os.walk(root, followlinks=False):
        kept = []
        for d in dirs:
            full = os.path.join(folder, d)
            if d.startswith("."):
                skip("hidden folder", full)
            elif os.path.islink(full):
                skip("symlinked folder (not followed)", full)  # os.walk does not descend into it either
            else:
                if os.path.splitext(d)[1].lower() in IMAGE_EXTENSIONS:
                    # a folder named like an image is searched as a folder; say so, since it is not an image
                    skip("folder named like an image (searched as a folder)", full)
                kept.append(d)
        dirs[:] = kept
        for name in files:
            if _is_image_name(name):
                found.append(Path(folder) / name)
            else:
                skip(_skip_reason(name), os.path.join(folder, name))
    return found, skipped


def _searched() -> str:
    return "files ending in " + " ".join(IMAGE_EXTENSIONS) + " (any case)"


def _records(paths: list[Path], root: Path) -> list[ImageRecord]:
    rels = [PurePosixPath(*Path(os.path.relpath(p, root)).parts).as_posix() for p in paths]
    ids = _assign_ids(rels)
    return [ImageRecord(Path(os.path.abspath(p)), r, i) for p, r, i in zip(paths, rels, ids)]


def _read_list(source: Path) -> list[tuple[int, Path]]:
    """(line number, absolute path) of each entry of a list file; relative entries resolve against its folder."""
    try:
        text = source.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"image list {source} is not UTF-8 text ({err.reason} at byte {err.start}); pass a folder of "
            "images or a UTF-8 text file with one image path per line"
        ) from None
    except PermissionError:
        raise PermissionError(f"image list {source} is not readable (permission denied); fix its permissions") from None
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = source.parent / path
        entries.append((number, Path(os.path.normpath(os.path.abspath(path)))))
    return entries


@dataclass(frozen=True)
class ImageListing:
    """The images of a source and what was passed over while searching it.

    Attributes:
        records: the images (see :func:`list_images`).
        skipped: reason -> paths relative to the source folder of entries that are not taken as images
            (dot-files, hidden or symlinked folders, GIFs, unknown extensions; a folder named like an image is
            listed too although it is searched). Empty for list files and single images.
    """

    records: list[ImageRecord]
    skipped: dict[str, list[str]]

    def skipped_count(self) -> int:
        """Number of skipped entries, not counting folders named like an image (they are searched)."""
        return sum(len(v) for k, v in self.skipped.items() if not k.startswith("folder named like"))


def list_images(source: str | Path) -> list[ImageRecord]:
    """The images of a folder, a list file or a single image file, in a deterministic order.

    Same as ``scan_images(source).records``; see :func:`scan_images`.
    """
    return scan_images(source).records


def scan_images(source: str | Path) -> ImageListing:
    """The images of a folder, a list file or a single image file, in a deterministic order, and what was skipped.

    Args:
        source: one of

            * a folder: walked recursively (symlinked folders are not followed; names starting with "." are
              skipped) for :data:`IMAGE_EXTENSIONS`, any case; records sorted by ``rel``; ``rel`` is relative
              to the folder. Everything passed over is reported in ``skipped``.
            * a text file (any other extension): one image path per line, UTF-8; blank lines and lines
              starting with ``#`` are skipped; surrounding whitespace is stripped; relative paths resolve
              against the list file's folder. Records keep the list's order; repeated entries are dropped
              (first kept). ``rel`` is relative to the list file's folder when every entry lies under it,
              otherwise relative to the deepest folder common to all entries. Every entry must exist.
            * an image file: a single record, ``rel`` = its name.

            File names that are not valid UTF-8 are kept: their bad bytes appear in ``rel`` as lone surrogates
            (Python's ``surrogateescape``: byte 0xE9 -> ``"\\udce9"``), so ``Path(root, rel)`` opens the file.

    Returns:
        :class:`ImageListing`: ``records`` (never empty; ``record.path`` is absolute: use it, not root / rel,
        to open the file) and ``skipped`` (what the folder search passed over, by reason).

    Raises:
        FileNotFoundError: ``source`` or a listed file does not exist (the message names them).
        NoImagesError: the folder or list holds no images (the message names what was searched for).
        ValueError: the list file is not UTF-8 text.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise FileNotFoundError(
            f"image source {source} does not exist; pass a folder of images or a text file listing one image "
            "path per line"
        )
    if source.is_dir():
        found, skipped = _walk(source)
        if not found:
            other = Counter(
                os.path.splitext(p)[1].lower() or "(no extension)" for reason, paths in skipped.items()
                if "folder" not in reason for p in paths
            )
            seen = ", ".join(f"{ext} ({n})" for ext, n in other.most_common(5))
            detail = f"; it holds other files: {seen}" if other else " (it is empty)"
            raise NoImagesError(f"no images in folder {source}: searched recursively for {_searched()}{detail}")
        records = _records(found, source)
        return ImageListing(sorted(records, key=lambda r: r.rel), skipped)
    if source.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageListing(_records([source], source.parent), {})

    entries = _read_list(source)
    if not entries:
        raise NoImagesError(
            f"image list {source} lists no images: every line is blank or a # comment; write one image path per "
            "line (relative paths resolve against the list's folder)"
        )
    missing = [(n, p) for n, p in entries if not p.is_file()]
    if missing:
        shown = "; ".join(f"line {n}: {p}" for n, p in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise FileNotFoundError(
            f"image list {source}: {len(missing)} listed file(s) do not exist or are not files: {shown}{more}; "
            "fix or remove these lines (relative paths resolve against the list file's folder)"
        )
    paths: list[Path] = []
    seen_paths: set[Path] = set()
    for _, p in entries:
        if p not in seen_paths:
            seen_paths.add(p)
            paths.append(p)
    base = Path(os.path.abspath(source.parent))
    if not all(p.is_relative_to(base) for p in paths):
        base = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return ImageListing(_records(paths, base), {})


def _fail(path: Path, reason: str) -> ImageLoadError:
    return ImageLoadError(path, reason)


def _looks_like_text(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB (rules in the module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        # 16/32-bit gray: PIL's own convert() clips at 255 (a 16-bit image would turn white), so scale by the
        # image's range instead.
        a = np.asarray(img, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        g = np.zeros(a.shape, np.uint8) if hi <= lo else np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        return Image.fromarray(np.repeat(g[..., None], 3, axis=2))
    return img.convert("RGB")


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS_DEFAULT, min_side: int = MIN_SIDE_DEFAULT) -> np.ndarray:
    """Decode one image file into RGB, after checking it is safe and usable.

    Args:
        path: image file.
        max_pixels: refuse images with width * height above this (checked from the header, before decoding).
            PIL's own decompression-bomb limit (about 179 megapixels) also applies.
        min_side: refuse images whose shorter side is below this many pixels (nothing to segment).

    Returns:
        (H, W, 3) uint8 RGB, EXIF orientation applied; a fresh, writable, C-contiguous array.

    Raises:
        ImageLoadError: empty, unreadable, not an image, too large, too small, truncated or corrupt file;
            ``.reason`` says what to do.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise _fail(path, "the file does not exist; check the path or re-create the image list.") from None
    except OSError as err:
        raise _fail(
            path, f"the file cannot be accessed ({err.strerror}); check the path and its permissions."
        ) from None
    if path.is_dir():
        raise _fail(path, "this is a folder, not an image file; pass the image files inside it.")
    if size == 0:
        raise _fail(
            path, "the file is empty (0 bytes), probably an interrupted copy or download; re-copy it or remove it."
        )

    with warnings.catch_warnings():
        # Our own max_pixels check below replaces PIL's DecompressionBombWarning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except PermissionError:
            raise _fail(
                path, "the file is not readable (permission denied); fix its permissions (chmod a+r) or remove it."
            ) from None
        except UnidentifiedImageError:
            kind = "a text file" if _looks_like_text(path) else "not in a format PIL can read"
            raise _fail(
                path,
                f"the file is not an image ({kind}) despite its extension; replace it with the real image or "
                "remove it from the folder or list.",
            ) from None
        except Image.DecompressionBombError as err:
            # PIL refuses > 2 * MAX_IMAGE_PIXELS at open time, before our own check can run.
            found = re.search(r"\((\d+) pixels\)", str(err))
            pixels = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
            raise _fail(
                path,
                f"the image has {pixels}, above PIL's decompression-bomb limit of "
                f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels (and max_pixels={max_pixels / 1e6:.0f} "
                "megapixels); downscale it before extraction or remove it.",
            ) from None
        except _DECODE_ERRORS as err:
            raise _fail(path, f"the image header is corrupt ({err}); re-export or re-download the image.") from None

        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise _fail(
                    path,
                    f"the image is {width}x{height} = {width * height / 1e6:.0f} megapixels, above the limit of "
                    f"{max_pixels / 1e6:.0f} megapixels; downscale it or raise max_pixels.",
                )
            if min(width, height) < min_side:
                raise _fail(
                    path,
                    f"the image is only {width}x{height} pixels, smaller than min_side={min_side} on a side, too "
                    "small to segment; remove it or use a larger version.",
                )
            try:
                img.load()
            except _DECODE_ERRORS as err:
                truncated = "truncated" in str(err).lower()
                what = "truncated (the file ends early)" if truncated else f"corrupt ({err})"
                raise _fail(
                    path, f"the image data is {what}, so it cannot be decoded fully; re-copy or re-download it."
                ) from None
            try:
                oriented = ImageOps.exif_transpose(img)
            except _DECODE_ERRORS:
                # A malformed EXIF block must not cost the image: keep the stored orientation.
                oriented = img
            try:
                rgb = _to_rgb(oriented)
            except ValueError as err:
                raise _fail(
                    path, f"colour mode {oriented.mode!r} cannot be converted to RGB ({err}); re-save it as RGB."
                ) from None
            # np.array copies: np.asarray of a PIL image is read-only, which torch.from_numpy warns about.
            return np.array(rgb, dtype=np.uint8)


def resize_square(image: np.ndarray, size: int = 480) -> np.ndarray:
    """MaskCut's fixed-size input (spec 2.1): PIL LANCZOS resize of the whole image to size x size.

    The aspect ratio is not kept, exactly as MaskCut does (``img.resize((fixed_size, fixed_size),
    Image.LANCZOS)``); masks are resized back to (H, W) afterwards.

    Args:
        image: (H, W, 3) uint8 RGB.
        size: output side in pixels.

    Returns:
        (size, size, 3) uint8 RGB.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"resize_square expects (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    out = Image.fromarray(image).resize((size, size), Image.LANCZOS)
    return np.array(out, dtype=np.uint8)  # writable, like load_image's output
