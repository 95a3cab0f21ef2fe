"""Fingerprint of the settings that change extraction results, and the output folder's claim on it (issue 11, item 2).

An output folder holds the results of exactly one setting. ``OUT/fingerprint.json`` records every setting that
changes results (:func:`result_settings`: cut config, method, backbone and its weights' sha256, feature, image
size, depth model, its weights and sizes, the CRF as it actually runs, the cuts3d version) and their sha256.
Settings that do not change results are left out: device, batch size, shard, workers, ``cache_depth`` and where
the depth cache lives. A weights *file* enters by its sha256, not its path, so a job can resume on a machine
that mounts the same checkpoint elsewhere.

:func:`claim_output` is called before any result is written:

* no ``fingerprint.json`` and no results: it is written, the run starts;
* same fingerprint: the run resumes;
* other fingerprint (or results without a fingerprint, from an older cuts3d): :class:`FingerprintMismatchError`,
  one line naming the differing keys and the fix, unless ``overwrite``: then the folder's results (shard logs,
  ``annotations.json``, ``errors.jsonl``, ``config.yaml``, ``run_meta.json``) and depth-cache folders of the old
  cache layout are deleted and the run starts over. Depth maps under a current key are kept: the key covers
  every depth setting, so they are valid for any run that asks for them;
* other fingerprint but no result yet (a start that failed before its first image): it is replaced.

With the same settings ``overwrite`` does nothing (the run resumes), so every task of a job array may pass it.

Concurrency: each running extraction holds a shared ``flock`` on ``OUT/.fingerprint.lock``; writing or replacing
the fingerprint takes it exclusively, so shards started together agree on one fingerprint and ``--overwrite``
never deletes the results of a run that is still going.

The depth cache key (:func:`depth_cache_key`) is the depth part of the settings alone, hashed: output folders
with other cut settings but the same depth settings share maps through ``--depth-cache DIR``; other depth
models, weights or sizes get other folders and never collide.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cuts3d.pipeline.shards import SHARD_DIR

if TYPE_CHECKING:
    from cuts3d.pipeline.extract import ExtractConfig

try:
    import fcntl
except ImportError:  # not on Windows: runs there go without the folder lock
    fcntl = None  # type: ignore[assignment]

FINGERPRINT_FILE = "fingerprint.json"
LOCK_FILE = ".fingerprint.lock"
#: Version of the fingerprint's contents; bump when a setting is added, so old folders read as different.
FORMAT = 1
#: Version of the cut stage's arithmetic; bump when a change can alter the masks of unchanged settings. 2: the
#: float32 NCut graph and Lanczos products, the batched CRF (issue 12; equal masks up to ties). 3: found patches
#: leave the NCut graph inside the Lanczos products and degrees instead of being written into it (float rounding).
CUT_FORMAT = 3
#: Version of the cached depth maps (preprocessing, resizing, storage); bump when a change alters the maps.
DEPTH_FORMAT = 1
#: Files of an output folder that hold results of its setting (deleted by ``overwrite``).
RESULT_FILES = ("annotations.json", "errors.jsonl", "config.yaml", "run_meta.json", FINGERPRINT_FILE)
#: Folder names of depth-cache keys made by :func:`depth_cache_key`; other folders are of the old layout.
_CACHE_KEY_RE = re.compile(r".+-fp[0-9a-f]{16}$")
#: Seconds to wait for the exclusive lock (held only for a moment unless a run of other settings is active).
LOCK_WAIT_S = 10.0

_SHA_MEMO: dict[tuple[str, int, int], str] = {}


class FingerprintMismatchError(ValueError):
    """The output folder holds results of other settings; the message names the keys and the fix."""


class OutputBusyError(ValueError):
    """Another extraction holds the output folder, so its fingerprint cannot be written or replaced."""


# --- settings ------------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in this process (checkpoints are large)."""
    from cuts3d.features import sha256_file

    path = Path(path).expanduser().resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = sha256_file(path)
    return _SHA_MEMO[key]


def folder_sha256(folder: Path) -> str:
    """One sha256 over the weights and config files (``*.safetensors``, ``*.bin``, ``*.json``) of a model folder."""
    folder = Path(folder).expanduser()
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json")):
        digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _random(weights: str | None) -> bool:
    return isinstance(weights, str) and weights.strip().lower() in ("none", "random")


def _backbone_weights(cfg: ExtractConfig) -> str:
    if cfg.weights is not None and cfg.weights.strip().lower() == "none":
        return "random"
    if cfg.weights is None:
        from cuts3d.features.backbone import BACKBONES

        spec = BACKBONES.get(cfg.backbone)
        return f"official:{spec.url}" if spec is not None else "official"
    path = Path(cfg.weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights {path} is not a file; give a checkpoint file, omit --weights for "
                                "the official weights, or weights=none for random ones")
    return "sha256:" + file_sha256(path)


def depth_settings(cfg: ExtractConfig) -> dict[str, Any] | None:
    """Every setting that changes the depth map the cuts see (None when the method uses no depth).

    For a depth model: model name, weights (hub id, sha256 of a local folder, or random with seed and
    architecture), the network's input size, the ``size`` x ``size`` the map is resized to, the storage
    type and :data:`DEPTH_FORMAT`. For ``precomputed:DIR``: the folder (its files are not hashed).
    """
    if cfg.cut.method == "maskcut":
        return None
    if cfg.depth.startswith("precomputed:"):
        folder = Path(cfg.depth.split(":", 1)[1]).expanduser().resolve()
        return {"source": "precomputed", "folder": str(folder), "size": cfg.size}
    from cuts3d.depth.cache import DEFAULT_DTYPE
    from cuts3d.depth.models import DEPTH_MODELS

    settings: dict[str, Any] = {"source": "model", "model": cfg.depth}
    if _random(cfg.depth_weights):
        # Random weights are a function of the seed and the architecture (Models seeds torch right before).
        settings.update(weights="random", seed=cfg.seed, overrides=cfg.depth_overrides)
    elif cfg.depth_weights is None:
        spec = DEPTH_MODELS.get(cfg.depth)
        settings["weights"] = f"hub:{spec.hub_id}" if spec is not None else "hub"
    else:
        folder = Path(cfg.depth_weights).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"depth weights folder {folder} does not exist; give a Hugging Face model folder, "
                                    "omit --depth-weights for the hub weights, or depth_weights=none for random ones")
        settings["weights"] = "sha256:" + folder_sha256(folder)
    settings.update(input_size=cfg.depth_input_size, size=cfg.size, storage=DEFAULT_DTYPE, format=DEPTH_FORMAT)
    return settings


def depth_cache_key(cfg: ExtractConfig) -> str | None:
    """Folder name of this job's maps in a depth cache, ``<model>-fp<16 hex>``; None when nothing is cached."""
    settings = depth_settings(cfg)
    if settings is None or settings["source"] != "model":
        return None
    return f"{cfg.depth}-fp{_digest(settings)[:16]}"


def _floats_as_declared(obj: Any) -> dict[str, Any]:
    # 1 and 1.0 give the same results: write a float field's value as a float whichever way it was given.
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[f.name] = value
    return out


def _cut_settings(cfg: ExtractConfig) -> dict[str, Any]:
    import torch

    from cuts3d.cuts.ncut import resolve_solver

    cut = _floats_as_declared(cfg.cut)
    cut.pop("device")  # where it runs is not a setting; what it makes the solver do is (below)
    cut["confidence_taus"] = [float(t) for t in cfg.cut.confidence_taus]
    # "auto" is lanczos on a CPU and torch on a GPU: other eigenvectors, so the resolved solver is recorded.
    # Only the device's kind matters here (a Ray driver may name "cuda" for workers while it has no GPU itself).
    device = str(cfg.cut.device or cfg.device).strip().lower()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if cfg.cut_workers >= 1:
        kind = "cpu"  # cut workers run on the CPU (cuts3d.pipeline.extract.worker_cut_config)
    cut["eigensolver"] = resolve_solver(cfg.cut.eigensolver, kind, cfg.cut.method)
    cut["crf"] = bool(cfg.cut.crf)
    cut["implementation"] = CUT_FORMAT
    return cut


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key in sorted(value):
            _flatten(f"{prefix}.{key}", value[key], out)
    else:
        out[prefix] = list(value) if isinstance(value, tuple) else value


def result_settings(cfg: ExtractConfig) -> dict[str, Any]:
    """Every setting of ``cfg`` that changes results, as a flat ``{"dotted.key": value}`` dict (JSON types).

    Raises:
        FileNotFoundError: a weights file or folder given in ``cfg`` does not exist (the message names it).
    """
    from cuts3d import __version__

    top = _floats_as_declared(cfg)
    nested: dict[str, Any] = {
        "format": FORMAT,
        "cuts3d_version": __version__,
        "backbone": cfg.backbone,
        "backbone_weights": _backbone_weights(cfg),
        "feature": cfg.feature,
        "size": top["size"],
        "max_pixels": top["max_pixels"],  # decides which images are refused
        "depth": depth_settings(cfg),
        "cut": _cut_settings(cfg),
    }
    if _random(cfg.weights) or (nested["depth"] or {}).get("weights") == "random":
        nested["seed"] = cfg.seed
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        _flatten(key, value, flat)
    return json.loads(json.dumps(flat))  # tuples -> lists, as they come back from the file


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, allow_nan=True).encode()).hexdigest()


def fingerprint(settings: dict[str, Any]) -> str:
    """sha256 (hex) of a :func:`result_settings` dict."""
    return _digest(settings)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every key whose value differs (absent keys show as ``-``), sorted by key."""
    out = []
    for key in sorted(set(old) | set(new)):
        # compare the full values (as JSON, so NaN equals NaN); the shortened text is only for the message
        if key in old and key in new and json.dumps(old[key], sort_keys=True) == json.dumps(new[key], sort_keys=True):
            continue
        a = _short(old[key]) if key in old else "-"
        b = _short(new[key]) if key in new else "-"
        out.append(f"{key}: {a} -> {b}")
    return out


# --- the output folder's claim -----------------------------------------------------------------------------


def read_fingerprint(output: Path) -> dict[str, Any] | None:
    """The stored ``{"fingerprint", "settings", ...}`` of an output folder, or None when there is none.

    Raises:
        FingerprintMismatchError: the file exists but is not a fingerprint (the message says what to do).
    """
    path = Path(output) / FINGERPRINT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise FingerprintMismatchError(f"{path}: unreadable ({err}); rerun with --overwrite to start over, or choose "
                                       "another --output") from None
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        raise FingerprintMismatchError(f"{path}: not a cuts3d fingerprint; rerun with --overwrite to start over, or "
                                       "choose another --output")
    return data


def has_results(output: Path) -> bool:
    """True when the folder holds any result: a non-empty shard log or an ``annotations.json``."""
    output = Path(output)
    if (output / "annotations.json").exists():
        return True
    try:
        return any(p.stat().st_size > 0 for p in (output / SHARD_DIR).glob("shard-*.jsonl"))
    except FileNotFoundError:
        return False


def _write_fingerprint(output: Path, settings: dict[str, Any]) -> None:
    from cuts3d.pipeline.shards import atomic_write_text

    data = {
        "fingerprint": fingerprint(settings),
        "note": "every setting that changes results; a rerun with others is refused (see cuts3d extract --overwrite)",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings,
    }
    atomic_write_text(Path(output) / FINGERPRINT_FILE, json.dumps(data, indent=1, sort_keys=False) + "\n")


def _delete_results(output: Path, depth_caches: list[Path]) -> None:
    shutil.rmtree(output / SHARD_DIR, ignore_errors=True)
    for name in RESULT_FILES:
        try:
            (output / name).unlink()
        except FileNotFoundError:
            pass
    for cache in depth_caches:  # only maps of the old cache layout: current keys hold valid maps
        if cache.is_dir():
            for entry in cache.iterdir():
                if entry.is_dir() and not _CACHE_KEY_RE.match(entry.name):
                    shutil.rmtree(entry, ignore_errors=True)


class OutputClaim:
    """A held claim on an output folder (a shared lock while the run goes on); close it when the run ends."""

    def __init__(self, output: Path, lock_file: Any, action: str):
        self.output = output
        self.action = action  # "created", "resumed", "replaced" or "overwritten"
        self._lock_file = lock_file

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    def __enter__(self) -> OutputClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock(file: Any, exclusive: bool, wait_s: float) -> bool:
    if fcntl is None:
        return True
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(file.fileno(), mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _unlock(file: Any) -> None:
    if fcntl is not None:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def _mismatch(output: Path, stored: dict[str, Any] | None, settings: dict[str, Any]) -> FingerprintMismatchError:
    fix = "rerun with --overwrite to delete them and start over, or choose another --output"
    if stored is None:
        return FingerprintMismatchError(f"{output} holds results of an older cuts3d without {FINGERPRINT_FILE}, so "
                                        f"their settings cannot be checked; {fix}")
    diff = differing_keys(stored["settings"], settings)
    return FingerprintMismatchError(f"{output} holds results of other settings ({output / FINGERPRINT_FILE} differs "
                                    f"in {'; '.join(diff)}); {fix}")


def _decide(output: Path, settings: dict[str, Any], overwrite: bool) -> str:
    """"resumed", "overwrite", "create" or "replace"; raises when results of other settings must be kept."""
    try:
        stored, unreadable = read_fingerprint(output), None
    except FingerprintMismatchError as err:
        stored, unreadable = None, err
    if stored is not None and stored.get("fingerprint") == fingerprint(settings):
        return "resumed"
    if has_results(output):
        if not overwrite:
            raise unreadable or _mismatch(output, stored, settings)
        return "overwrite"
    # No result yet (e.g. a start that failed before its first image): nothing can mix.
    return "create" if stored is None and unreadable is None else "replace"


def claim_output(output: Path, settings: dict[str, Any], overwrite: bool = False,
                 depth_caches: tuple[Path, ...] = (), lock_wait_s: float = LOCK_WAIT_S) -> OutputClaim:
    """Check ``output`` against ``settings`` and claim it for this run (rules: module docstring).

    Args:
        output: the extraction's output folder (created if missing).
        settings: :func:`result_settings` of this run.
        overwrite: delete results of other settings instead of refusing.
        depth_caches: depth-cache roots this folder owns (``OUT/depth_cache``), cleaned of old-layout maps by
            ``overwrite``.
        lock_wait_s: how long to wait for the exclusive lock before :class:`OutputBusyError`.

    Returns:
        The claim, ``action`` one of "created", "resumed", "replaced", "overwritten"; hold it (``with``) until
        the run has written its last result.

    Raises:
        FingerprintMismatchError: results of other settings and no ``overwrite``.
        OutputBusyError: the fingerprint must be written or replaced while another run holds the folder, or
            the folder cannot be written.
    """
    output = Path(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
        lock_file = open(output / LOCK_FILE, "a+")  # noqa: SIM115 - held for the whole run, closed by OutputClaim
    except OSError as err:
        raise OutputBusyError(f"{output}: cannot write there ({err.strerror or err}); choose a writable --output") from None
    try:
        if not _lock(lock_file, exclusive=False, wait_s=lock_wait_s):
            raise OutputBusyError(f"{output / LOCK_FILE} stays locked by another cuts3d extract that is changing this "
                                  "folder; wait for it, or choose another --output")
        if _decide(output, settings, overwrite) == "resumed":
            return OutputClaim(output, lock_file, "resumed")
        # The fingerprint must be written: drop the shared lock and take the exclusive one. Shards started
        # together do the same; the first writes it, the others find it written when they get the lock.
        _unlock(lock_file)
        if not _lock(lock_file, exclusive=True, wait_s=lock_wait_s):
            raise OutputBusyError(f"{output}: another cuts3d extract is running here with other settings (it holds "
                                  f"{output / LOCK_FILE}); wait for it to finish, or choose another --output")
        decision = _decide(output, settings, overwrite)  # again: the folder may have changed while unlocked
        if decision == "overwrite":
            _delete_results(output, list(depth_caches))
        if decision != "resumed":
            _write_fingerprint(output, settings)
        _lock(lock_file, exclusive=False, wait_s=lock_wait_s)  # downgrade: shards of this setting may join
        action = {"resumed": "resumed", "overwrite": "overwritten", "create": "created", "replace": "replaced"}[decision]
        return OutputClaim(output, lock_file, action)
    except BaseException:
        lock_file.close()
        raise
