"""Match the images of a pseudo-mask COCO JSON to the ground truth's images by relative path.

A pseudo-mask JSON from ``cuts3d extract`` numbers its images 1..N and names them by their path
relative to the extraction's input folder (``val2017/000000000139.jpg``, or ``a/x.jpg`` and
``b/x.jpg`` for two different images). Its image ids mean nothing to the ground truth, so images
are matched by file name, and the *whole relative path* counts: matching by base name alone sent
``a/x.jpg`` and ``b/x.jpg`` to the same ground-truth image (25 AP for perfect masks).

Rules, on paths split into components (``\\`` read as ``/``, ``.`` and empty components dropped):

1. the same path in both: a match;
2. otherwise one path must be a trailing part of the other (``val2017/x.jpg`` and ``x.jpg``:
   the prediction was extracted from a parent folder, or the ground truth lists base names);
   the ground-truth image sharing the most trailing components wins;
3. two ground-truth images equally good (``x.jpg`` against ``a/x.jpg`` and ``b/x.jpg``), or two
   prediction images landing on one ground-truth image, is an error that names them: scores of
   one image would otherwise be silently counted for another.

When no prediction image matches at all, the caller falls back to image ids (a results list, or
a file whose ids are the ground truth's), and says so.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cuts3d.eval.inputs import EvalInputError, preview


def path_parts(name: Any) -> tuple[str, ...]:
    """Components of a file name as a relative path (``"./a\\\\x.jpg"`` -> ``("a", "x.jpg")``)."""
    return tuple(p for p in str(name).replace("\\", "/").split("/") if p not in ("", "."))


@dataclass
class ImageMatch:
    """Prediction image id -> ground-truth image id, found by file name.

    Attributes:
        ids: prediction image id -> ground-truth image id, for the matched images.
        unmatched: prediction image ids whose file name matches no ground-truth image.
        unnamed: prediction image ids without a usable ``file_name``.
    """

    ids: dict[Any, Any] = field(default_factory=dict)
    unmatched: list[Any] = field(default_factory=list)
    unnamed: list[Any] = field(default_factory=list)


def match_by_path(
    pred_images: Mapping[Any, Mapping[str, Any]],
    gt_images: Mapping[Any, Mapping[str, Any]],
    wanted: Iterable[Any],
    pred_source: str,
    gt_source: str,
) -> ImageMatch:
    """Match prediction images to ground-truth images by relative path (rules in the module doc).

    Args:
        pred_images: prediction image id -> image record (``file_name``) of the pseudo-mask JSON.
        gt_images: ground-truth image id -> image record (``file_name``).
        wanted: the prediction image ids that have predictions (only those need a match).
        pred_source, gt_source: file names for messages.

    Raises:
        EvalInputError: a prediction image matches two ground-truth images equally well, the ground
            truth lists the same file name twice, or two prediction images match one ground-truth image.
    """
    exact: dict[tuple[str, ...], list[Any]] = defaultdict(list)
    by_base: dict[str, list[tuple[tuple[str, ...], Any]]] = defaultdict(list)
    for gid, img in gt_images.items():
        parts = path_parts(img.get("file_name", ""))
        if parts:
            exact[parts].append(gid)
            by_base[parts[-1]].append((parts, gid))

    def gt_name(gid: Any) -> str:
        return str(gt_images[gid].get("file_name"))

    match = ImageMatch()
    claimed: dict[Any, Any] = {}  # ground-truth id -> the prediction image id that matched it
    for pid in wanted:
        img = pred_images.get(pid)
        parts = path_parts(img.get("file_name", "")) if img is not None else ()
        if not parts:
            match.unnamed.append(pid)
            continue
        name = str(img.get("file_name"))
        if parts in exact:
            candidates = exact[parts]
        else:
            # one path a trailing part of the other; prefer the longest shared tail
            best, candidates = 0, []
            for gparts, gid in by_base.get(parts[-1], []):
                n = min(len(gparts), len(parts))
                if gparts[-n:] != parts[-n:]:
                    continue
                if n > best:
                    best, candidates = n, [gid]
                elif n == best:
                    candidates.append(gid)
        if not candidates:
            match.unmatched.append(pid)
            continue
        if len(candidates) > 1:
            names = sorted({gt_name(g) for g in candidates})
            same_path = len({path_parts(n) for n in names}) == 1
            why = (
                "the ground truth lists that file name for several image ids "
                f"({preview(sorted(candidates, key=str))})"
                if same_path
                else f"it matches {len(candidates)} ground-truth images equally well: {preview(names)}"
            )
            raise EvalInputError(
                f"predictions {pred_source}: image {name!r} (image id {pid!r}) cannot be matched to one image of the "
                f"ground truth {gt_source}: {why}; write file names relative to the same folder as the ground "
                "truth's (e.g. extract from that folder) so each names one image"
            )
        gid = candidates[0]
        if gid in claimed:
            other = str(pred_images[claimed[gid]].get("file_name"))
            raise EvalInputError(
                f"predictions {pred_source}: images {other!r} and {name!r} (image ids {claimed[gid]!r}, {pid!r}) both "
                f"match the ground-truth image {gt_name(gid)!r} of {gt_source}; their predictions would be mixed: "
                "write file names relative to the same folder as the ground truth's, or evaluate them separately"
            )
        claimed[gid] = pid
        match.ids[pid] = gid
    return match
