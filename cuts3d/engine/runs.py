"""Run folders of ``cuts3d train``: what a run is, its settings fingerprint, and the checks before any model.

Usage::

    from cuts3d.engine.runs import check_training_data, fingerprint, fingerprint_differences, existing_run_files
    data_sha256 = check_training_data(cfg.data, cfg.images)        # TrainSetupError before any model is built
    diffs = fingerprint_differences(state["fingerprint"], fingerprint(cfg.to_dict(), data_sha256))

A run folder holds one run. Restarting into it must never mix two: ``--resume`` continues only with the
settings the checkpoint was trained with (:func:`fingerprint`: every setting that changes the trained weights,
and the sha256 of the pseudo-mask JSON; ``--force`` continues with new ones), and training without ``--resume``
into a folder that holds a run is refused (``--overwrite``: :func:`clear_run` deletes the old run's files first).
After a resume, ``metrics.jsonl`` is cut back to the checkpoint's iteration (:func:`truncate_metrics`), so the
iterations a crash re-runs appear once.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from cuts3d.features.weights import sha256_file
from cuts3d.io.atomic import check_writable_folder


class TrainSetupError(ValueError):
    """A training input or the run folder cannot be used; the message is one line naming the file and the fix."""


# TrainConfig fields that do not change the trained weights, or that a user may legitimately change between a
# run and its --resume: where the run writes (output) and how fast or how verbosely (workers, device, periods),
# where the images live (their list and masks come with the data JSON, fingerprinted by content), validation,
# and max_iter (training longer is what a resume is for).
NOT_FINGERPRINTED = frozenset({
    "data", "images", "output", "max_iter", "num_workers", "device", "log_period", "log_window",
    "checkpoint_period", "eval_period", "val_data", "val_images",
})

# What `cuts3d train` writes into a run folder; --overwrite deletes exactly these, nothing else the user put there.
RUN_FILES = ("last_checkpoint", "model_final.pth", "metrics.jsonl", "log.txt", "config.yaml", "backbone_weights.json")
RUN_GLOBS = ("model_*.pth", "model_*.pth.sha256", ".model_*.pth.tmp", "model_*.tmp")
RUN_DIRS = ("tb", "eval")
# Files whose presence means the folder holds (part of) a run: checkpoints or logged metrics.
RUN_MARKERS = ("last_checkpoint", "model_final.pth", "metrics.jsonl")


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so a config read from YAML and one built in Python compare equal."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def fingerprint(config: dict[str, Any], data_sha256: str | None) -> dict[str, Any]:
    """The settings of a run that change its trained weights, flat: ``{"lr": 0.01, "detector.x": ..,
    "data_sha256": HEX}`` (``detector`` entries one key each, so a difference names the entry).

    Args:
        config: ``TrainConfig.to_dict()`` (or the ``config`` saved in an older checkpoint).
        data_sha256: sha256 of the pseudo-mask JSON's bytes (None: unknown, e.g. an older checkpoint).
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in NOT_FINGERPRINTED:
            continue
        if key == "detector" and isinstance(value, dict):
            out.update({f"detector.{k}": _plain(v) for k, v in value.items()})
        else:
            out[key] = _plain(value)
    if data_sha256 is not None:
        out["data_sha256"] = data_sha256
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def fingerprint_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["lr 0.01 -> 0.02", "detector.x (unset) -> 3", ...]`` for every key whose value differs.

    A key only one side has counts as a difference for ``detector.*`` entries (an entry set on one side only);
    other keys only one side knows (fields added in a later version, the data hash of an older checkpoint) are
    skipped, since the older run did not record them.
    """
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key in old and key in new:
            if not _same(old[key], new[key]):
                diffs.append(f"{key} {_short(old[key])} -> {_short(new[key])}")
        elif key.startswith("detector."):
            diffs.append(f"{key} {_short(old.get(key, '(unset)'))} -> {_short(new.get(key, '(unset)'))}")
    return diffs


def _short(value: Any) -> str:
    text = value if isinstance(value, str) and value == "(unset)" else json.dumps(value)
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        text = value[:12] + "..."  # a sha256: enough to tell two apart on one line
    return text if len(text) <= 60 else text[:57] + "..."


def existing_run_files(run: str | Path) -> list[str]:
    """Names in ``run`` that show it holds a run (checkpoints, ``model_final.pth``, a non-empty ``metrics.jsonl``)."""
    run = Path(run)
    if not run.is_dir():
        return []
    # An empty metrics.jsonl is what a run that died before its first record leaves: nothing to mix with.
    found = [name for name in RUN_MARKERS if (run / name).exists()
             and not (name == "metrics.jsonl" and (run / name).stat().st_size == 0)]
    found += sorted(p.name for p in run.glob("model_*.pth") if p.name != "model_final.pth")
    return found


def existing_run_message(run: str | Path, found: list[str]) -> str:
    """The one-line refusal for training into a folder that holds a run."""
    shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
    return (f"{run} already holds a training run ({shown}); add --resume to continue it, --overwrite to delete its "
            "checkpoints and logs and start over, or pick another --output")


def clear_run(run: str | Path) -> list[str]:
    """Delete what an earlier run wrote into ``run`` (:data:`RUN_FILES`, :data:`RUN_GLOBS`, :data:`RUN_DIRS`);
    other files stay. Returns the names removed."""
    run = Path(run)
    removed: list[str] = []
    if not run.is_dir():
        return removed
    for name in RUN_FILES:
        path = run / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(name)
    for pattern in RUN_GLOBS:
        for path in sorted(run.glob(pattern)):
            if path.is_file():
                path.unlink()
                removed.append(path.name)
    for name in RUN_DIRS:
        if (run / name).is_dir():
            shutil.rmtree(run / name)
            removed.append(name + "/")
    return removed


def truncate_metrics(path: str | Path, last_iteration: int) -> int:
    """Drop the records of ``metrics.jsonl`` after ``last_iteration`` (written by a run that crashed after that
    checkpoint; the resumed run writes them again) and any line a kill cut short. Returns how many were dropped.

    The file is rewritten through a temporary file and a rename, so a kill here leaves the old or the new file.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            keep = int(record["iteration"]) <= last_iteration
        except (ValueError, TypeError, KeyError):  # half a line from a kill, or not a record: not a metric
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return dropped


def check_writable(run: str | Path) -> None:
    """Create ``run`` and write a probe file in it, so a read-only, foreign or full output fails before any model
    is built.

    Raises:
        TrainSetupError: one line naming the folder and the fix.
    """
    try:
        check_writable_folder(run)
    except OSError as err:
        raise TrainSetupError(f"--output {run}: cannot write there ({os_reason(err)}); {os_fix(err)}") from None


def os_reason(err: OSError) -> str:
    """``strerror`` of an OSError (``No space left on device``), or its text."""
    return err.strerror or str(err)


def os_fix(err: OSError) -> str:
    """What to do about a write error: free space, or another folder / other permissions."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full: free space (or pick another --output), then rerun (with --resume once checkpoints exist)"
    return "pick another --output or fix the folder's permissions"


def check_training_data(data: str | Path, images: str | Path, flag: str = "--data") -> str:
    """Check the pseudo-mask JSON and that every image with an annotation exists; returns the JSON's sha256.

    Only images with at least one annotation are checked (the others are never loaded for training). One stat
    per image: a second per 100k images on a local disk.

    Raises:
        TrainSetupError: the JSON is missing, not JSON, not a COCO mapping with ``images`` and ``annotations``,
            lists no annotated image, or images are missing under ``images``.
    """
    data, root = Path(data), Path(images)
    fix = "pass the annotations.json written by `cuts3d extract` (or `cuts3d merge`)"
    if not str(data) or not data.is_file():
        raise TrainSetupError(f"{flag} {data}: no such file; {fix}")
    try:
        coco = json.loads(data.read_bytes())
    except (UnicodeDecodeError, ValueError) as err:
        where = f" at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise TrainSetupError(f"{flag} {data}: not JSON{where}; {fix}") from None
    except RecursionError:  # hostile nesting: json's recursive decoder gives up
        raise TrainSetupError(f"{flag} {data}: JSON nested too deeply; {fix}") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) or not isinstance(coco.get("annotations"), list):
        raise TrainSetupError(f"{flag} {data}: not a COCO mapping with 'images' and 'annotations' lists; {fix}")
    try:
        annotated = {int(a["image_id"]) for a in coco["annotations"]}
        names = [str(im["file_name"]) for im in coco["images"] if int(im["id"]) in annotated]
    except (KeyError, TypeError, ValueError) as err:
        raise TrainSetupError(f"{flag} {data}: an image or annotation lacks {err} (id, file_name, image_id); {fix}") from None
    if not names:
        raise TrainSetupError(f"{flag} {data}: no image has a pseudo-mask, nothing to train on; check the extraction's "
                              "errors.jsonl and settings")
    if not root.is_dir():
        raise TrainSetupError(f"--images {root}: no such folder; pass the folder {data.name}'s file_name entries are "
                              "relative to")
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise TrainSetupError(f"{len(missing)} of {len(names)} training images listed in {data} are missing under "
                              f"{root} (e.g. {', '.join(missing[:3])}); pass as --images the folder the file_name "
                              "entries are relative to, or re-extract without the removed images")
    return sha256_file(data)
