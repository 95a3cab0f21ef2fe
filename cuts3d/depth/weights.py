"""Pretrained weights of the depth models: a local Hugging Face folder, or the official hub id (cache first).

Offline, the Hub client retries each request for about 25 s before it gives up; :func:`_load_from_hub` probes the
Hub (or the HTTPS proxy) with a short TCP connection first and fails in seconds when it cannot be reached. Every
failure is a :class:`WeightsUnavailableError` whose message names the download command and the flag.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from cuts3d.depth.registry import DEPTH_MODELS, DepthModelSpec

_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


class WeightsUnavailableError(RuntimeError):
    """Pretrained depth weights cannot be found or loaded; the message says how to get them."""


def _config_errors() -> tuple[type[Exception], ...]:
    # transformers >= 5 validates configs with huggingface_hub's strict dataclasses, whose errors are not
    # ValueErrors.
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return ()
    return (StrictDataclassError,)


def _checkpoint_errors() -> tuple[type[Exception], ...]:
    # A corrupt or truncated model.safetensors raises safetensors' own error type (not an OSError).
    try:
        from safetensors import SafetensorError
    except ImportError:
        return ()
    return (SafetensorError,)


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read the environment too, so that setting it later
    # (tests, notebooks) still prevents any network access.
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    if any(v.strip().lower() in ("1", "true", "yes", "on") for v in flags):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


#: Seconds the Hub probe waits for a TCP connection (DNS included) before calling the Hub unreachable.
HUB_PROBE_TIMEOUT_S = 2.0


def _hub_address() -> tuple[str, int]:
    """(host, port) a download would connect to first: the HTTPS proxy when one applies, else the Hub endpoint."""
    endpoint = os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"
    try:
        from huggingface_hub import constants

        endpoint = getattr(constants, "ENDPOINT", endpoint) or endpoint
    except ImportError:
        pass
    url = urllib.parse.urlsplit(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme or "https") or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        purl = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if purl.hostname:
            return purl.hostname, purl.port or (443 if purl.scheme == "https" else 80)
    return host, port


def _hub_unreachable(timeout: float | None = None) -> str | None:
    """None when a TCP connection to the Hub (or its proxy) opens within ``timeout`` s, else why not (one line).

    Offline, huggingface_hub retries its first request five times with back-off (about 25 s) before it gives
    up; this probe answers in at most ``timeout`` seconds. It runs in a daemon thread because name resolution
    (getaddrinfo) takes no timeout and can hang for tens of seconds on a machine without DNS.
    """
    timeout = HUB_PROBE_TIMEOUT_S if timeout is None else timeout
    host, port = _hub_address()
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as err:  # gaierror (no DNS), ConnectionRefused, timeout, network unreachable
            outcome.append(f"cannot connect to {host}:{port}: {err}")

    thread = threading.Thread(target=probe, name="cuts3d-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f"no connection to {host}:{port} within {timeout:g} s"
    return outcome[0]


def _download_hint(spec: DepthModelSpec) -> str:
    return (
        f"On a machine with internet run `hf download {spec.hub_id} {' '.join(spec.files)} --local-dir DIR` "
        f"(older huggingface_hub: `huggingface-cli download {spec.hub_id} --local-dir DIR`); copy "
        f"DIR here and pass --depth-weights DIR (build_depth_model({spec.name!r}, weights=DIR)). Or pass "
        "precomputed depth maps instead of a depth model."
    )


def _check_weights_dir(spec: DepthModelSpec, folder: Path) -> None:
    config = folder / "config.json"
    if not config.is_file():
        raise WeightsUnavailableError(
            f"depth weights folder {folder} has no config.json, so it is not a Hugging Face model folder. "
            + _download_hint(spec)
        )
    if not any((folder / f).is_file() for f in _WEIGHT_FILES):
        raise WeightsUnavailableError(
            f"depth weights folder {folder} has config.json but no weights ({' or '.join(_WEIGHT_FILES[:2])}); "
            "the download is incomplete. " + _download_hint(spec)
        )
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsUnavailableError(
            f"cannot read {config} ({err}); re-download the weights. " + _download_hint(spec)
        ) from None
    if model_type != spec.model_type:
        others = [s.name for s in DEPTH_MODELS.values() if s.model_type == model_type]
        hint = f"use --depth {others[0]}" if others else "pass the weights of the chosen model"
        raise WeightsUnavailableError(
            f"depth weights folder {folder} holds a {model_type!r} model, but depth model {spec.name!r} needs "
            f"{spec.model_type!r} weights; {hint}."
        )


def _local_processor(spec: DepthModelSpec, processor_cls: Any, folder: Path) -> Any:
    # A folder without preprocessor_config.json gets the official preprocessing (it is fixed per model).
    if not (folder / "preprocessor_config.json").is_file():
        return spec.default_processor()
    try:
        return processor_cls.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise WeightsUnavailableError(
            f"cannot read {folder / 'preprocessor_config.json'} ({err}); delete it to use the official "
            "preprocessing, or re-download the weights."
        ) from None


def _load_from_hub(
    spec: DepthModelSpec, model_cls: Any, processor_cls: Any, cache_dir: str | Path | None
) -> tuple[Any, Any]:
    """The official weights: from the local HF cache first (no network), then a download unless offline."""
    cache = str(cache_dir) if cache_dir is not None else None
    errors: list[str] = []
    attempts = [True] if _hub_offline() else [True, False]
    for local_only in attempts:
        if not local_only:
            # Not cached: fail in seconds when the Hub cannot be reached at all, instead of after the Hub client's
            # retries (about 25 s per file).
            unreachable = _hub_unreachable()
            if unreachable is not None:
                raise WeightsUnavailableError(
                    f"depth model {spec.name!r} needs the pretrained weights {spec.hub_id}, but they are not in the "
                    f"Hugging Face cache and the Hub cannot be reached ({unreachable}). " + _download_hint(spec)
                )
        try:
            model = model_cls.from_pretrained(spec.hub_id, local_files_only=local_only, cache_dir=cache)
            try:
                processor = processor_cls.from_pretrained(spec.hub_id, local_files_only=local_only, cache_dir=cache)
            except (OSError, ValueError):
                processor = spec.default_processor()
            return model, processor
        except (OSError, ValueError, RuntimeError, *_checkpoint_errors()) as err:
            errors.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
    why = (
        "offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) and they are not in the Hugging Face cache"
        if _hub_offline()
        else f"they are not in the Hugging Face cache and the download failed: {errors[-1]}"
    )
    raise WeightsUnavailableError(
        f"depth model {spec.name!r} needs the pretrained weights {spec.hub_id}, but {why}. " + _download_hint(spec)
    )
