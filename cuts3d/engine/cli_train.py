"""``cuts3d train``: train the class-agnostic Cascade Mask R-CNN on pseudo-masks (see cuts3d.engine.train).

Set-up problems (missing or broken data, missing images, a run folder that already holds a run, a resume with
changed settings, a damaged checkpoint, no GPU for ``--device cuda``, offline backbone weights, a full disk) end
with one ``cuts3d train: error: ...`` line naming the file and the fix, exit code 2, and no traceback. Everything
that can be checked without a model is checked before one is built. Torch is imported only when the command runs,
so ``cuts3d --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cuts3d.config_io import settings_help

PRESETS = Path(__file__).resolve().parents[1] / "configs"
PRESET_NAMES = ("paper", "one_gpu", "tiny_cpu")
PRESET_HELP = ("tiny_cpu (CPU smoke run), one_gpu (1 GPU: batch 8, AMP), paper (8 GPUs under torchrun: batch 16), "
               "or a YAML file")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's ``(default: X)`` after each option's help, except where it says nothing: required options,
    positionals, and defaults of None or [] (their help says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or not action.option_strings or action.default in (None, []):
            return action.help or ""
        return super()._get_help_string(action) or ""


def preset_or_file(name: str) -> Path:
    """``paper``, ``one_gpu``, ``tiny_cpu`` (shipped presets) or a YAML file path."""
    preset = PRESETS / f"{name}.yaml"
    return preset if preset.is_file() and not Path(name).is_file() else Path(name)



def _settings_classes() -> list:
    from cuts3d.engine.train import TrainConfig

    return [("", TrainConfig)]

def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_help(parser, _settings_classes, "training settings")
    parser.formatter_class = DefaultsHelpFormatter  # --help shows every default
    parser.add_argument("--data", required=True, help="pseudo-mask COCO JSON (cuts3d extract's annotations.json)")
    parser.add_argument("--images", required=True, help="folder the JSON's file_name entries are relative to")
    parser.add_argument("--output", required=True,
                        help="run folder (checkpoints with .sha256 files, config.yaml, metrics.jsonl, log.txt, tb/, eval/)")
    parser.add_argument("--config", action="append", default=[],
                        help=f"preset: {PRESET_HELP}; repeatable, later ones win. Without --config: one_gpu on one "
                             "GPU, paper under torchrun; on a machine without a GPU the command stops and lists the "
                             "presets")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run folder's last checkpoint; refused if a setting that changes the "
                             "weights differs from the checkpoint's (max_iter, device, workers and periods may change)")
    parser.add_argument("--force", action="store_true",
                        help="with --resume: continue although settings changed (the differences go to log.txt)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a run folder that holds a run: delete its checkpoints, metrics.jsonl, "
                             "log.txt, tb/ and eval/ first")
    parser.add_argument("--device", default=None,
                        help="auto | cpu | cuda | cuda:N; overrides the config's device (without it: the config's, "
                             "whose default is auto: a GPU when one is visible, under torchrun the process's LOCAL_RANK)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="settings, e.g. max_iter=1000 sc_loss=false (see TrainConfig)")


def _error(message: str) -> int:
    # one line: a message of several lines would read as a traceback in a job log
    print(f"cuts3d train: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def _default_preset(device_spec: str) -> str:
    """The preset for a run without --config: the paper's needs 8 GPUs, one_gpu one, and a CPU none of them.

    Raises:
        ValueError: no GPU here (the paper preset was killed by the kernel at 23 GB on a CPU machine).
    """
    from cuts3d.devices import resolve_device

    device = resolve_device(device_spec, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type != "cuda":
        raise ValueError(f"no --config and no GPU here (device {device}): the default paper schedule (R50-FPN, 16 "
                         "images of up to 1333 px per iteration, 160k iterations) does not fit a CPU; pass --config "
                         f"{PRESET_HELP}")
    return "paper" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "one_gpu"


def run(args: argparse.Namespace) -> int:
    from cuts3d.data.dataset import PseudoMaskDataError
    from cuts3d.engine.runs import TrainSetupError
    from cuts3d.engine.train import resolve_train_config, train
    from cuts3d.features.weights import CheckpointError, WeightsUnavailableError

    base = {"data": args.data, "images": args.images, "output": args.output, "device": args.device}
    try:
        configs = list(args.config)
        if not configs:
            preset = _default_preset(resolve_train_config(base, [], args.overrides).device)
            print(f"cuts3d train: no --config given: using the {preset} preset for this machine "
                  f"(choose with --config: {PRESET_HELP})", file=sys.stderr)
            configs = [preset]
        cfg = resolve_train_config(base, [preset_or_file(c) for c in configs], args.overrides)
    except (FileNotFoundError, ValueError) as err:
        return _error(str(err))
    try:
        final = train(cfg, resume=args.resume, force=args.force, overwrite=args.overwrite)
    except (TrainSetupError, CheckpointError, WeightsUnavailableError, PseudoMaskDataError, FileNotFoundError) as err:
        # Set-up problems (data, images, run folder, checkpoints, device, backbone weights offline, a confidence
        # floor the pseudo-masks cannot give): the message names the file and the fix, as `cuts3d extract` does.
        return _error(str(err))
    except ValueError as err:  # DeviceError, a batch size the processes cannot share, a mask of the wrong size
        return _error(str(err))
    # A full disk or a permission error later in the run: cuts3d.cli.main turns it into one line.
    print(f"wrote {final}")
    return 0
