"""Training checkpoints on disk: durable writes, a sha256 beside each file, verified reads.

Usage::

    from cuts3d.engine.checkpoints import save_checkpoint, read_checkpoint, latest_checkpoint
    save_checkpoint(state, run / "model_0005000.pth")   # + run/model_0005000.pth.sha256
    state = read_checkpoint(latest_checkpoint(run))       # CheckpointError naming the file if it is damaged

A week-long run must not resume from (or a user evaluate) a checkpoint that a crash, a full disk or a bad disk
left damaged, and must say which file it is. So:

* :func:`save_checkpoint` writes ``.NAME.tmp`` beside the target, fsyncs it, renames it over the target and
  fsyncs the folder (a power cut after the rename cannot leave a name pointing at unwritten data), then writes
  ``NAME.sha256`` (``sha256sum`` format: ``HEX  NAME``, so ``sha256sum -c`` checks it too). The digest is taken
  from the bytes as they are written, so the file is not read a second time.
* :func:`read_checkpoint` refuses a missing or zero-byte file, verifies the sidecar's sha256 when there is one
  (a flipped byte inside tensor data otherwise loads silently), loads with ``weights_only=True`` and turns
  torch's errors for a truncated or foreign file into one :class:`CheckpointError` line naming the file.
  A checkpoint without a sidecar (runs from before checksums) loads with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from cuts3d.features.weights import CheckpointError, sha256_file
from cuts3d.pipeline.shards import atomic_write_text

LOGGER_NAME = "cuts3d"
MARKER = "last_checkpoint"
SIDECAR_SUFFIX = ".sha256"
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
# What torch.load(weights_only=True) raises for a file that is not a whole torch checkpoint: a truncated or
# foreign zip (RuntimeError, BadZipFile), an empty file (EOFError), a foreign pickle (UnpicklingError, KeyError
# for text read as opcodes, ...), or a read error of the disk (OSError).
_UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, KeyError, IndexError, TypeError,
               AttributeError, OverflowError, struct.error, zipfile.BadZipFile, OSError)


def checkpoint_path(run: str | Path, it: int) -> Path:
    """``run/model_XXXXXXX.pth`` of iteration ``it`` (7 digits, as detectron2)."""
    return Path(run) / f"model_{it:07d}.pth"


def sidecar_path(path: str | Path) -> Path:
    """``model_XXXXXXX.pth`` -> ``model_XXXXXXX.pth.sha256``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def temp_path(path: str | Path) -> Path:
    """The hidden temporary file a checkpoint is written to before its rename: ``.NAME.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: no directory handles; the rename is as durable as the platform makes it
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (network mounts) refuse fsync on folders; the file itself was fsynced
    finally:
        os.close(fd)


class _HashingWriter:
    """File wrapper that feeds every byte torch writes into a sha256 (torch.save only calls ``write``)."""

    def __init__(self, file: BinaryIO):
        self._file = file
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()


def save_checkpoint(state: dict[str, Any], path: str | Path, marker: bool = True) -> str:
    """Write ``state`` to ``path`` durably with its sha256 sidecar; returns the hex digest.

    Args:
        state: anything ``torch.load(weights_only=True)`` can read back (tensors, plain Python values).
        path: the checkpoint file (``model_XXXXXXX.pth`` or ``model_final.pth``).
        marker: also point ``path.parent/last_checkpoint`` at it (written last, so it never names a file that
            is not complete).

    Raises:
        OSError: the folder is not writable or the disk is full (the temporary file is removed, the previous
            checkpoint of that name is left as it was).
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:  # open() honours the umask: other users of a shared cluster can read results
            writer = _HashingWriter(f)
            torch.save(state, writer)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the checkpoint
        # The old sidecar goes first: between here and the new sidecar the file has no checksum (loads with a
        # warning) instead of a stale one (which would call an intact file corrupt).
        sidecar_path(path).unlink(missing_ok=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    digest = writer.digest.hexdigest()
    atomic_write_text(sidecar_path(path), f"{digest}  {path.name}\n")
    if marker:
        atomic_write_text(path.parent / MARKER, path.name)
    return digest


def remove_stale_temps(run: str | Path) -> list[str]:
    """Delete checkpoint temporary files a kill left in ``run`` (``.model_*.pth.tmp``, and the older
    ``model_*.tmp``); returns their names. Call only when no other process writes into ``run``."""
    run = Path(run)
    removed = []
    for tmp in [*run.glob(".model_*.pth.tmp"), *run.glob("model_*.tmp")]:
        if tmp.is_file():
            tmp.unlink()
            removed.append(tmp.name)
    return sorted(removed)


def latest_checkpoint(run: str | Path) -> Path | None:
    """The checkpoint named in ``run/last_checkpoint``; None when there is no such marker.

    Raises:
        CheckpointError: the marker is empty or names a file that does not exist (the message lists the
            checkpoints that do).
    """
    run = Path(run)
    marker = run / MARKER
    if not marker.is_file():
        return None
    name = marker.read_text(encoding="utf-8", errors="replace").strip()
    path = run / name
    if name and path.is_file():
        return path
    found = sorted(p.name for p in run.glob("model_*.pth"))
    choice = f"one of {', '.join(found[-3:])}" if found else "none is left here: start over with --overwrite"
    what = "is empty" if not name else f"names {name}, which does not exist"
    raise CheckpointError(f"{marker} {what}; write the name of an existing checkpoint into it ({choice})")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU after checking it.

    Returns:
        The saved dict (``model``, ``optimizer``, ``iteration``, ...), or the plain state dict of a weights-only
        file.

    Raises:
        CheckpointError: missing, zero bytes, sha256 different from its sidecar, truncated or not a torch
            checkpoint; the message names the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run folder with last_checkpoint or a .pth file")
    earlier = "use an earlier checkpoint (write its name into last_checkpoint) or start over with --overwrite"
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes: a kill or a full disk while it was written); "
                              f"delete it and {earlier}")
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        fields = sidecar.read_text(encoding="utf-8", errors="replace").split()
        expected = fields[0] if fields else ""
        if not _HEX64.match(expected):
            raise CheckpointError(f"{sidecar} holds no sha256; delete it to load {path.name} unverified")
        actual = sha256_file(path)
        if actual != expected.lower():
            raise CheckpointError(f"checkpoint {path} is corrupt: its sha256 {actual[:16]}... differs from "
                                  f"{expected[:16]}... in {sidecar.name}; restore it from a copy or {earlier}")
    else:
        logging.getLogger(LOGGER_NAME).warning(
            "checkpoint %s has no %s (written before checksums were kept): loading it unverified", path,
            sidecar.name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as err:
        # torch reports a truncated zip as a RuntimeError of several lines and a foreign pickle as an
        # UnpicklingError; the first line says enough next to the file name.
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {reason}); "
                              f"it is truncated or not a torch checkpoint: {earlier}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict of weights; "
                              "pass a file written by `cuts3d train`")
    return state


def load_weights_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: str | Path) -> None:
    """``model.load_state_dict(weights)`` (strict) with a one-line :class:`CheckpointError` naming ``path`` and
    the first differing keys when the checkpoint belongs to another architecture."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and hasattr(weights[k], "shape") and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if v]
        raise CheckpointError(f"checkpoint {path} does not fit the model built from the config: {'; '.join(parts)}; "
                              "use a checkpoint of a run with the same backbone and detector settings")
    model.load_state_dict(weights)
