"""Shards, crash-safe per-shard logs and merging into one COCO JSON (the extraction job around paper Sec. 3).

A job over many images is split deterministically into n shards (image k of the sorted list goes to shard
k mod n). Each finished image is one JSON line appended to ``OUT/shards/shard-<i>-of-<n>.jsonl`` and flushed
to disk, so a killed job loses at most the image in flight; a restart skips every image already in the log
and cuts off a torn last line. :func:`merge` reads the logs of one or more output folders, keeps each image
once, sorts by relative path, renumbers image and annotation ids from 1 and writes ``annotations.json`` and
``errors.jsonl`` atomically.

Log line::

    {"rel": "a/b.jpg", "image": {"width": W, "height": H}, "annotations": [...], "issues": [...]}

``issues`` lists ``{"stage", "reason", "level"}`` records (level "error": the image produced no masks;
"warning": it did, e.g. constant depth).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

SHARD_DIR = "shards"


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(v) for v in spec.split("/"))
    except ValueError as err:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {spec!r}") from err
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {spec!r}: need 0 <= i < n")
    return i, n


def shard_items(items: list, index: int, count: int) -> list:
    """Deterministic partition: item k goes to shard k mod count."""
    return items[index::count]


def shard_log_path(output: Path, index: int, count: int) -> Path:
    return Path(output) / SHARD_DIR / f"shard-{index:05d}-of-{count:05d}.jsonl"


def read_log(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Records of a shard log.

    Every record ends with a newline; bytes after the last newline are a record torn by a crash. They are
    ignored, and cut off the file when ``repair`` (so the image is redone). A complete line that is not
    JSON is an error naming the file and line.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if repair and len(complete) < len(data):
        with path.open("r+b") as f:
            f.truncate(len(complete))
    records = []
    for number, line in enumerate(complete.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as err:
            raise ValueError(f"{path}: line {number} is not valid JSON ({err}); delete that line to redo its image") from err
    return records


class ShardLog:
    """Append-only, flushed-per-record log of one shard."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done = {r["rel"] for r in read_log(self.path, repair=True)}
        self._file = self.path.open("a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.add(record["rel"])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "ShardLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and os.replace, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def collect(outputs: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """Records of every shard log under the given output folders, one per image (first seen wins)."""
    records: dict[str, dict[str, Any]] = {}
    for out in outputs:
        logs = sorted((Path(out) / SHARD_DIR).glob("shard-*.jsonl"))
        if not logs:
            raise FileNotFoundError(f"{out}: no shard logs in {Path(out) / SHARD_DIR}; run `cuts3d extract` first")
        for log in logs:
            for r in read_log(log):
                records.setdefault(r["rel"], r)
    return records


def merge(outputs: Iterable[Path], destination: Path, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge shard logs into ``destination/annotations.json`` (+ ``errors.jsonl``); returns the COCO dict."""
    records = collect(outputs)
    images, annotations, issues = [], [], []
    for rel in sorted(records):
        r = records[rel]
        for issue in r.get("issues", []):
            issues.append({"image": rel, **issue})
        if r.get("image") is None:
            continue  # could not be loaded: only in errors.jsonl
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": rel, **r["image"]})
        for ann in r["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    coco = {
        "info": info or {"description": "cuts3d pseudo-masks"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
    }
    destination = Path(destination)
    atomic_write_text(destination / "annotations.json", json.dumps(coco))
    atomic_write_text(destination / "errors.jsonl", "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in issues))
    return coco
