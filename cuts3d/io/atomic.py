"""Atomic file writes whose temporary files can be recognised and cleaned after a kill (issue 11, item 19).

Every output file (``annotations.json``, ``config.yaml``, depth-cache ``.npy`` files, ...) is written to a
temporary file in the same file system, flushed and fsynced, given the permissions the umask asks for, and
renamed over the target with :func:`os.replace`, so readers never see half a file.

A ``kill -9`` between creating the temporary file and the rename leaves the temporary file behind. Its name
says who wrote it::

    .<target name>.cuts3d-tmp.<host>.<pid>.<random>.tmp

(``<host>``: :func:`host_tag`, the host name and PID namespace). :func:`clean_stale_temps` deletes such a
file when it is *stale*: written on this host (and PID namespace) by a process that no longer runs, or (any
host, where the process cannot be checked) last modified more than :data:`STALE_AFTER_S` (one hour) ago, far
longer than any single write takes. A file of a writer that is still running is never deleted. Files from older cuts3d versions (``.<target name>.<random>.tmp``, no host or pid)
are deleted only by the age rule.

Permissions: :func:`tempfile.mkstemp` creates files with mode 0600 whatever the umask, which would hide the
results from the other users of a shared cluster; the file is set to ``0o666 & ~umask`` (what ``open()``
gives) before the rename.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

#: Marker between the target's name and the writer's host and pid in temporary file names.
TEMP_TAG = "cuts3d-tmp"
#: A temporary file older than this (seconds since its last modification) is stale whoever wrote it.
STALE_AFTER_S = 3600.0

# .<target>.cuts3d-tmp.<host>.<pid>.<random>.tmp; host is sanitised to [A-Za-z0-9-] so the dots split fields.
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\." + re.escape(TEMP_TAG) + r"\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
# What mkstemp(prefix=".<name>.", suffix=".tmp") produced before host and pid were part of the name.
_LEGACY_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def host_tag() -> str:
    """Who can check our pids, as it appears in temporary file names (only ``[A-Za-z0-9-]``).

    The host name, plus the PID namespace where Linux tells it: two containers that share a host name but not
    their process table must not judge each other's pids (a live writer would look dead).
    """
    tag = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
    try:
        tag += f"-ns{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        pass
    return tag


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: ``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way is to set it and put it back (a short window in which another thread's new files
    # would get 0o022; acceptable for a fallback).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permission bits a plain ``open(path, "w")`` would give a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def temp_file(target: Path, folder: Path | None = None) -> tuple[int, Path]:
    """Create the temporary file for ``target`` (in ``folder``, default the target's folder; same file system).

    Returns:
        The open file descriptor and the temporary file's path.
    """
    target = Path(target)
    folder = Path(folder) if folder is not None else target.parent
    folder.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.{TEMP_TAG}.{host_tag()}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    return fd, Path(tmp)


def atomic_write(target: Path, write: Callable[[BinaryIO], None], temp_folder: Path | None = None) -> None:
    """Write ``target`` atomically: ``write(f)`` fills a temporary file that then replaces ``target``.

    Args:
        target: the file to create or replace; its folder is created if needed.
        write: writes the whole content into the binary file object it is given.
        temp_folder: where the temporary file goes (default: beside ``target``); must be on the same file
            system as ``target`` (the rename is atomic only there).

    On any failure, also ``KeyboardInterrupt``, the temporary file is removed and ``target`` is unchanged.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(target, temp_folder)
    replaced = False
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            # mkstemp made it 0600; others on a shared cluster must read results as the umask allows.
            os.fchmod(f.fileno(), file_mode())
        os.replace(tmp, target)
        replaced = True
    finally:
        if not replaced:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def is_stale_temp(path: Path, now: float | None = None) -> bool:
    """True when ``path`` is one of our temporary files whose writer is gone (see the module docstring)."""
    path = Path(path)
    match = _TEMP_RE.match(path.name)
    if match is None and _LEGACY_TEMP_RE.match(path.name) is None:
        return False
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if age > STALE_AFTER_S:
        return True
    if match is not None and match["host"] == host_tag():
        pid = int(match["pid"])
        return pid != os.getpid() and not _pid_alive(pid)
    return False  # another host's (or an old-style) young file: its writer may still be running


def clean_stale_temps(folder: Path) -> list[Path]:
    """Delete the stale temporary files directly inside ``folder`` (not recursive).

    Returns:
        The deleted files (an absent folder has none).
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for entry in entries:
        if not entry.name.endswith(".tmp") or not entry.is_file(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if is_stale_temp(path, now):
            try:
                path.unlink()
            except FileNotFoundError:
                continue  # another starting shard removed it first
            removed.append(path)
    return removed


def check_writable_folder(folder: str | Path) -> Path:
    """Create ``folder`` (and parents) and write, fsync and remove a probe file in it, before any heavy work.

    A read-only disk, a folder without write permission, a path below a file or a full disk then fails in a
    second, not after the models are loaded or hours into a job.

    Raises:
        OSError: the folder cannot be created or written (callers turn it into their one-line message).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".cuts3d-write-probe-{uuid.uuid4().hex[:8]}"
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"x")  # a full disk may allow the empty file but not its first block
        os.fsync(fd)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)
    return folder
