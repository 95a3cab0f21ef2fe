"""cuts3d: unsupervised instance segmentation with CutS3D (ICCV 2025).

Public API::

    from cuts3d import CutConfig, Instance, segment
    instances = segment(features, depth=None, image=None, config=CutConfig())

The names are imported on first use (PEP 562), so that ``import cuts3d.cli`` (and ``cuts3d --help``) does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["CutConfig", "Instance", "segment", "__version__"]

# public name -> module that defines it
_LAZY = {"CutConfig": "cuts3d.cuts.config", "Instance": "cuts3d.cuts.segment", "segment": "cuts3d.cuts.segment"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'cuts3d' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
