"""Checkpoint resolution, download, hashing and strict loading for the DINO / DINOv2 backbones (issue 5).

The official files (``dino_*_pretrain.pth``, ``dinov2_*_pretrain.pth``) are plain dicts of tensors whose keys are
the parameter names of :class:`cuts3d.features.vit.VisionTransformer`. Loading uses ``torch.load(weights_only=True)``
(no arbitrary unpickling) and a strict check: every missing or unexpected key, and every shape mismatch, is a
:class:`CheckpointError`. No extra keys are tolerated: DINOv2's ``mask_token`` is a parameter of the model itself.

Hashes: the official sha256 values are not recorded here (``KNOWN_SHA256`` is empty until someone verifies them
against the published files). A given ``sha256`` is always verified, and the file's sha256 is always computed and
returned so the caller can record it in run metadata.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
import urllib.error
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

#: Official sha256 per backbone name, checked for downloaded files when no ``sha256`` is passed. Empty: the
#: published files' hashes have not been verified in this project yet.
KNOWN_SHA256: dict[str, str] = {}

_MAX_KEYS_SHOWN = 5


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: unreadable, wrong key layout or shapes, or wrong sha256."""


class WeightsUnavailableError(RuntimeError):
    """The official weights are not cached and cannot be downloaded (e.g. no internet)."""


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Lower-case hex sha256 of a file, read in chunks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, actual: str) -> None:
    """Raise :class:`CheckpointError` unless ``actual`` equals ``expected`` (case-insensitive hex)."""
    if actual.lower() != expected.strip().lower():
        raise CheckpointError(
            f"sha256 mismatch for checkpoint {path}: expected {expected.strip().lower()}, got {actual}. "
            "The file is corrupt, truncated or a different checkpoint: delete it and download it again, "
            "or pass the sha256 of the file you mean to use."
        )


def default_cache_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``, where ``torch.hub.load_state_dict_from_url`` also caches."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def download_checkpoint(url: str, cache_dir: Path | None = None, flag: str = "--weights ") -> Path:
    """Path of the cached official checkpoint, downloading it first when absent.

    Args:
        url: official download URL; the cached file keeps its basename.
        cache_dir: directory of cached checkpoints (default :func:`default_cache_dir`).
        flag: how the user passes a local file, as the error message shows it (``--weights `` for the
            extraction CLI, ``backbone_weights=`` for training).

    Raises:
        WeightsUnavailableError: the file is not cached and the download failed (offline, HTTP error, disk).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    filename = url.rsplit("/", 1)[-1]
    target = cache_dir / filename
    if target.is_file():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # download_url_to_file writes to a temporary file and renames it at the end: no partial file is left behind.
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except (urllib.error.URLError, OSError) as exc:
        raise WeightsUnavailableError(
            f"cannot download backbone weights from {url} ({exc}). On a machine with internet, download "
            f"{filename} from {url}, copy it here and pass `{flag}PATH/{filename}` "
            f"(or place it in {cache_dir})."
        ) from exc
    return target


def _shape(t: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(s) for s in t)


def _first(keys: list[str]) -> str:
    more = f" ... ({len(keys)} in all)" if len(keys) > _MAX_KEYS_SHOWN else ""
    return ", ".join(keys[:_MAX_KEYS_SHOWN]) + more


def load_checkpoint(
    path: str | Path, expected: Mapping[str, torch.Size], backbone_name: str, official_file: str
) -> dict[str, torch.Tensor]:
    """Load an official-layout state dict and check it against the model's keys and shapes.

    Args:
        path: checkpoint file.
        expected: the model's ``state_dict()`` key -> shape.
        backbone_name: used in error messages.
        official_file: file name of the official checkpoint for this backbone, used in error messages.

    Returns:
        The state dict (CPU tensors), ready for ``load_state_dict(strict=True)``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable file, non-tensor entries, missing/unexpected keys or wrong shapes.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; pass the file {official_file} with --weights")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of {official_file} with --weights")
    state = _torch_load(path, official_file)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict; pass {official_file}")
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        # Typically a full DINO training checkpoint ({"student": ..., "teacher": ..., ...}).
        raise CheckpointError(
            f"checkpoint {path} is not a flat state dict (non-tensor entries: {_first(not_tensors)}); "
            f"pass the backbone-only file {official_file}"
        )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_first(unexpected)}")
        raise CheckpointError(
            f"checkpoint {path} does not match backbone {backbone_name!r} ({'; '.join(parts)}); "
            f"pass {official_file} or choose the backbone the file was trained with"
        )
    wrong = [
        f"{k} {_shape(state[k].shape)} != {_shape(shape)}"
        for k, shape in expected.items()
        if _shape(state[k].shape) != _shape(shape)
    ]
    if wrong:
        raise CheckpointError(
            f"checkpoint {path} has wrong shapes for backbone {backbone_name!r} (file != model: {_first(wrong)}); "
            f"pass {official_file} or choose the backbone the file was trained with"
        )
    return state


#: What ``torch.load(weights_only=True)`` raises for files that are not (whole) weights-only torch checkpoints:
#: UnpicklingError (not a torch file, or objects other than tensors), RuntimeError (a truncated or foreign zip
#: archive), EOFError (an empty file), KeyError (a text file: ``KeyError: 101`` is the byte 'e' read as a pickle
#: opcode), and the rest for other garbage the legacy unpickler trips over.
_UNREADABLE = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    KeyError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    OverflowError,
    UnicodeDecodeError,
    struct.error,
    zipfile.BadZipFile,
)


def _torch_load(path: Path, official_file: str) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU; every failure is one :class:`CheckpointError` line."""
    fix = f"download {official_file} again and pass it with --weights"
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path} ({exc.strerror or exc}); check its permissions") from exc
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes; an interrupted download or copy?); {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path} ({exc.strerror or exc}); check its permissions") from exc
    except _UNREADABLE as exc:
        # torch's own messages run over many lines (the weights_only explanation): keep the first one only.
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        if isinstance(exc, (RuntimeError, EOFError)) and not zipfile.is_zipfile(path):
            why = "it is truncated or not a torch checkpoint (no complete zip archive)"
        elif isinstance(exc, pickle.UnpicklingError):
            why = "it is not a torch file, or it holds objects other than tensors"
        else:
            why = "it is not a torch checkpoint"
        raise CheckpointError(
            f"cannot read checkpoint {path} ({size} bytes): {why} ({type(exc).__name__}: {first}); {fix}"
        ) from exc


def save_state_dict(module: torch.nn.Module, path: str | Path) -> Path:
    """Write ``module.state_dict()`` as a flat dict of contiguous CPU tensors (the official file layout)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    torch.save(state, path)
    return path
