"""``cuts3d selftrain``: one self-training round from a trained run (see cuts3d.engine.selftrain).

Set-up problems end with one ``cuts3d selftrain: error: ...`` line and exit code 2, before any prediction.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cuts3d.config_io import settings_help
from cuts3d.engine.cli_train import PRESET_HELP, DefaultsHelpFormatter, preset_or_file



def _settings_classes() -> list:
    from cuts3d.engine.train import TrainConfig

    return [("", TrainConfig)]

def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_help(parser, _settings_classes, "training settings of the round (the self-training schedule overrides presets)")
    parser.formatter_class = DefaultsHelpFormatter  # --help shows every default
    parser.add_argument("--model", required=True, type=Path, help="the previous round's run folder")
    parser.add_argument("--data", required=True, type=Path, help="the previous round's annotations (pseudo-mask JSON)")
    parser.add_argument("--images", required=True, type=Path, help="the training images")
    parser.add_argument("--output", required=True, type=Path, help="the new run folder")
    parser.add_argument("--config", action="append", default=[],
                        help=f"preset: {PRESET_HELP}; repeatable (the self-training schedule and the previous "
                             "round's architecture apply on top, key=value last)")
    parser.add_argument("--score-thresh", type=float, default=0.7, help="keep predictions with this score or more (round 1: 0.7)")
    parser.add_argument("--device", default=None,
                        help="auto | cpu | cuda | cuda:N for the predictions and the training (without it: the config's, "
                             "default auto: a GPU when one is visible)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted round from its last checkpoint (its annotations are reused)")
    parser.add_argument("--force", action="store_true", help="with --resume: continue although settings changed")
    parser.add_argument("--overwrite", action="store_true",
                        help="start the round over in an output folder that holds a run (its checkpoints and logs are deleted)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="training settings, e.g. max_iter=40000")


def run(args: argparse.Namespace) -> int:
    from cuts3d.engine.selftrain import selftrain
    from cuts3d.features.weights import WeightsUnavailableError

    try:
        final = selftrain(args.model, args.data, args.images, args.output, [preset_or_file(c) for c in args.config],
                          args.overrides, args.score_thresh, args.device, resume=args.resume, force=args.force,
                          overwrite=args.overwrite)
    except (FileNotFoundError, ValueError, WeightsUnavailableError) as err:  # TrainSetupError, CheckpointError too
        print(f"cuts3d selftrain: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote {final}")
    return 0
