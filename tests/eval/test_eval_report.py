"""Layout of cuts3d.eval: report and coco do not import each other in a circle, every module says what it
is for, and the names other packages import stay importable."""

from __future__ import annotations

import ast
from pathlib import Path

import cuts3d.eval

EVAL_DIR = Path(cuts3d.eval.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every ``cuts3d...`` module ``path`` imports, at any level (also under ``if TYPE_CHECKING``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("cuts3d")}


def test_no_import_circle_between_coco_and_report():
    assert "cuts3d.eval.coco" not in imported_modules(EVAL_DIR / "report.py")
    # and no eval module imports coco, the top of the pipeline, except the package itself and the CLI
    for path in EVAL_DIR.glob("*.py"):
        if path.name not in ("__init__.py", "cli.py", "coco.py"):
            assert "cuts3d.eval.coco" not in imported_modules(path), path.name


def test_every_module_has_a_docstring():
    for path in EVAL_DIR.glob("*.py"):
        assert ast.get_docstring(ast.parse(path.read_text())), path.name


def test_public_names_stay_importable():
    from cuts3d.eval import (  # noqa: F401
        BENCHMARKS,
        IOU_TYPES,
        EvalInputError,
        EvalResult,
        GroundTruth,
        Predictions,
        evaluate,
        load_ground_truth,
        load_predictions,
        metric_keys,
    )
    from cuts3d.eval.coco import EvalInputError as E2
    from cuts3d.eval.coco import IouTypeResult, evaluate as ev2  # noqa: F401

    assert E2 is EvalInputError and ev2 is evaluate
