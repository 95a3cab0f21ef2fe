"""cuts3d.cli: the parser builds without torch / transformers / ray (item 18), every sub-command has --help, and
user-fixable OSErrors become one line (item 14)."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from cuts3d.cli import COMMANDS, build_parser, check_output_writable, describe_os_error, main


def test_building_the_parser_imports_no_heavy_package() -> None:
    code = (
        "import sys, cuts3d.cli; cuts3d.cli.build_parser(); "
        "heavy = [m for m in ('torch', 'torchvision', 'transformers', 'ray', 'matplotlib') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_package_api_is_still_importable() -> None:
    from cuts3d import CutConfig, Instance, segment

    assert callable(segment) and CutConfig().n_iters == 3 and Instance.__name__ == "Instance"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    assert info.value.code == 0 and "usage: cuts3d " + command in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2 and "COMMAND" in capsys.readouterr().out


def test_os_errors_a_user_can_fix_are_described() -> None:
    line = describe_os_error(OSError(errno.ENOSPC, "No space left on device", "out/annotations.json"))
    assert line == ("cannot use out/annotations.json: the disk is full ([Errno 28] No space left on device); "
                    "free space on that disk or pass an --output folder on another disk")
    assert "read-only" in describe_os_error(OSError(errno.EROFS, "Read-only file system", "/mnt/x"))
    assert describe_os_error(OSError(errno.EIO, "Input/output error")) is None  # not the user's to fix: traceback


def test_check_output_writable_creates_the_folder_and_leaves_nothing(tmp_path) -> None:
    out = check_output_writable(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []


def test_settings_after_flags_join_the_overrides(monkeypatch):
    """`cuts3d train ... max_iter=4 --resume lr=0.02`: both settings reach the command; stray words still fail."""
    import importlib

    from cuts3d import cli

    seen = {}
    module = importlib.import_module("cuts3d.engine.cli_train")
    monkeypatch.setattr(module, "run", lambda args: seen.update(overrides=args.overrides, resume=args.resume) or 0)
    argv = ["train", "--data", "d.json", "--images", "im", "--output", "run", "max_iter=4", "--resume", "lr=0.02"]
    assert cli.main(argv) == 0
    assert seen == {"overrides": ["max_iter=4", "lr=0.02"], "resume": True}
    with pytest.raises(SystemExit):
        cli.main(argv + ["stray"])


@pytest.mark.parametrize("command,expected", [("train", "precise_bn_iters=200"), ("selftrain", "alpha_mode=spatial"),
                                              ("extract", "cut.tau_knn=")])
def test_help_lists_every_setting_with_its_default(command, expected, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert expected in out and "key=value" in out
