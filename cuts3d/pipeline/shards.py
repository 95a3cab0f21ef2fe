"""Shards, crash-safe per-shard logs, a per-shard lock and merging into one COCO JSON (the job around paper Sec. 3).

A job over many images is split deterministically into n shards (image k of the sorted list goes to shard
k mod n). Each finished image is one JSON line appended to ``OUT/shards/shard-<i>-of-<n>.jsonl`` and flushed
to disk as soon as that image is done, so a killed job loses at most the image in flight; a restart skips
every image whose latest record succeeded, retries the ones that failed (a re-copied file gets its second
chance) and cuts off a torn last line.

Beside each log:

* ``shard-<i>-of-<n>.jsonl.lock``: an exclusive ``flock`` held while a process writes the shard (its text
  names the host and pid). A second writer is refused (:class:`ShardLockedError`); the kernel releases the
  lock when the holder dies, so a killed job leaves no stale lock.
* ``shard-<i>-of-<n>.input.json``: the shard's images of its latest run (``{"shard": "i/n", "images":
  [rel, ...]}``), so that :func:`merge` can tell a finished shard from an unfinished one and drop images
  that are no longer in the input.

:func:`merge` reads the logs of one or more output folders, keeps each image once, sorts by relative path,
renumbers image and annotation ids from 1 and writes ``annotations.json`` and ``errors.jsonl`` atomically.
It refuses to write a partial result (missing shards, unfinished shards, images without a record) unless
``allow_partial``; images that failed appear only in ``errors.jsonl``, never as images with 0 annotations.

Log line::

    {"rel": "a/b.jpg", "image": {"width": W, "height": H}, "annotations": [...], "issues": [...]}

``issues`` lists ``{"stage", "reason", "level"}`` records (level "error": the image failed at that stage and
produced no masks; "warning": it did, e.g. constant depth).

File names that are not valid UTF-8 reach Python as strings with lone surrogates (``surrogateescape``: byte
0xE9 -> ``"\\udce9"``). Logs, inputs and ``errors.jsonl`` write such a character as the JSON escape
``\\udce9`` (:func:`json_line`); Python's ``json`` reads it back to the same string, which opens the file on
disk. ``annotations.json`` escapes every non-ASCII character the same way (``json.dumps`` default).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Container, Iterable, Iterator, Mapping, Sequence

from cuts3d.io.atomic import atomic_write

SHARD_DIR = "shards"
_LOG_NAME = re.compile(r"^shard-(\d+)-of-(\d+)\.jsonl$")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class ShardLockedError(RuntimeError):
    """Another process holds the shard's lock (or the file system cannot lock)."""


class IncompleteMergeError(RuntimeError):
    """Shards or images are missing from a merge that was not allowed to be partial."""


def json_line(obj: Any) -> str:
    """``obj`` as one line of JSON, non-ASCII text kept readable; lone surrogates (undecodable bytes of file
    names) as ``\\udcXX`` escapes, since UTF-8 cannot encode them."""
    text = json.dumps(obj, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def display_name(rel: str) -> str:
    """A file name for a message: undecodable bytes as ``\\xe9`` instead of characters a terminal cannot print."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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


def lock_path(log: Path) -> Path:
    """The lock file of a shard log."""
    return Path(log).with_name(Path(log).name + ".lock")


def input_path(log: Path) -> Path:
    """The file listing a shard's images of its latest run (see the module docstring)."""
    return Path(log).with_name(Path(log).name[: -len(".jsonl")] + ".input.json")


def is_failed(record: Mapping[str, Any]) -> bool:
    """True when the image failed at some stage (not loaded, or an error-level issue): it has no masks."""
    return record.get("image") is None or any(i.get("level") == "error" for i in record.get("issues", []))


def _scan(path: Path, repair: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(byte offset, record) of each complete line of a shard log, read one line at a time.

    Only one record is alive at a time, so callers that keep a few keys of each (names, offsets) use memory
    bounded by what they keep, not by the log's size (an ImageNet log holds GB of RLE). Bytes after the
    last newline are a record torn by a crash: ignored, and cut off the file when ``repair`` (so the image is
    redone). A complete line that is not JSON is an error naming the file and line.
    """
    if not path.exists():
        return
    end = 0  # the byte after the last complete line
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                break  # torn last line (a crash mid-write)
            offset, end = end, end + len(line)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{path}: line {number} is not valid JSON ({err}); delete that line to redo its image") from err
            yield offset, record
        torn = f.seek(0, os.SEEK_END) > end
    if repair and torn:
        with path.open("r+b") as f:
            f.truncate(end)


def read_log(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Records of a shard log, in write order (an image that was retried has several; the last one counts).

    Every record ends with a newline; bytes after the last newline are a record torn by a crash. They are
    ignored, and cut off the file when ``repair`` (so the image is redone). A complete line that is not
    JSON is an error naming the file and line.
    """
    return [record for _, record in _scan(Path(path), repair)]


def logged_status(path: Path, repair: bool = False) -> dict[str, bool]:
    """rel -> whether the image's latest record in one shard log failed; the records' masks are not kept.

    What resuming and completeness checks need, in memory bounded by the names (see :func:`_scan`).
    """
    return {record["rel"]: is_failed(record) for _, record in _scan(Path(path), repair)}


def latest_records(path: Path) -> dict[str, dict[str, Any]]:
    """rel -> the last record of each image in one shard log (a retry supersedes the earlier failure)."""
    return {r["rel"]: r for r in read_log(path)}


def _lock_holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "another process"
    return text or "another process"


class ShardLog:
    """Append-only, flushed-per-record log of one shard, locked against a second writer while open.

    Attributes:
        done: images whose latest record succeeded (a restart skips them).
        failed: images whose latest record is a failure (a restart retries them).
    """

    def __init__(self, path: Path, lock: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = self._acquire() if lock else None
        try:
            # Only names and status: holding the shard's records (its masks) here would cost GB on ImageNet.
            latest = logged_status(self.path, repair=True)
            self.done = {rel for rel, failed in latest.items() if not failed}
            self.failed = set(latest) - self.done
            self._file = self.path.open("a", encoding="utf-8")
        except BaseException:
            self._release()
            raise

    def _acquire(self) -> int:
        """Take the exclusive, non-blocking flock of the shard; returns its file descriptor."""
        path = lock_path(self.path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ShardLockedError(
                f"{self.path}: this shard is already being written by {_lock_holder(path)}; wait for that job to "
                "finish or stop it (two writers would process every image twice)"
            ) from None
        except OSError as err:
            os.close(fd)
            raise ShardLockedError(
                f"{path}: cannot lock the shard ({err.strerror}); put the output folder on a file system that "
                "supports flock (local disk, NFSv4, Lustre with flock enabled)"
            ) from None
        # Who holds it, for the second writer's message; written after the lock is ours.
        os.ftruncate(fd, 0)
        holder = f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        os.pwrite(fd, holder.encode(), 0)
        return fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(json_line(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if is_failed(record):
            self.failed.add(record["rel"])
            self.done.discard(record["rel"])
        else:
            self.done.add(record["rel"])
            self.failed.discard(record["rel"])

    def close(self) -> None:
        self._file.close()
        self._release()

    def __enter__(self) -> "ShardLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_inputs(log: Path, spec: str, rels: Sequence[str]) -> None:
    """Record the images a shard was given in this run (read by :func:`merge`)."""
    atomic_write_text(input_path(log), json_line({"shard": spec, "images": list(rels)}) + "\n")


def shard_is_locked(log: Path) -> str | None:
    """Who holds the shard's lock (its text), or None when nobody does."""
    path = lock_path(log)
    if not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _lock_holder(path)
    finally:
        os.close(fd)  # also releases the shared lock if it was taken
    return None


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` via a temporary file in the same folder and os.replace, so readers never see half a file.

    The file gets the permissions the umask asks for (not mkstemp's 0600), and the temporary file's name
    carries host and pid so that one left by a kill is cleaned at the next start (:mod:`cuts3d.io.atomic`).
    """
    atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


# --- merging ----------------------------------------------------------------------------------------------------

CATEGORIES = [{"id": 1, "name": "object", "supercategory": "object"}]
"""The one class of the merged JSON (class-agnostic pseudo-masks)."""

INFO_KEYS = ("method", "backbone", "depth", "confidence_floor")
"""The settings recorded in the merged ``info`` (and required to agree between merged folders)."""


def run_info(config: Mapping[str, Any]) -> dict[str, Any]:
    """The COCO ``info`` of an extraction from its resolved settings (``ExtractConfig.to_dict()`` / config.yaml).

    ``confidence_floor`` is the c_min the SC maps were clipped at: training's Table 5c switch reads it to
    refuse a lower floor, which the maps cannot provide (cuts3d.data.dataset).
    """
    cut = config.get("cut") or {}
    return {"description": "cuts3d pseudo-masks", "method": cut.get("method"), "backbone": config.get("backbone"),
            "depth": config.get("depth"), "confidence_floor": cut.get("confidence_floor")}


def read_run_info(outputs: Sequence[Path]) -> dict[str, Any] | None:
    """The ``info`` of the runs in ``outputs``: from each folder's ``config.yaml``, else its ``annotations.json``.

    Raises:
        ValueError: two folders were extracted with another method, backbone, depth or confidence floor.
    """
    import yaml

    found: list[tuple[Path, dict[str, Any]]] = []
    for out in outputs:
        config, previous = Path(out) / "config.yaml", Path(out) / "annotations.json"
        info = None
        try:
            if config.is_file():
                loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
                info = run_info(loaded) if isinstance(loaded, dict) else None
            if info is None and previous.is_file():
                loaded = json.loads(previous.read_text(encoding="utf-8")).get("info")
                info = loaded if isinstance(loaded, dict) else None
        except (OSError, ValueError, yaml.YAMLError):
            info = None  # unreadable settings only cost the info, which is then left generic
        if info is not None:
            found.append((config if config.is_file() else previous, info))
    if not found:
        return None
    first_file, first = found[0]
    for other_file, other in found[1:]:
        for key in INFO_KEYS:
            if other.get(key) != first.get(key):
                raise ValueError(
                    f"{first_file} and {other_file} differ in {key} ({first.get(key)!r} vs {other.get(key)!r}); "
                    "merge only the outputs of one setting"
                )
    return first


def _pick(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Across logs: a success beats a failure; otherwise the first record seen stays."""
    if old is None or (is_failed(old) and not is_failed(new)):
        return new
    return old


def collect(outputs: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """Records of every shard log under the given output folders, one per image.

    Within one log the last record of an image counts (a retry supersedes a failure); across logs a success
    beats a failure, otherwise the first seen wins.
    """
    records: dict[str, dict[str, Any]] = {}
    for log in _logs(outputs):
        for rel, r in latest_records(log).items():
            records[rel] = _pick(records.get(rel), r)
    return records


def _logs(outputs: Iterable[Path]) -> list[Path]:
    """Every shard log of the given output folders; a folder that is missing or holds none is an error."""
    logs: list[Path] = []
    for out in outputs:
        out = Path(out)
        if not out.is_dir():
            raise FileNotFoundError(
                f"{out} does not exist or is not a folder; pass the --output folder of `cuts3d extract`"
            )
        found = sorted((out / SHARD_DIR).glob("shard-*.jsonl"))
        if not found:
            raise FileNotFoundError(f"{out}: no shard logs in {out / SHARD_DIR}; run `cuts3d extract` first")
        logs += found
    return logs


@dataclass
class MergeResult:
    """What :func:`merge` wrote and noticed.

    The merged COCO dict is not held in memory (on ImageNet it is several GB): :attr:`coco` reads it back from
    :attr:`path` on first use, for callers (tests, small jobs) that want it whole.

    Attributes:
        path: the written ``annotations.json``.
        num_images: images in it (successful, not dropped).
        num_annotations: annotations (masks) in it.
        issues: the ``errors.jsonl`` lines (image, stage, reason, level).
        failed: images that failed (in ``errors.jsonl`` only, not in ``coco["images"]``).
        dropped: images with a record that are no longer in the input (left out, with a warning).
        incomplete: one line per missing / unfinished shard (non-empty only with ``allow_partial``).
        warnings: lines for the user (dropped images, a partial merge).
    """

    path: Path | None = None
    num_images: int = 0
    num_annotations: int = 0
    issues: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _coco: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def coco(self) -> dict[str, Any]:
        """The COCO dict of ``annotations.json``, read from :attr:`path` once (loads every mask: small jobs only)."""
        if self._coco is None:
            if self.path is None:
                raise ValueError("this merge result has no annotations.json to read")
            self._coco = json.loads(Path(self.path).read_text(encoding="utf-8"))
        return self._coco


class _ImageIndex:
    """rel -> where an image's winning record is (log, byte offset) and what the images list needs of it.

    The only per-image state of :func:`merge`. Fixed-width columns in arrays instead of a tuple/dict per image
    (about 25 bytes per image plus the name and its dict slot, instead of several hundred), so that ImageNet's
    index stays in the tens of MB.
    """

    def __init__(self) -> None:
        self.slots: dict[str, int] = {}
        self.log = array("i")
        self.offset = array("q")
        self.failed = bytearray()
        self.width = array("q")
        self.height = array("q")
        self.masks = array("q")
        # Image entries other than {"width": int, "height": int} (none written by extract; kept exact for others).
        self.other_images: dict[int, dict[str, Any]] = {}

    def is_failed(self, rel: str) -> bool:
        return bool(self.failed[self.slots[rel]])

    def set(self, rel: str, log: int, offset: int, failed: bool, image: Mapping[str, Any] | None, masks: int) -> None:
        """Point ``rel`` at its record in log number ``log`` at byte ``offset``, replacing what it pointed at."""
        slot = self.slots.get(rel)
        if slot is None:
            slot = self.slots[rel] = len(self.log)
            for column in (self.log, self.offset, self.width, self.height, self.masks):
                column.append(0)
            self.failed.append(0)
        self.log[slot], self.offset[slot], self.failed[slot], self.masks[slot] = log, offset, failed, masks
        self.other_images.pop(slot, None)
        if image is None:
            self.width[slot] = self.height[slot] = 0
        elif list(image) == ["width", "height"] and all(type(v) is int for v in image.values()):
            self.width[slot], self.height[slot] = image["width"], image["height"]
        else:
            self.other_images[slot] = dict(image)

    def image(self, rel: str) -> dict[str, Any]:
        """The record's ``image`` entry, keys in the record's order (the merged JSON must not change)."""
        slot = self.slots[rel]
        if slot in self.other_images:
            return self.other_images[slot]
        return {"width": self.width[slot], "height": self.height[slot]}


def _index_logs(logs: Sequence[Path]) -> _ImageIndex:
    """Pass 1 of :func:`merge`: the winning record of each image, by the rules of :func:`collect`.

    Within one log the last record counts; across logs a success beats a failure, otherwise the first seen
    wins. The latest records of one log are found first (offsets and status only) and then folded in, exactly
    as :func:`collect` folds whole logs (folding record by record would let a log's earlier success beat
    another log's failure that its own later failure should not beat).
    """
    index = _ImageIndex()
    for number, log in enumerate(logs):
        # rel -> (offset, failed, image, masks) of its latest record in this log; the masks are not kept.
        latest: dict[str, tuple[int, bool, Any, int]] = {}
        for offset, record in _scan(log):
            failed = is_failed(record)
            latest[record["rel"]] = (offset, failed, None if failed else record["image"], len(record.get("annotations", [])))
        for rel, (offset, failed, image, masks) in latest.items():
            if rel not in index.slots or (index.is_failed(rel) and not failed):
                index.set(rel, number, offset, failed, image, masks)
    return index


class _RecordReader:
    """Reads back one record of a log at a byte offset (pass 2 of :func:`merge`), keeping few files open."""

    MAX_OPEN = 64  # a merge of thousands of shards must not run out of file descriptors

    def __init__(self, logs: Sequence[Path]) -> None:
        self.logs = logs
        self.open: dict[int, BinaryIO] = {}

    def read(self, log: int, offset: int) -> dict[str, Any]:
        f = self.open.pop(log, None)
        if f is None:
            if len(self.open) >= self.MAX_OPEN:
                oldest = next(iter(self.open))
                self.open.pop(oldest).close()
            f = self.logs[log].open("rb")
        self.open[log] = f  # re-inserted last: the dict's order is the least recently used first
        f.seek(offset)
        return json.loads(f.readline())

    def close(self) -> None:
        for f in self.open.values():
            f.close()
        self.open.clear()


def _first_names(rels: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(display_name(r) for r in sorted(rels)[:n])
    return shown + (f" and {len(rels) - n} more" if len(rels) > n else "")


def _check_shards(logs: list[Path], covered: Container[str]) -> tuple[list[str], set[str] | None]:
    """(one line per missing or unfinished shard, the union of the shards' inputs or None if a log has none)."""
    present: dict[int, set[int]] = {}
    where: dict[int, set[str]] = {}
    problems: list[str] = []
    inputs: set[str] | None = set()
    for log in logs:
        m = _LOG_NAME.match(log.name)
        if m is None:
            inputs = None  # not a log this package names: nothing to check it against
            continue
        i, n = int(m.group(1)), int(m.group(2))
        present.setdefault(n, set()).add(i)
        where.setdefault(n, set()).add(str(log.parent.parent))
        listed = input_path(log)
        if not listed.is_file():
            inputs = None  # a log written before inputs were recorded: it counts as finished
            continue
        rels = json.loads(listed.read_text(encoding="utf-8")).get("images", [])
        if inputs is not None:
            inputs.update(rels)
        left = [r for r in rels if r not in covered]
        if left:
            holder = shard_is_locked(log)
            state = f"still running ({holder})" if holder else "unfinished (rerun its `cuts3d extract --shard` command)"
            problems.append(
                f"shard {i}/{n} in {log.parent.parent}: {len(left)} of {len(rels)} images without a record, {state}"
            )
    for n, indices in sorted(present.items()):
        for i in sorted(set(range(n)) - indices):
            problems.append(f"shard {i}/{n}: no log in {', '.join(sorted(where[n]))}")
    return problems, inputs


def merge(
    outputs: Iterable[Path],
    destination: Path,
    info: dict[str, Any] | None = None,
    expected: Sequence[str] | None = None,
    allow_partial: bool = False,
) -> MergeResult:
    """Merge shard logs into ``destination/annotations.json`` (+ ``errors.jsonl``).

    In two passes with memory bounded by the image names: pass 1 keeps, per image, where its winning record
    is (log, byte offset) and its status and size (:class:`_ImageIndex`); pass 2 streams ``annotations.json``
    (exactly the bytes ``json.dumps`` gives the whole COCO dict) reading the records back one at a time.

    Args:
        outputs: extraction output folders (each with ``shards/``).
        destination: folder of the merged files.
        info: the COCO ``info``; None reads it from the folders' ``config.yaml`` (see :func:`read_run_info`).
        expected: the input's relative paths (``ImageRecord.rel``); None takes them from the shards' recorded
            inputs and checks that no shard of an i/n split is missing.
        allow_partial: write what there is when shards or images are missing (with a warning) instead of raising.

    Raises:
        IncompleteMergeError: shards or images are missing and not ``allow_partial`` (one line naming them).
        FileNotFoundError: a folder is missing or has no shard logs.
        ValueError: a log line is corrupt, or the folders were extracted with other settings.
    """
    outputs = [Path(o) for o in outputs]
    logs = _logs(outputs)
    index = _index_logs(logs)  # pass 1: names, offsets, status; no masks
    if info is None:
        info = read_run_info(outputs)
    covered = index.slots
    if expected is not None:
        wanted: set[str] | None = set(expected)
        missing = sorted(wanted - covered.keys())
        incomplete = []
        if missing:
            incomplete.append(f"{len(missing)} input images without a record (first: {_first_names(missing, 3)})")
    else:
        incomplete, wanted = _check_shards(logs, covered)
    if incomplete and not allow_partial:
        raise IncompleteMergeError(
            f"cannot merge {', '.join(str(o) for o in outputs)}: {'; '.join(incomplete)}; finish those shards, "
            "or pass --allow-partial to write a partial result"
        )
    destination = Path(destination)
    result = MergeResult(path=destination / "annotations.json", incomplete=incomplete)
    if incomplete:
        result.warnings.append(f"partial merge: {'; '.join(incomplete)}")
    if wanted is not None:
        result.dropped = sorted(covered.keys() - wanted)
        if result.dropped:
            result.warnings.append(
                f"dropped {len(result.dropped)} images that are no longer in the input: {_first_names(result.dropped)}"
            )
    dropped = set(result.dropped)
    rels = [rel for rel in sorted(covered) if rel not in dropped]
    result.failed = [rel for rel in rels if index.is_failed(rel)]  # only in errors.jsonl, not images with 0 masks

    def write(f: BinaryIO) -> None:
        """Pass 2: the bytes ``json.dumps`` gives the whole COCO dict, one image / annotation at a time."""
        f.write(b'{"info": ' + json.dumps(info or {"description": "cuts3d pseudo-masks"}).encode() +
                b', "licenses": [], "images": [')
        image_id = 0
        for rel in rels:
            if index.is_failed(rel):
                continue
            image_id += 1
            f.write((", " if image_id > 1 else "").encode() +
                    json.dumps({"id": image_id, "file_name": rel, **index.image(rel)}).encode())
        f.write(b'], "annotations": [')
        reader = _RecordReader(logs)
        image_id = annotation_id = 0
        try:
            for rel in rels:
                slot = index.slots[rel]
                record = reader.read(index.log[slot], index.offset[slot])
                for issue in record.get("issues", []):
                    result.issues.append({"image": rel, **issue})
                if index.failed[slot]:
                    continue
                image_id += 1
                for ann in record["annotations"]:
                    annotation_id += 1
                    f.write((", " if annotation_id > 1 else "").encode() +
                            json.dumps({"id": annotation_id, "image_id": image_id, **ann}).encode())
        finally:
            reader.close()
        f.write(b'], "categories": ' + json.dumps(CATEGORIES).encode() + b"}")
        result.num_images, result.num_annotations = image_id, annotation_id

    atomic_write(result.path, write)
    atomic_write_text(destination / "errors.jsonl", "".join(json_line(i) + "\n" for i in result.issues))
    return result
