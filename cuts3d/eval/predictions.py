"""Predictions for the class-agnostic evaluation: load, match to the ground truth, check.

Two kinds of input are accepted: a detector's COCO results list (``image_id``, ``score``,
``segmentation`` and/or ``bbox``) and a pseudo-mask COCO JSON (``cuts3d extract``'s
``annotations.json``, score ``score`` or ``confidence_score``). A pseudo-mask JSON's images are
matched to the ground truth's by relative path (:mod:`cuts3d.eval.matching`). Every score must be
a finite number, every mask must decode to a mask of its image's size (:mod:`cuts3d.eval.masks`),
every box must be [x, y, width, height] in pixels; the first offending prediction is named
(index, image, reason) in a one-line :class:`~cuts3d.eval.inputs.EvalInputError`, so nothing
malformed is ever scored.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from cuts3d.eval.ground_truth import GroundTruth
from cuts3d.eval.inputs import EvalInputError, is_image_id, is_number, preview, read_json
from cuts3d.eval.masks import MaskError, MaskSizeError, rle_problems, to_rle
from cuts3d.eval.matching import match_by_path

#: Fields tried, in order, for a prediction's score when no ``score_key`` is given.
SCORE_KEYS: tuple[str, ...] = ("score", "confidence_score")


@dataclass
class Predictions:
    """Checked, class-agnostic predictions.

    Attributes:
        records: one dict per prediction: ``image_id`` (ground-truth id), ``score`` (float),
            ``segmentation`` (compressed RLE with ``str`` counts, ``size`` [height, width]) or
            ``None``, ``bbox`` ([x, y, width, height] in pixels) or ``None``.
        source: file path or ``"<list>"``/``"<dict>"``; used in messages.
        kind: ``"results list"`` or ``"pseudo-mask COCO JSON"``.
        score_field: the field the scores came from (``score`` or ``confidence_score`` ...).
        source_category_ids: category ids found in the input (all are mapped to 1).
        remapped_by_file_name: images with predictions whose id was mapped to another
            (the ground truth's) id by matching file names.
        warnings: non-fatal observations, also printed when verbose.
    """

    records: list[dict[str, Any]]
    source: str
    kind: str
    score_field: str
    source_category_ids: list[Any]
    remapped_by_file_name: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def has_masks(self) -> int:
        """Number of predictions with a mask."""
        return sum(r["segmentation"] is not None for r in self.records)

    @property
    def has_boxes(self) -> int:
        """Number of predictions with an explicit box."""
        return sum(r["bbox"] is not None for r in self.records)


def _resolve_pred_source(
    predictions: str | os.PathLike[str] | Sequence[Mapping[str, Any]] | Mapping[str, Any],
) -> tuple[Any, str]:
    if isinstance(predictions, (str, os.PathLike)):
        path = Path(predictions).expanduser()
        return read_json(path, "predictions"), str(path)
    if isinstance(predictions, Mapping):
        return predictions, "<predictions dict>"
    if isinstance(predictions, Sequence):
        return predictions, "<predictions list>"
    raise EvalInputError(
        f"predictions must be a path, a list of result dicts or a COCO dict, not {type(predictions).__name__}"
    )


def _reportable(x: Any) -> Any:
    """``x`` if it can go in a set and be sorted among ids (None, number, string), else its ``repr``."""
    return x if x is None or isinstance(x, (int, float, str, np.number)) else repr(x)


def _pick_score_field(anns: Sequence[Mapping[str, Any]], score_key: str | None, source: str) -> str:
    """The field holding each prediction's score; raises if some prediction lacks it."""
    candidates = (score_key,) if score_key else SCORE_KEYS
    for key in candidates:
        missing = [i for i, a in enumerate(anns) if a.get(key) is None]
        if not missing:
            return key
        if score_key or len(missing) < len(anns):
            # the field is used by some predictions: it is the score field, others are broken
            raise EvalInputError(
                f"predictions {source}: {len(missing)} of {len(anns)} predictions have no {key!r} "
                f"(first: prediction #{missing[0]}, image_id {anns[missing[0]].get('image_id')!r}); "
                f"every prediction needs a score (a detector's confidence, or the pseudo-mask's confidence)"
            )
    raise EvalInputError(
        f"predictions {source}: no prediction has a score (looked for {' or '.join(repr(k) for k in SCORE_KEYS)}); "
        "AP ranks predictions by score, so add a 'score' to every prediction, or name the field that "
        "holds it with --score-key (Python: score_key=...)"
    )


def load_predictions(
    predictions: str | os.PathLike[str] | Sequence[Mapping[str, Any]] | Mapping[str, Any],
    gt: GroundTruth,
    score_key: str | None = None,
) -> Predictions:
    """Load and check predictions against the ground truth's images.

    Args:
        predictions: path to a JSON file, a COCO results list (``image_id``, ``score``,
            ``segmentation`` and/or ``bbox``), or a pseudo-mask COCO dict with ``annotations``
            (e.g. from ``cuts3d extract``; its ``score`` or else ``confidence_score`` is the score).
        gt: the loaded ground truth (for image ids and sizes).
        score_key: field holding the score; ``None`` tries ``score`` then ``confidence_score``.

    Masks may be compressed RLE (``counts`` as ``str`` or ``bytes``), uncompressed RLE
    (``counts`` as a list of run lengths), polygons, or (H, W) 0/1 arrays; all become compressed
    RLE and every one is decoded and checked. Category ids are ignored (class-agnostic). When a
    pseudo-mask JSON lists its ``images`` with file names, they are matched to the ground truth's
    by relative path (:func:`cuts3d.eval.matching.match_by_path`) and its image ids mapped to the
    ground truth's; when none matches, image ids are used as given (with a note).

    Raises:
        EvalInputError: empty predictions, predictions for images not in the ground truth (named),
            file names that match ambiguously or only in part, missing or non-finite scores, mask
            sizes that differ from the image's (says whether they look swapped), masks that do not
            decode (RLE that is not RLE, bad polygons), boxes not in [x, y, width, height] pixels.
    """
    data, source = _resolve_pred_source(predictions)
    images_by_pred_id: dict[Any, Mapping[str, Any]] = {}
    if isinstance(data, Mapping):
        if not isinstance(data.get("annotations"), list):
            keys = ", ".join(sorted(map(str, data.keys()))[:8])
            raise EvalInputError(
                f"predictions {source} is a JSON object without an 'annotations' list (keys: {keys}); give a "
                "COCO results list or a pseudo-mask COCO JSON with 'annotations'"
            )
        anns: Sequence[Mapping[str, Any]] = data["annotations"]
        kind = "pseudo-mask COCO JSON"
        for img in data.get("images") or []:
            if isinstance(img, Mapping) and "id" in img:
                images_by_pred_id[img["id"]] = img
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        anns = data
        kind = "results list"
    else:
        raise EvalInputError(f"predictions {source} must be a JSON list of results or a COCO dict")
    if len(anns) == 0:
        raise EvalInputError(
            f"predictions {source} are empty (0 predictions); there is nothing to evaluate. Check that the "
            "detector / pseudo-mask extraction wrote its output (an all-miss run has AP 0 by definition)"
        )
    bad = [i for i, a in enumerate(anns) if not isinstance(a, Mapping)]
    if bad:
        raise EvalInputError(f"predictions {source}: entry #{bad[0]} is not an object ({len(bad)} such entries)")

    missing_id = [i for i, a in enumerate(anns) if "image_id" not in a]
    if missing_id:
        raise EvalInputError(
            f"predictions {source}: {len(missing_id)} predictions have no 'image_id' (first: #{missing_id[0]})"
        )
    # ids are dict keys below: a list or dict id would raise TypeError deep inside
    odd_id = [i for i, a in enumerate(anns) if not is_image_id(a["image_id"])]
    if odd_id:
        i = odd_id[0]
        raise EvalInputError(
            f"predictions {source}: prediction #{i} has image_id {anns[i]['image_id']!r}; an image id is a number "
            f"or a string ({len(odd_id)} such prediction{'s' if len(odd_id) > 1 else ''})"
        )

    # image ids, mapped by relative path when a pseudo-mask JSON names its images
    warnings: list[str] = []
    id_map: dict[Any, Any] = {}
    remapped = 0
    file_names: dict[Any, str] = {}  # prediction image id -> file name, for messages
    if images_by_pred_id:
        wanted = list(dict.fromkeys(a["image_id"] for a in anns))
        match = match_by_path(images_by_pred_id, gt.images, wanted, source, gt.source)
        file_names = {pid: str(img["file_name"]) for pid, img in images_by_pred_id.items() if img.get("file_name")}
        if match.ids:
            left = [repr(file_names[p]) for p in match.unmatched]
            left += [f"image id {p!r} (no file name)" for p in match.unnamed]
            if left:
                shown = ", ".join(left[:10]) + (", ..." if len(left) > 10 else "")
                raise EvalInputError(
                    f"predictions {source}: {len(left)} of {len(wanted)} images with predictions match no image of "
                    f"the ground truth {gt.source} by file name ({len(match.ids)} do): {shown}; evaluate against the "
                    "ground truth of the images the predictions were made on, or drop those images' predictions"
                )
            id_map = match.ids
            remapped = sum(pid != gid for pid, gid in id_map.items())
        elif match.unmatched:
            warnings.append(
                f"none of the {len(match.unmatched)} image file names of the predictions (e.g. "
                f"{file_names[match.unmatched[0]]!r}) occurs in the ground truth; images are matched by image id"
            )
    image_ids = [id_map.get(a["image_id"], a["image_id"]) for a in anns]
    unknown = sorted({i for i in image_ids if i not in gt.images}, key=str)
    if unknown:
        hint = ""
        if any(isinstance(u, str) for u in unknown) and any(not isinstance(g, str) for g in gt.images):
            hint = " (image ids are compared by value and type: the string '139' is not the number 139)"
        raise EvalInputError(
            f"predictions {source} refer to {len(unknown)} image "
            f"{'id that is' if len(unknown) == 1 else 'ids that are'} not in the ground truth "
            f"{gt.source}: {preview(unknown)}{hint}. Evaluate against the ground truth of the images the "
            "predictions were made on, or drop those predictions"
        )

    score_field = _pick_score_field(anns, score_key, source)
    scores: list[float] = []
    for i, a in enumerate(anns):
        s = a[score_field]
        if not is_number(s):
            raise EvalInputError(
                f"predictions {source}: prediction #{i} (image_id {a['image_id']!r}) has {score_field} {s!r}, "
                "which is not a number; scores must be single numbers"
            )
        if not math.isfinite(float(s)):
            n_bad = sum(1 for b in anns if is_number(b[score_field]) and not math.isfinite(float(b[score_field])))
            raise EvalInputError(
                f"predictions {source}: {n_bad} predictions have a NaN or infinite {score_field!r} (first: #{i}, "
                f"image_id {a['image_id']!r}, {score_field}={s!r}); fix the model output or drop them"
            )
        scores.append(float(s))

    records: list[dict[str, Any]] = []
    for i, (img_id, s) in enumerate(zip(image_ids, scores, strict=True)):
        records.append({"image_id": img_id, "score": s, "segmentation": None, "bbox": None, "_index": i})
    _check_masks(anns, records, gt, source, file_names)
    warnings.extend(_check_boxes(anns, records, gt, source))
    for r in records:
        del r["_index"]

    # category ids are only reported (all become 1); a list or dict id is shown as its repr, not a TypeError
    found = {_reportable(a.get("category_id")) for a in anns}
    cats = sorted(found, key=lambda c: (type(c).__name__, c if is_number(c) else str(c)))
    per_image = Counter(r["image_id"] for r in records)
    without = [i for i in gt.images if i not in per_image]
    if without:
        n_inst = Counter(a["image_id"] for a in gt.dataset["annotations"] if not a["iscrowd"])
        missed = sum(n_inst[i] for i in without)
        warnings.append(
            f"{len(without)} of {len(gt.images)} ground-truth images have no prediction; "
            + (f"their {missed} instances count as misses" if missed else "they hold no ground-truth instance")
        )
    return Predictions(
        records=records,
        source=source,
        kind=kind,
        score_field=score_field,
        source_category_ids=cats,
        remapped_by_file_name=remapped,
        warnings=warnings,
    )


def _where(source: str, i: int, image_id: Any, file_names: Mapping[Any, str]) -> str:
    """``predictions FILE: prediction #i (image_id X, 'a/x.jpg')`` for messages."""
    name = file_names.get(image_id)
    return f"predictions {source}: prediction #{i} (image_id {image_id!r}{', ' + repr(name) if name else ''})"


def _check_masks(
    anns: Sequence[Mapping[str, Any]],
    records: list[dict[str, Any]],
    gt: GroundTruth,
    source: str,
    file_names: Mapping[Any, str],
) -> None:
    """Turn every prediction mask into compressed RLE (``str`` counts), decode every one, check its size.

    Args:
        anns: the predictions as given.
        records: their records (``image_id`` already the ground truth's, ``_index`` the input
            position); ``segmentation`` is filled in.
        gt: the ground truth (image sizes).
        source: the predictions' file name, for messages.
        file_names: prediction image id -> file name (pseudo-mask JSON), for messages.
    """
    wrong_size: list[tuple[int, list[int], tuple[int, int]]] = []
    encoded: list[tuple[int, str, int]] = []  # (record position, counts, h * w)
    for k, (a, rec) in enumerate(zip(anns, records, strict=True)):
        seg = a.get("segmentation")
        if seg is None or (isinstance(seg, (list, tuple)) and len(seg) == 0):
            continue
        img = gt.images[rec["image_id"]]
        h, w = int(img["height"]), int(img["width"])
        try:
            rle = to_rle(seg, h, w)
        except MaskSizeError as exc:
            wrong_size.append((rec["_index"], exc.size, (h, w)))
            continue
        except MaskError as exc:
            raise EvalInputError(f"{_where(source, rec['_index'], a['image_id'], file_names)}: {exc}") from None
        rec["segmentation"] = rle
        encoded.append((k, rle["counts"], h * w))
    if wrong_size:
        i, size, (h, w) = wrong_size[0]
        swapped = [x for x in wrong_size if x[1] == [x[2][1], x[2][0]] and x[2][0] != x[2][1]]
        if len(swapped) == len(wrong_size):
            advice = (
                "they look swapped: COCO RLE 'size' is [height, width]; encode the mask as an (height, width) "
                "array (pycocotools.mask.encode(np.asfortranarray(mask)))"
            )
        else:
            advice = (
                "they do not look swapped" if not swapped else f"{len(swapped)} of them look swapped ([width, height])"
            ) + (
                "; the masks were probably made at another resolution: resize masks to the original image size "
                "(nearest neighbour) before encoding"
            )
        n = len(wrong_size)
        raise EvalInputError(
            f"predictions {source}: {n} mask{' has' if n == 1 else 's have'} a size that differs from the "
            "image's; first: "
            f"prediction #{i} (image_id {anns[i]['image_id']!r}) has size {size} (height, width) but the image is "
            f"{h} x {w} (height x width); {advice}"
        )
    # pycocotools scores whatever a counts string "decodes" to (garbage gives areas near 2**32):
    # decode every mask here, all at once, and refuse the file if one is not a mask of its image
    problems = rle_problems([c for _, c, _ in encoded], [n for _, _, n in encoded])
    bad = [(k, p) for (k, _, _), p in zip(encoded, problems, strict=True) if p is not None]
    if bad:
        k, reason = bad[0]
        n = len(bad)
        raise EvalInputError(
            f"{_where(source, records[k]['_index'], anns[k]['image_id'], file_names)}: mask is not a valid COCO RLE: "
            f"{reason} ({n} invalid mask{'s' if n > 1 else ''} in all); nothing was scored. Encode masks with "
            "pycocotools.mask.encode(np.asfortranarray(mask)) and store counts as the ASCII string it returns"
        )


def _check_boxes(
    anns: Sequence[Mapping[str, Any]], records: list[dict[str, Any]], gt: GroundTruth, source: str
) -> list[str]:
    """Check every given box is [x, y, width, height] in pixels; returns warnings."""
    boxes: list[tuple[int, list[float], float, float]] = []  # (record index, box, image w, image h)
    for k, (a, rec) in enumerate(zip(anns, records, strict=True)):
        bb = a.get("bbox")
        if bb is None or (isinstance(bb, (list, tuple)) and len(bb) == 0):
            if rec["segmentation"] is None:
                raise EvalInputError(
                    f"predictions {source}: prediction #{rec['_index']} (image_id {a['image_id']!r}) has neither "
                    "'segmentation' nor 'bbox'"
                )
            continue
        where = f"predictions {source}: prediction #{rec['_index']} (image_id {a['image_id']!r})"
        if not (isinstance(bb, (list, tuple, np.ndarray)) and len(bb) == 4 and all(is_number(v) for v in bb)):
            raise EvalInputError(f"{where}: bbox must be 4 numbers [x, y, width, height] in pixels, got {bb!r}")
        box = [float(v) for v in bb]
        if not all(math.isfinite(v) for v in box):
            raise EvalInputError(f"{where}: bbox {bb!r} has a NaN or infinite value")
        if box[2] < 0 or box[3] < 0:
            raise EvalInputError(
                f"{where}: bbox {bb!r} has a negative width or height; COCO boxes are [x, y, width, height]"
            )
        img = gt.images[rec["image_id"]]
        rec["bbox"] = box
        boxes.append((k, box, float(img["width"]), float(img["height"])))
    if not boxes:
        return []

    arr = np.array([b for _, b, _, _ in boxes])  # (N, 4) x, y, w, h
    wh = np.array([[w, h] for _, _, w, h in boxes])  # (N, 2) image width, height
    if arr.max() <= 1.0 + 1e-6 and wh.min() > 2 and arr[:, 2:].max() > 0:
        raise EvalInputError(
            f"predictions {source}: every bbox lies in [0, 1]: the boxes look normalised; COCO boxes are "
            "[x, y, width, height] in pixels of the original image (multiply by the image width / height)"
        )
    tol = 1.0 + 0.01 * wh  # pixels
    over = (arr[:, :2] + arr[:, 2:] > wh + tol).any(axis=1)  # extends past the right / bottom border
    # would the box be a valid [x1, y1, x2, y2] box inside the image?
    xyxy_ok = (arr[:, 2:] >= arr[:, :2] - 0.5).all(axis=1) & (arr[:, 2:] <= wh + tol).all(axis=1)
    looks_xyxy = False
    # with masks: compare given boxes with the tight boxes of the masks
    with_mask = [(j, k) for j, (k, _, _, _) in enumerate(boxes) if records[k]["segmentation"] is not None]
    if with_mask:
        mbox = mask_utils.toBbox([records[k]["segmentation"] for _, k in with_mask])  # (M, 4) xywh
        given = arr[[j for j, _ in with_mask]]
        nonempty = (mbox[:, 2] > 0) & (mbox[:, 3] > 0)
        if nonempty.any():
            as_xywh = np.abs(given - mbox).max(axis=1) <= 2.0
            as_xyxy = np.abs(given[:, 2:] - (mbox[:, :2] + mbox[:, 2:])).max(axis=1) <= 2.0
            as_xyxy &= np.abs(given[:, :2] - mbox[:, :2]).max(axis=1) <= 2.0
            n_xyxy, n_xywh = int((as_xyxy & ~as_xywh & nonempty).sum()), int((as_xywh & nonempty).sum())
            looks_xyxy = n_xyxy > max(n_xywh, 0.5 * int(nonempty.sum()))
    if not looks_xyxy and over.any() and xyxy_ok.all():
        looks_xyxy = True
    if looks_xyxy:
        k = boxes[int(np.argmax(over))][0] if over.any() else boxes[0][0]
        raise EvalInputError(
            f"predictions {source}: the boxes look like [x1, y1, x2, y2] corners (e.g. prediction #{k}, image_id "
            f"{anns[k]['image_id']!r}: bbox {anns[k]['bbox']!r}); COCO boxes are [x, y, width, height]: convert "
            "with width = x2 - x1, height = y2 - y1"
        )
    warnings = []
    if over.any():
        k = boxes[int(np.argmax(over))][0]
        warnings.append(
            f"{int(over.sum())} boxes extend past the image border by more than 1 % (e.g. prediction #{k}: "
            f"bbox {anns[k]['bbox']!r}); they are evaluated as given"
        )
    return warnings
