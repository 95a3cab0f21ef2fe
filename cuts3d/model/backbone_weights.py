"""Self-supervised ResNet-50 weights for the detector's backbone (CutLER starts from DINO's RN50; issue 10).

CutLER initialises the R50-FPN's ResNet from DINO's self-supervised ResNet-50 (``dino_resnet50_pretrain.pth``,
which it converts to ``dino_RN50_pretrain_d2_format.pkl`` for detectron2). ``backbone_weights`` accepts:

- ``"dino_resnet50"``: the official DINO file, downloaded once into the torch hub cache
  (``torch.hub.get_dir()/checkpoints``, as for the ViT weights) and reused; offline and not cached ->
  :class:`~cuts3d.features.weights.WeightsUnavailableError` naming the URL and ``backbone_weights=PATH``;
- ``"none"`` or None: random initialisation;
- a file: a torchvision-layout state dict (``.pth``; DINO's file is one, its ``fc`` is an Identity so it has no
  ``fc.*`` keys) read with ``torch.load(weights_only=True)``, or a detectron2-layout pickle (``.pkl``, e.g.
  CutLER's ``dino_RN50_pretrain_d2_format.pkl``: ``{"model": {"stem.conv1.weight": ndarray, ...}, ...}``) read by
  an unpickler that can only rebuild numpy arrays, its keys mapped to torchvision's.

Every key the ResNet body has must be in the file with the same shape, and the file may hold nothing else
(``fc.*`` and BatchNorm's ``num_batches_tracked`` counters excepted): anything else is a
:class:`~cuts3d.features.weights.CheckpointError` naming the file and the fix. The sha256 of the file read is
always computed and returned in a :class:`BackboneWeightsRecord` for the run folder; it is verified when the
caller gives one or :data:`~cuts3d.features.weights.KNOWN_SHA256` has an entry for the name.
"""

from __future__ import annotations

import codecs
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cuts3d.features.weights import (
    KNOWN_SHA256,
    CheckpointError,
    download_checkpoint,
    sha256_file,
    verify_sha256,
)

DINO_RESNET50_URL = "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth"
#: ``backbone_weights`` names of official ResNet-50 files -> download URL.
RESNET50_WEIGHTS: dict[str, str] = {"dino_resnet50": DINO_RESNET50_URL}
#: CutLER's initialisation, the default of the training presets and of ``TrainConfig``.
DEFAULT_RESNET50_WEIGHTS = "dino_resnet50"
_OFFICIAL_FILE = DINO_RESNET50_URL.rsplit("/", 1)[-1]
_FIX = f"pass {_OFFICIAL_FILE} ({DINO_RESNET50_URL}) or CutLER's dino_RN50_pretrain_d2_format.pkl as backbone_weights=PATH"
_MAX_KEYS_SHOWN = 5


@dataclass(frozen=True)
class BackboneWeightsRecord:
    """Which weights the ResNet-50 started from, for ``RUN/backbone_weights.json``.

    Attributes:
        name: "dino_resnet50", "file" (a path given by the user) or "none" (random initialisation).
        path: the file read (absolute), None for random weights.
        sha256: lower-case hex sha256 of that file, None for random weights.
        url: the official download URL for a named file, else None.
        layout: "torchvision" or "detectron2" (the file's key layout), None for random weights.
    """

    name: str
    path: str | None = None
    sha256: str | None = None
    url: str | None = None
    layout: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RANDOM_RECORD = BackboneWeightsRecord("none")


def is_random(weights: str | Path | None) -> bool:
    """True for random initialisation: None or the string "none" (any case; YAML and ``key=value`` give a str)."""
    return weights is None or (isinstance(weights, str) and weights.strip().lower() == "none")


# ---------------------------------------------------------------------------------------------- key layouts


def detectron2_to_torchvision_key(key: str) -> str:
    """A detectron2 ResNet key (CutLER's / MoCo's ``convert-pretrain-to-detectron2.py`` output) in torchvision's names.

    ``stem.conv1.norm.weight`` -> ``bn1.weight``, ``res2.0.conv1.weight`` -> ``layer1.0.conv1.weight``,
    ``res3.0.shortcut.norm.running_mean`` -> ``layer2.0.downsample.1.running_mean``; a ``backbone.bottom_up.``
    prefix (a detectron2 model's own state dict) is dropped.
    """
    k = key.removeprefix("backbone.bottom_up.").removeprefix("stem.")
    k = re.sub(r"^res([2-5])\.", lambda m: f"layer{int(m.group(1)) - 1}.", k)
    k = k.replace(".shortcut.norm.", ".downsample.1.").replace(".shortcut.", ".downsample.0.")
    return re.sub(r"(^|\.)conv([123])\.norm\.", r"\1bn\2.", k)


def torchvision_to_detectron2_key(key: str) -> str:
    """The inverse of :func:`detectron2_to_torchvision_key` (without prefix): MoCo's conversion rules.

    ``conv1``/``bn1`` of the stem get ``stem.``, ``layerN`` becomes ``res{N+1}``, ``bnK`` becomes ``convK.norm``,
    ``downsample.0``/``.1`` become ``shortcut``/``shortcut.norm``.
    """
    k = key if key.startswith("layer") else f"stem.{key}"
    k = re.sub(r"^layer([1-4])\.", lambda m: f"res{int(m.group(1)) + 1}.", k)
    k = re.sub(r"(^|\.)bn([123])\.", r"\1conv\2.norm.", k)
    return k.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")


def _is_detectron2_layout(keys: list[str]) -> bool:
    return any(re.match(r"(backbone\.bottom_up\.)?(stem|res[2-5])\.", k) for k in keys)


# ---------------------------------------------------------------------------------------------- file reading


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles store bytes as _codecs.encode(str, "latin1"); no other codec (some decompress) is allowed.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


# numpy's array-rebuilding callables, taken from numpy's own reductions so the names resolve under numpy 1 and 2
# without importing the deprecated numpy.core.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_SCALAR = np.float32(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _RECONSTRUCT for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _SCALAR for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _FROMBUFFER for core in ("core", "_core")},
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; any other global is refused.

    Every callable a pickle can run comes from ``find_class``, so refusing all but numpy's array constructors
    means a detectron2 ``.pkl`` cannot execute code (plain ``pickle.load`` would run anything the file names).
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed: only numpy arrays are read from detectron2 .pkl files"
            ) from None


def _read_file(path: Path) -> tuple[Any, str]:
    """The unpickled object and how it was read ("torch" or "pickle")."""
    if path.suffix.lower() in (".pkl", ".pickle") and not zipfile.is_zipfile(path):
        try:
            with open(path, "rb") as fh:
                return _NumpyOnlyUnpickler(fh).load(), "pickle"
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
            # UnpicklingError also covers refused globals (objects other than numpy arrays); the others come from a
            # truncated or garbled stream.
            raise CheckpointError(
                f"cannot read {path} as a detectron2 .pkl of numpy arrays ({type(exc).__name__}: {exc}); {_FIX}"
            ) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "torch"
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, TypeError, IndexError) as exc:
        # UnpicklingError: not a torch file, or it pickles objects other than tensors; RuntimeError/EOFError: a
        # truncated or empty zip archive (e.g. an interrupted copy); the others: a non-zip file that torch's
        # weights-only unpickler reads as a garbled legacy pickle (a text file gives KeyError).
        raise CheckpointError(
            f"cannot read {path} as a weights-only torch file ({type(exc).__name__}: {exc}); it may be truncated or "
            f"not a state dict (a detectron2 pickle must end in .pkl); {_FIX}"
        ) from exc


def _first(keys: list[str]) -> str:
    more = f" ... ({len(keys)} in all)" if len(keys) > _MAX_KEYS_SHOWN else ""
    return ", ".join(keys[:_MAX_KEYS_SHOWN]) + more


def _to_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (np.ndarray, np.generic)) and np.asarray(value).dtype.kind in "biuf":
        return torch.from_numpy(np.array(value))  # a copy: unpickled arrays may be read-only
    return None


def read_resnet50_state(path: str | Path, expected: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Read a ResNet-50 file in either layout and check it against the model's state dict.

    Args:
        path: ``.pth`` (torchvision layout) or ``.pkl`` (detectron2 layout) file.
        expected: the ResNet's ``state_dict()`` (keys, shapes and dtypes of the result).

    Returns:
        (state dict in torchvision keys with the model's dtypes, ready for ``load_state_dict(strict=True)``;
        "torchvision" or "detectron2").

    Raises:
        CheckpointError: unreadable file, a full DINO training checkpoint, non-array entries, missing or
            unexpected keys, or wrong shapes.
    """
    path = Path(path)
    obj, _ = _read_file(path)
    if isinstance(obj, dict) and ("teacher" in obj or "student" in obj):
        raise CheckpointError(
            f"{path} is a full DINO training checkpoint (student/teacher, optimizer); pass the backbone-only file: {_FIX}"
        )
    # detectron2 pickles wrap the weights as {"model": ..., "__author__": ..., "matching_heuristics": ...}; some
    # torch files nest them under "state_dict".
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict; {_FIX}")
    tensors = {str(k): _to_tensor(v) for k, v in obj.items()}
    not_arrays = sorted(k for k, v in tensors.items() if v is None)
    if not_arrays:
        raise CheckpointError(f"{path} is not a flat dict of numeric arrays (other entries: {_first(not_arrays)}); {_FIX}")
    layout = "detectron2" if _is_detectron2_layout(list(tensors)) else "torchvision"
    if layout == "detectron2":
        tensors = {detectron2_to_torchvision_key(k): v for k, v in tensors.items()}
    # The detector has no classifier; BatchNorm's step counters are unused (momentum is set) and absent from
    # detectron2 files, so the model's own are kept when the file has none.
    state = {k: v for k, v in tensors.items() if not k.startswith("fc.")}
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value.detach().clone()
    wanted = {k for k in expected if not k.startswith("fc.")}
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - wanted)
    if missing or unexpected:
        parts = [f"missing keys: {_first(missing)}"] if missing else []
        parts += [f"unexpected keys: {_first(unexpected)}"] if unexpected else []
        raise CheckpointError(
            f"{path} is not a ResNet-50 in torchvision or detectron2 layout ({layout} keys assumed; {'; '.join(parts)}); {_FIX}"
        )
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in sorted(wanted)
             if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise CheckpointError(f"{path} has wrong shapes for a ResNet-50 (file != model: {_first(wrong)}); {_FIX}")
    return {k: state[k].to(expected[k].dtype) for k in wanted}, layout


# ---------------------------------------------------------------------------------------------- resolution


def resolve_resnet50_weights(
    weights: str | Path, sha256: str | None = None, cache_dir: Path | None = None
) -> tuple[Path, BackboneWeightsRecord]:
    """The file to read for ``weights`` (a name of :data:`RESNET50_WEIGHTS` or a path), downloaded when needed.

    The sha256 is computed before unpickling (a corrupt or substituted file is reported as such, not as a key
    mismatch) and verified against ``sha256``, or for an official name against ``KNOWN_SHA256`` when it has one.

    Raises:
        WeightsUnavailableError: an official name, not cached, and the download failed.
        FileNotFoundError: ``weights`` is a path that names no file.
        CheckpointError: sha256 mismatch.
    """
    name = str(weights).strip()
    if name in RESNET50_WEIGHTS:
        url = RESNET50_WEIGHTS[name]
        path = download_checkpoint(url, cache_dir, flag="backbone_weights=")
        expected = sha256 if sha256 is not None else KNOWN_SHA256.get(name)
    else:
        url, path, expected = None, Path(weights).expanduser(), sha256
        name = "file"
        if not path.is_file():
            known = ", ".join(RESNET50_WEIGHTS)
            raise FileNotFoundError(
                f"backbone_weights={weights} is neither a file nor one of {known}, none; {_FIX}, or none for random weights"
            )
    actual = sha256_file(path)
    if expected is not None:
        verify_sha256(path, expected, actual)
    return path, BackboneWeightsRecord(name, str(path.resolve()), actual, url)


def load_resnet50_weights(
    model: nn.Module, weights: str | Path, sha256: str | None = None, cache_dir: Path | None = None
) -> BackboneWeightsRecord:
    """Load ``weights`` (see :func:`resolve_resnet50_weights`) into a torchvision ResNet-50 ``model``.

    ``model.fc`` is left as it is (the detector drops it); every other parameter and buffer is replaced.

    Returns:
        The record of the file read (name, path, sha256, url, layout).

    Raises:
        WeightsUnavailableError, FileNotFoundError: see :func:`resolve_resnet50_weights`.
        CheckpointError: unreadable file, wrong layout, keys or shapes, or sha256 mismatch.
    """
    path, record = resolve_resnet50_weights(weights, sha256, cache_dir)
    state, layout = read_resnet50_state(path, model.state_dict())
    model.load_state_dict(state, strict=False)  # only fc.* may be absent (checked by read_resnet50_state)
    return BackboneWeightsRecord(record.name, record.path, record.sha256, record.url, layout)
