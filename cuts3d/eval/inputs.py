"""Shared pieces for reading evaluation inputs: the error type, JSON reading, small helpers.

Every module of :mod:`cuts3d.eval` reports unusable input as :class:`EvalInputError`, a
``ValueError`` whose message is one line that names the file and says what to do; ``cuts3d eval``
prints it and exits with status 2. :func:`read_json` turns every way a JSON file can be unreadable
(missing, a directory, not UTF-8, not JSON, nested too deeply for Python's parser) into that error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The single class-agnostic category both sides are mapped to.
AGNOSTIC_CATEGORY: dict[str, Any] = {"id": 1, "name": "object", "supercategory": "object"}


class EvalInputError(ValueError):
    """Ground truth or predictions cannot be evaluated as given; the message names the input and
    says what to do."""


def read_json(path: Path, what: str) -> Any:
    """Parse the JSON file ``path``; ``what`` (``"ground-truth"``, ``"predictions"``) names it in errors.

    Raises:
        EvalInputError: missing file, a directory, invalid UTF-8 or JSON, or nesting deeper than
            Python's JSON parser can follow (a COCO file is at most 5 levels deep).
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise EvalInputError(f"{what} file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise EvalInputError(f"{what} {str(path)!r} is a directory; give the JSON file inside it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalInputError(f"{what} file {str(path)!r} is not valid JSON: {exc}") from None
    except RecursionError:
        # json's C parser recurses once per nesting level and gives up near 1000 levels; without this
        # the user gets a traceback instead of a line naming the file
        raise EvalInputError(
            f"{what} file {str(path)!r} is nested too deeply to parse (over ~1000 levels of lists/objects); a COCO "
            "JSON is at most a few levels deep, so the file is not a COCO instances / results file: regenerate it"
        ) from None


def preview(items: Sequence[Any], n: int = 10) -> str:
    """``repr`` of the first ``n`` items, ``...`` and the total count, for messages."""
    shown = ", ".join(repr(x) for x in items[:n])
    return f"{shown}{', ...' if len(items) > n else ''} ({len(items)} in all)"


def is_number(x: Any) -> bool:
    """A real number (Python or NumPy int/float), not a bool."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def is_image_id(x: Any) -> bool:
    """A usable image id: a number (not a bool) or a string; ids are dict keys, and a list is not hashable."""
    return isinstance(x, str) or is_number(x)
