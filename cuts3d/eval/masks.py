"""Mask checks for the evaluation: every segmentation becomes a *valid* compressed COCO RLE.

pycocotools trusts its input. A compressed RLE string that is not RLE (``"!!!garbage###"``) is
"decoded" into run lengths that wrap around (``mask.area`` gives 4294967218 on a 10 x 10 image)
and is then scored; a polygon with a NaN coordinate becomes an arbitrary mask; a polygon with a
coordinate of 1e9 crashes the interpreter (segmentation fault); a binary mask written as nested
lists (``[[0, 1, ...], ...]``) is read as polygons. This module catches all of these before
anything is scored:

* :func:`to_rle` turns one segmentation (compressed RLE with ``str``/``bytes`` counts,
  uncompressed RLE, polygons, or an (H, W) 0/1 array) into compressed RLE with ``str`` counts,
  raising :class:`MaskError` with the reason when it is malformed, or :class:`MaskSizeError`
  when its size is not the image's.
* :func:`rle_problems` decodes many compressed RLE strings at once (vectorised: 100k masks of
  150 characters take about a second on 2 cores) and says for each whether it is valid: only
  characters of the COCO RLE alphabet, no number cut off at the end, no negative run length,
  and run lengths that add up to exactly height x width (so the area is at most height x width).

The compressed format (pycocotools ``maskApi.c``, ``rleToString``): each run length is written
as 5-bit groups, least significant first, as characters ``chr(48 + group)``; bit 0x20 of a group
says "more groups follow", bit 0x10 of the last group is the sign. From the fourth run on
(index > 2), the value stored is the difference to the run two places earlier.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from cuts3d.eval.inputs import is_number

#: A run length never needs more than 7 groups (35 bits) for an image pycocotools can address
#: (height x width < 2**32); more means the string is not RLE.
_MAX_GROUPS = 7
#: A character outside the alphabet (``chr(48)`` .. ``chr(48 + 63)``).
_OUTSIDE = re.compile(r"[^0-o]")
#: _MAX_GROUPS characters in a row with the "more groups follow" bit (``'P'`` .. ``'o'``): a longer run.
_TOO_LONG = re.compile(r"[P-o]{%d}" % _MAX_GROUPS)
#: Characters decoded at once (the decode needs about 50 bytes per character).
_CHUNK_CHARS = 1 << 22
#: Polygon coordinates must lie within this many image sizes of the origin: pycocotools rasterises
#: every polygon edge pixel by pixel, so a coordinate of 1e9 exhausts memory or crashes it.
POLYGON_RANGE = 10


class MaskError(ValueError):
    """One segmentation is malformed; the message is the reason (the caller adds file and index)."""


class MaskSizeError(MaskError):
    """A segmentation's size differs from the image's.

    Attributes:
        size: the segmentation's [height, width] in pixels.
    """

    def __init__(self, size: list[int]) -> None:
        super().__init__(f"size {size} (height, width) differs from the image's")
        self.size = size


def _rle_size(seg: Mapping[str, Any]) -> list[int]:
    size = seg["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(is_number(v) for v in size)):
        raise MaskError(f"RLE 'size' must be [height, width], got {size!r}")
    if any(float(v) != int(v) or v < 0 for v in size):
        raise MaskError(f"RLE 'size' must be two non-negative integers [height, width], got {size!r}")
    return [int(size[0]), int(size[1])]


def _uncompressed(counts: Sequence[Any], h: int, w: int) -> dict[str, Any]:
    """Compressed RLE of an uncompressed RLE (run lengths, column-major, starting with zeros)."""
    if not all(is_number(c) and c >= 0 and float(c) == int(c) for c in counts):
        raise MaskError("uncompressed RLE counts must be non-negative integers")
    total = sum(int(c) for c in counts)
    if total != h * w:
        raise MaskError(
            f"uncompressed RLE counts sum to {total} pixels but size {[h, w]} has {h * w}; the run lengths must "
            "cover the whole image (column-major, COCO order)"
        )
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": [int(c) for c in counts]}, h, w)
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def _looks_like_bitmask(polys: Sequence[Any], h: int, w: int) -> bool:
    """Nested lists of exactly height rows of width 0/1 values: a binary mask, not polygons."""
    if len(polys) != h or not all(isinstance(p, (list, tuple)) and len(p) == w for p in polys):
        return False
    return all(v in (0, 1) for p in polys for v in p)


def polygon_problem(polys: Sequence[Any], h: int, w: int) -> str | None:
    """Why ``polys`` (a list of ``[x1, y1, x2, y2, ...]`` lists, pixels) is not a usable polygon
    segmentation on an (h, w) image, or ``None`` when it is.

    Args:
        polys: the polygons, each ``[x1, y1, x2, y2, ...]`` in pixels.
        h, w: the image's height and width in pixels.

    A polygon needs at least 6 coordinates (a triangle). Fewer is not only degenerate: pycocotools
    reads a list whose first polygon has 4 numbers as a list of boxes.
    """
    if h > 1 and w > 1 and _looks_like_bitmask(polys, h, w):
        return (
            f"segmentation is {h} lists of {w} 0/1 values: a binary mask written as nested lists, which COCO "
            "reads as polygons; encode it as RLE: pycocotools.mask.encode(np.asfortranarray(mask))"
        )
    limit = POLYGON_RANGE * max(h, w)
    for poly in polys:
        if not isinstance(poly, (list, tuple)) or not all(is_number(v) for v in poly):
            return "polygon segmentation must be a list of [x1, y1, x2, y2, ...] lists of numbers"
        if len(poly) < 6 or len(poly) % 2:
            return f"a polygon needs an even number (>= 6) of coordinates, got {len(poly)}"
        arr = np.asarray(poly, dtype=np.float64)
        if not np.isfinite(arr).all():
            return "a polygon has a NaN or infinite coordinate"
        if arr.size and np.abs(arr).max() > limit:
            return (
                f"a polygon coordinate ({float(arr[np.argmax(np.abs(arr))])!r}) lies far outside the {w} x {h} "
                "(width x height) image; polygons are [x1, y1, x2, y2, ...] in pixels of the original image"
            )
    return None


def to_rle(seg: Any, h: int, w: int) -> dict[str, Any]:
    """Compressed RLE (``{"size": [h, w], "counts": str}``) of one segmentation on an (h, w) image.

    Args:
        seg: compressed RLE (``counts`` ``str`` or ASCII ``bytes``), uncompressed RLE (``counts``
            a list of run lengths, column-major), polygons (a list of ``[x1, y1, ...]`` lists, or
            one flat list), or an (h, w) array of 0/1 (bool or integer).
        h, w: the image's height and width in pixels.

    Compressed RLE strings are passed through *unchecked*: check them, many at once, with
    :func:`rle_problems`.

    Raises:
        MaskSizeError: the RLE ``size`` or array shape is not [h, w].
        MaskError: anything else malformed; the message says what.
    """
    if isinstance(seg, np.ndarray):
        if seg.ndim != 2:
            raise MaskError(f"a mask array must be 2-D (height, width), got shape {tuple(seg.shape)}")
        if list(seg.shape) != [h, w]:
            raise MaskSizeError([int(seg.shape[0]), int(seg.shape[1])])
        if seg.dtype != bool and not (np.issubdtype(seg.dtype, np.integer) and np.isin(seg, (0, 1)).all()):
            raise MaskError(f"a mask array must hold 0/1 or bool values, got dtype {seg.dtype}")
        rle = mask_utils.encode(np.asfortranarray(seg.astype(np.uint8)))
        return {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    if isinstance(seg, Mapping):
        if "counts" not in seg or "size" not in seg:
            raise MaskError("an RLE segmentation needs 'counts' and 'size' [height, width]")
        size = _rle_size(seg)
        if size != [h, w]:
            raise MaskSizeError(size)
        counts = seg["counts"]
        if isinstance(counts, (bytes, bytearray)):
            try:
                return {"size": size, "counts": bytes(counts).decode("ascii")}
            except UnicodeDecodeError:
                raise MaskError("RLE counts bytes are not an ASCII COCO RLE string") from None
        if isinstance(counts, str):
            return {"size": size, "counts": counts}
        if isinstance(counts, (list, tuple)):
            return _uncompressed(counts, h, w)
        raise MaskError(f"RLE counts must be a string, bytes or a list of run lengths, not {type(counts).__name__}")
    if isinstance(seg, (list, tuple)):
        polys = [seg] if seg and all(is_number(v) for v in seg) else seg
        problem = polygon_problem(polys, h, w)
        if problem:
            raise MaskError(problem)
        rle = mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in p] for p in polys], h, w))
        return {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    raise MaskError(f"segmentation must be an RLE dict or polygons, not {type(seg).__name__}")


def _segmented_cumsum(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Running sums of ``values`` (P,) restarting at each index in ``first`` (S,), sorted, ``first[0] == 0``."""
    adjusted = values.copy()
    sums = np.add.reduceat(values, first)  # (S,) each segment's total
    adjusted[first[1:]] -= sums[:-1]  # the running total entering a segment is the previous segment's total
    return np.cumsum(adjusted)


def _decode_problems(texts: Sequence[str], expected: Sequence[int]) -> list[str | None]:
    """Decode well-formed compressed RLE strings (alphabet, last run complete and run sizes already
    checked) and check that no run is negative and that the runs cover exactly ``expected`` pixels."""
    m = len(texts)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=m)
    raw = np.frombuffer("".join(texts).encode("ascii"), dtype=np.uint8)  # (N,) characters
    ends = np.flatnonzero(raw < 80)  # (C,) last group of each run: no 0x20 bit, characters '0'..'O'
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    n_groups = ends - starts + 1  # (C,) at most _MAX_GROUPS (checked)
    x = ((raw[starts] - 48) & 0x1F).astype(np.int64)  # (C,) stored values, 5 bits per group, low first
    for j in range(1, _MAX_GROUPS):
        longer = np.flatnonzero(n_groups > j)
        if longer.size == 0:
            break
        x[longer] += ((raw[starts[longer] + j] - 48) & 0x1F).astype(np.int64) << (5 * j)
    negative = np.flatnonzero((raw[ends] - 48) & 0x10)
    x[negative] -= np.left_shift(np.int64(1), 5 * n_groups[negative])  # sign-extend
    n_runs = np.diff(np.searchsorted(ends, np.cumsum(lengths) - 1, side="right"), prepend=0)  # (M,)
    # pad every string to an even number of runs with a trailing 0, so that local and global
    # positions have the same parity and the two chains are plain strided views
    padded = (n_runs & 1) == 1
    if padded.any():
        x = np.insert(x, np.cumsum(n_runs)[padded], 0)
    n_pairs = (n_runs + 1) // 2
    pair_end = np.cumsum(n_pairs)
    first = pair_end - n_pairs  # (M,) first pair of each string
    # from position 3 on a stored value is the difference to the run two places back: the odd
    # positions are running sums of their values, the even ones too from position 2 on
    odd_runs = _segmented_cumsum(x[1::2], first)
    even = x[0::2].copy()
    run0 = even[first].copy()
    even[first] = 0
    even_runs = _segmented_cumsum(even, first)
    even_runs[first] = run0
    total = np.add.reduceat(odd_runs + even_runs, first)
    total[padded] -= odd_runs[pair_end[padded] - 1]  # the padding's "run" repeats the previous odd run
    below = np.flatnonzero((odd_runs < 0) | (even_runs < 0))
    has_negative = np.bincount(np.searchsorted(pair_end, below, side="right"), minlength=m) > 0
    out: list[str | None] = [None] * m
    for j in range(m):
        if has_negative[j]:
            out[j] = "its RLE counts decode to a negative run length"
        elif total[j] != expected[j]:
            out[j] = (
                f"its RLE counts decode to runs covering {int(total[j])} pixels but the image has {int(expected[j])} "
                "(height x width)"
            )
    return out


def rle_problems(counts: Sequence[str], n_pixels: Sequence[int]) -> list[str | None]:
    """Decode compressed COCO RLE strings and say which are not valid.

    Args:
        counts: M compressed RLE ``counts`` strings.
        n_pixels: (M,) height x width of each mask's image.

    Returns:
        M entries: ``None`` for a valid string, else the reason (one phrase). Valid means: only
        characters ``'0'`` .. ``'o'``, the last run length complete, at most 7 characters per
        run length, no negative run, and runs summing to exactly ``n_pixels`` (so 0 <= area <= h*w).

    The format checks are regular expressions (C speed); the decode is vectorised over many
    strings at once, in chunks of about 4M characters to bound memory, and a string repeated
    (with the same image size) is decoded once.
    """
    out: list[str | None] = [None] * len(counts)
    positions: dict[tuple[str, int], list[int]] = {}
    for j, (s, n) in enumerate(zip(counts, n_pixels, strict=True)):
        positions.setdefault((s, int(n)), []).append(j)
    unique = list(positions)
    reasons: list[str | None] = [None] * len(unique)
    to_decode: list[int] = []
    for u, (s, _) in enumerate(unique):
        if not s:
            reasons[u] = "its RLE counts string is empty"
        elif not s.isascii() or _OUTSIDE.search(s):
            reasons[u] = "its RLE counts have characters outside '0'..'o'"
        elif s[-1] >= "P":  # the 0x20 "more groups follow" bit is set on the last character
            reasons[u] = "its RLE counts string ends inside a run length (cut off?)"
        elif _TOO_LONG.search(s):
            reasons[u] = "its RLE counts hold a run length too long to be real"
        else:
            to_decode.append(u)
    start = 0
    while start < len(to_decode):
        stop, size = start, 0
        while stop < len(to_decode) and (stop == start or size + len(unique[to_decode[stop]][0]) <= _CHUNK_CHARS):
            size += len(unique[to_decode[stop]][0])
            stop += 1
        batch = to_decode[start:stop]
        found = _decode_problems([unique[u][0] for u in batch], [unique[u][1] for u in batch])
        for u, reason in zip(batch, found, strict=True):
            reasons[u] = reason
        start = stop
    for key, reason in zip(unique, reasons, strict=True):
        if reason is not None:
            for j in positions[key]:
                out[j] = reason
    return out
