"""Command line interface: a thin layer over the Python API.

Usage::

    cuts3d demo --synthetic --output out/demo      # offline demo on synthetic 3D scenes
    cuts3d extract --images DIR --output OUT       # pseudo-masks -> OUT/annotations.json
    cuts3d merge OUT1 OUT2 ...                     # merge shard logs
    cuts3d eval --gt GT.json --pred PRED.json      # class-agnostic COCO AP

Each sub-command lives next to the code it drives and exposes two functions,
``add_arguments(parser)`` and ``run(args) -> int``; this module only wires them up.

Import rule: a sub-command module must be importable without torch, transformers or ray (its heavy imports sit
inside ``run``), so that ``cuts3d --help`` and ``cuts3d merge`` start in well under a second.

Errors: set-up problems (a missing file, a bad ``key=value``, a wrong checkpoint, no GPU, a full disk) are one
line on stderr, ``cuts3d COMMAND: error: ...`` naming the file and the fix, and exit status 2; programming errors
keep their traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from pathlib import Path

# name -> (module, one-line help). Modules are imported lazily so that `cuts3d --help`
# stays fast and one command's optional dependency cannot break another command.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("cuts3d.demo", "Run MaskCut and CutS3D on synthetic scenes (offline) and write figures."),
    "extract": ("cuts3d.pipeline.cli_extract", "Pseudo-masks (COCO JSON with Spatial Confidence) for an image folder."),
    "merge": ("cuts3d.pipeline.cli_merge", "Merge the shard logs of extraction jobs into one COCO JSON."),
    "train": ("cuts3d.engine.cli_train", "Train the class-agnostic Cascade Mask R-CNN on pseudo-masks."),
    "selftrain": ("cuts3d.engine.cli_selftrain", "One self-training round: predictions + old pseudo-masks, train again."),
    "predict": ("cuts3d.engine.cli_predict", "Detections of a trained run on an image folder (COCO results)."),
    "eval": ("cuts3d.eval.cli", "Class-agnostic COCO evaluation of predictions or pseudo-masks."),
}

#: errno -> (what happened, the fix), for the OSErrors a user can fix; others keep their traceback.
_OS_ERRORS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("the disk is full", "free space on that disk or pass an --output folder on another disk"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space in your quota or pass an --output folder elsewhere"),
    errno.EROFS: ("the file system is read-only", "pass an --output folder on a writable disk"),
    errno.EACCES: ("permission denied", "pass an --output folder you can write to, or fix the permissions"),
    errno.EPERM: ("operation not permitted", "pass an --output folder you can write to, or fix the permissions"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "pass a folder path"),
    errno.EISDIR: ("it is a folder, not a file", "pass a file path"),
    errno.EEXIST: ("it exists and is not a folder", "pass a folder path or remove the file"),
    errno.ENOENT: ("no such file or folder", "check the path"),
}


def describe_os_error(err: OSError) -> str | None:
    """One line for an OSError a user can fix (disk full, read-only, permission denied, ...), or None.

    Example: ``cannot write out/config.yaml: the disk is full ([Errno 28] No space left on device); free space on
    that disk or pass an --output folder on another disk``.
    """
    known = _OS_ERRORS.get(err.errno) if err.errno is not None else None
    if known is None:
        return None
    what, fix = known
    where = f" {err.filename}" if err.filename else ""
    reason = f"[Errno {err.errno}] {err.strerror}" if err.strerror else str(err)
    return f"cannot use{where}: {what} ({reason}); {fix}"


def check_output_writable(folder: str | Path) -> Path:
    """Create ``folder`` and probe that it can be written, before any model is built
    (:func:`cuts3d.io.atomic.check_writable_folder`).

    Raises:
        OSError: the folder cannot be created or written (see :func:`describe_os_error` for the message).
    """
    from cuts3d.io.atomic import check_writable_folder

    return check_writable_folder(folder)


def print_error(command: str, message: object) -> None:
    """Print ``cuts3d COMMAND: error: MESSAGE`` as one line on stderr.

    A progress bar that the failing code left open (tqdm writes no newline until it closes) is closed first, so
    that the error starts its own line; line breaks inside the message are folded into spaces.
    """
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is not None:
        for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
            bar.close()
    text = " ".join(str(message).split())
    print(f"cuts3d {command}: error: {text}", file=sys.stderr)


def setup_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is already a complete one-line diagnosis (the file and the fix).

    Imported here, at the moment an error is caught, so that the command modules stay light.
    """
    from cuts3d.depth.weights import WeightsUnavailableError as DepthWeightsUnavailable
    from cuts3d.features.weights import CheckpointError, WeightsUnavailableError

    # DeviceError is a ValueError; FileNotFoundError carries the path.
    return (FileNotFoundError, ValueError, CheckpointError, WeightsUnavailableError, DepthWeightsUnavailable)


def build_parser() -> argparse.ArgumentParser:
    """The ``cuts3d`` parser with every sub-command; imports no torch, transformers or ray."""
    from cuts3d import __version__

    parser = argparse.ArgumentParser(prog="cuts3d", description="CutS3D unsupervised instance segmentation")
    parser.add_argument("--version", action="version", version=f"cuts3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; returns its exit status (2: the input cannot be used, the reason was printed)."""
    parser = build_parser()
    # `key=value` settings may come after flags (`train ... max_iter=4 --resume lr=0.02`): argparse stops the
    # positional list at the first flag, so the later ones arrive as extras and join the overrides here.
    args, extra = parser.parse_known_args(argv)
    settings = [e for e in extra if "=" in e and not e.startswith("-")]
    if settings and isinstance(getattr(args, "overrides", None), list):
        args.overrides += settings
        extra = [e for e in extra if e not in settings]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except OSError as err:
        # Disk full, read-only output, permission denied: the job cannot go on, but this is no bug in cuts3d.
        line = describe_os_error(err)
        if line is None:
            raise
        print_error(args.command, line)
        return 2


if __name__ == "__main__":
    sys.exit(main())
