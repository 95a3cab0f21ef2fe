"""`cuts3d train` / `predict` / `selftrain` command lines: help text and defaults, --device, the default preset."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch

from cuts3d.engine import cli_predict, cli_selftrain, cli_train

MODULES = {"train": cli_train, "predict": cli_predict, "selftrain": cli_selftrain}


def _parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"cuts3d {name}")
    MODULES[name].add_arguments(parser)
    return parser


@pytest.mark.parametrize("name", list(MODULES))
def test_every_option_has_help_and_help_shows_the_defaults(name):
    parser = _parser(name)
    for action in parser._actions:
        assert action.help, f"cuts3d {name} {action.dest}: no help text"
    text = parser.format_help()
    assert "--device" in text  # train, predict and selftrain all take a device
    shown = [a for a in parser._actions if a.option_strings and a.default not in (None, [], argparse.SUPPRESS)]
    for action in shown:
        assert f"(default: {action.default})" in " ".join(text.split()), (name, action.dest)


def test_default_preset_fits_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cli_train._default_preset("auto") == "one_gpu"
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert cli_train._default_preset("auto") == "paper"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no --config and no GPU here.*tiny_cpu.*one_gpu.*paper"):
        cli_train._default_preset("auto")
    with pytest.raises(ValueError, match="no --config and no GPU"):
        cli_train._default_preset("cpu")


def test_command_modules_do_not_import_torch():
    """`cuts3d --help` builds every sub-command's parser: importing them must stay cheap."""
    code = ("import sys; import cuts3d.engine.cli_train, cuts3d.engine.cli_predict, cuts3d.engine.cli_selftrain; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
