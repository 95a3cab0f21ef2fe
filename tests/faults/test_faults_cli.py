"""Fault injection for the `cuts3d` command line (issue 11, items 14 and 15).

Bad ``key=value`` overrides and config files, odd checkpoint files given to ``--weights``, ``--device cuda`` on a
machine without a GPU (simulated, so the test also holds on a GPU node), an output folder that is read-only, not
permitted or on a full disk (simulated with OSErrors from the file system calls below the output folder, since the
tests may run as root), and ``merge`` on a missing or empty folder. Every case must end with exactly one
``cuts3d COMMAND: error: ...`` line that names the file or setting and the fix, exit status 2, no traceback and,
for the set-up problems, before any model is built.
"""

from __future__ import annotations

import errno
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cuts3d.features
from cuts3d.cli import main

FAST_EXTRACT = ["--backbone", "dino_vits16", "--depth-weights", "none", "size=64", "depth_overrides=tiny",
                "depth_input_size=28", "cut.crf=false"]


def _error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The single ``cuts3d COMMAND: error:`` line of stderr; fails on a traceback or several lines."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and "img/s]" not in ln and "img]" not in ln]  # tqdm bars
    assert "Traceback" not in err, err
    errors = [ln for ln in lines if ln.startswith(f"cuts3d {command}: error: ")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / "a.png")
    return folder


@pytest.fixture
def no_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the ViT fails the test: the error must come before any model is built."""

    def boom(*args, **kwargs):
        raise AssertionError("a model was built before the input was checked")

    monkeypatch.setattr(cuts3d.features, "build_backbone", boom)


# --- item 15: overrides are type-checked and range-checked before any model is built ----------------------------

BAD_CUT_OVERRIDES = {
    "crf=maybe": "crf='maybe' is not true or false",
    "tau_knn=abc": "tau_knn='abc' is not a number",
    "tau_knn=-1": "tau_knn must be > 0",
    "tau_knn=0": "tau_knn must be > 0",
    "tau_ncut=nan": "tau_ncut must be finite and in (0, 1)",
    "tau_ncut=1.5": "tau_ncut must be in (0, 1)",
    "n_iters=0": "n_iters must be >= 1",
    "n_iters=two": "n_iters='two' is not an integer",
    "min_area=1": "min_area must be in [0, 1)",
    "rest_iou=0": "rest_iou must be in (0, 1]",
    "confidence_taus=[0.1,-0.1]": "confidence_taus must all be > 0",
    "method=ncut": "method='ncut' is not one of 'cuts3d', 'maskcut'",
    "sink=nowhere": "sink='nowhere' is not one of",
    "tau_knn": "override 'tau_knn' is not of the form key=value",
    "tau=1": "unknown CutConfig keys ['tau']",
}


@pytest.mark.parametrize("override", list(BAD_CUT_OVERRIDES))
def test_bad_cut_overrides_fail_extract_before_any_model(override, images, tmp_path, capsys, no_models):
    args = ["extract", "--images", str(images), "--output", str(tmp_path / "out"), "--weights", "none",
            *FAST_EXTRACT, override]
    assert main(args) == 2
    assert BAD_CUT_OVERRIDES[override] in _error_line(capsys, "extract")


@pytest.mark.parametrize(
    ("override", "says"),
    [("size=abc", "size='abc' is not an integer"), ("batch_size=1.5", "batch_size=1.5 is not an integer"),
     ("cache_depth=perhaps", "cache_depth='perhaps' is not true or false"),
     ("depth_input_size=big", "depth_input_size='big' is not an integer or null")],
)
def test_bad_extract_overrides_fail_before_any_model(override, says, images, tmp_path, capsys, no_models):
    args = ["extract", "--images", str(images), "--output", str(tmp_path / "out"), "--weights", "none", override]
    assert main(args) == 2
    assert says in _error_line(capsys, "extract")


@pytest.mark.parametrize("override", ["crf=maybe", "tau_ncut=nan", "tau_knn=-1", "foo=1", "tau_knn"])
def test_bad_demo_overrides_are_one_line(override, tmp_path, capsys, monkeypatch):
    import cuts3d.demo

    monkeypatch.setattr(cuts3d.demo, "run_demo", lambda *a, **k: pytest.fail("the demo ran with a bad override"))
    assert main(["demo", "--synthetic", "--output", str(tmp_path / "demo"), override]) == 2
    line = _error_line(capsys, "demo")
    assert override.split("=")[0] in line


def test_train_overrides_are_type_checked(tmp_path, capsys):
    data = tmp_path / "d.json"
    data.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    args = ["train", "--data", str(data), "--images", str(tmp_path), "--output", str(tmp_path / "run"),
            "--config", "tiny_cpu"]
    assert main([*args, "max_iter=abc"]) == 2
    assert "max_iter='abc' is not an integer" in _error_line(capsys, "train")
    assert main([*args, "amp=maybe"]) == 2
    assert "amp='maybe' is not true or false" in _error_line(capsys, "train")


# --- item 14: config files -------------------------------------------------------------------------------------


def test_demo_config_missing_not_a_mapping_or_malformed(tmp_path, capsys):
    out = ["--output", str(tmp_path / "demo")]
    assert main(["demo", "--synthetic", *out, "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in _error_line(capsys, "demo")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n")
    assert main(["demo", "--synthetic", *out, "--config", str(listing)]) == 2
    assert "list.yaml: expected a mapping" in _error_line(capsys, "demo")
    broken = tmp_path / "broken.yaml"
    broken.write_text("tau_knn: [0.1,\n")
    assert main(["demo", "--synthetic", *out, "--config", str(broken)]) == 2
    assert "broken.yaml is not valid YAML" in _error_line(capsys, "demo")
    typed = tmp_path / "typed.yaml"
    typed.write_text("tau_knn: abc\n")
    assert main(["demo", "--synthetic", *out, "--config", str(typed)]) == 2
    assert "tau_knn='abc' is not a number" in _error_line(capsys, "demo")


# --- item 14: odd checkpoint files for --weights -----------------------------------------------------------------


def _odd_checkpoints(folder: Path) -> dict[str, Path]:
    """Files a user may pass as --weights by mistake, and damaged checkpoints."""
    buffer = io.BytesIO()
    torch.save({"pos_embed": torch.zeros(1, 5, 8)}, buffer)
    good = buffer.getvalue()
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", b"garbage")
    contents = {
        "text.pth": b"hello, this is not a checkpoint\n",  # KeyError: 101 from the unpickler before the fix
        "empty.pth": b"",
        "json.pth": json.dumps({"a": 1}).encode(),
        "random.pth": np.random.default_rng(1).integers(0, 256, 512, dtype=np.uint8).tobytes(),
        "truncated.pth": good[: len(good) // 2],
        "truncated_head.pth": good[:10],
        "foreign.zip": zipped.getvalue(),
        "pickle.pth": b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00\x8c\x07os.path\x94.",
    }
    paths = {}
    for name, data in contents.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    (folder / "a_folder.pth").mkdir()
    paths["a_folder.pth"] = folder / "a_folder.pth"
    return paths


def test_odd_checkpoint_files_are_one_line_naming_the_file(images, tmp_path, capsys):
    odd = tmp_path / "odd"
    odd.mkdir()
    for name, path in _odd_checkpoints(odd).items():
        args = ["extract", "--images", str(images), "--output", str(tmp_path / f"out_{name}"), "--weights", str(path),
                *FAST_EXTRACT]
        assert main(args) == 2, name
        line = _error_line(capsys, "extract")
        assert str(path) in line and "--weights" in line, line


# --- item 14: --device cuda without a GPU -------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_one_line_before_any_model(device, images, tmp_path, capsys, monkeypatch, no_models):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    extract = ["extract", "--images", str(images), "--output", str(tmp_path / "out"), "--weights", "none",
               "--device", device]
    assert main(extract) == 2
    assert f"--device {device}: no CUDA GPU is visible" in _error_line(capsys, "extract")
    demo_input = ["demo", "--input", str(images), "--output", str(tmp_path / "d1"), "--weights", "none", "--device", device]
    assert main(demo_input) == 2
    assert "no CUDA GPU is visible" in _error_line(capsys, "demo")
    import cuts3d.demo

    monkeypatch.setattr(cuts3d.demo, "run_demo", lambda *a, **k: pytest.fail("the demo ran on a missing GPU"))
    assert main(["demo", "--synthetic", "--output", str(tmp_path / "d2"), "--device", device]) == 2
    assert "no CUDA GPU is visible" in _error_line(capsys, "demo")


# --- item 14: read-only output, permission denied, disk full -----------------------------------------------------


def _fail_below(monkeypatch: pytest.MonkeyPatch, folder: Path, code: int) -> None:
    """os.open / os.mkdir below ``folder`` raise OSError(code), as on a read-only disk, without permission or full."""
    real_open, real_mkdir = os.open, os.mkdir
    prefix = os.path.abspath(folder)

    def below(path) -> bool:
        return os.path.abspath(os.fsdecode(path)).startswith(prefix)

    def fake_open(path, flags, mode=0o777, *args, **kwargs):
        if below(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_open(path, flags, mode, *args, **kwargs)

    def fake_mkdir(path, mode=0o777, *args, **kwargs):
        if below(path) and not os.path.isdir(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_mkdir(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


@pytest.mark.parametrize(
    ("code", "says"),
    [(errno.EROFS, "the file system is read-only"), (errno.EACCES, "permission denied"),
     (errno.ENOSPC, "the disk is full")],
)
@pytest.mark.parametrize("exists", [True, False])
def test_unwritable_output_fails_before_any_model(code, says, exists, images, tmp_path, capsys, monkeypatch, no_models):
    out = tmp_path / "out"
    if exists:
        out.mkdir()
    _fail_below(monkeypatch, out, code)
    assert main(["extract", "--images", str(images), "--output", str(out), "--weights", "none"]) == 2
    line = _error_line(capsys, "extract")
    assert says in line and str(out) in line and "--output" in line
    assert main(["demo", "--input", str(images), "--output", str(out), "--weights", "none"]) == 2
    assert says in _error_line(capsys, "demo")
    assert main(["demo", "--synthetic", "--output", str(out)]) == 2
    assert says in _error_line(capsys, "demo")


def test_disk_full_during_the_run_names_the_file(images, tmp_path, capsys, monkeypatch):
    import cuts3d.pipeline.extract as extract_mod

    target = tmp_path / "out" / "annotations.json"

    def full(cfg, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(extract_mod, "extract", full)
    assert main(["extract", "--images", str(images), "--output", str(tmp_path / "out"), "--weights", "none"]) == 2
    line = _error_line(capsys, "extract")
    assert "the disk is full" in line and str(target) in line and "No space left on device" in line


def test_output_below_a_file_is_one_line(images, tmp_path, capsys, no_models):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["extract", "--images", str(images), "--output", str(blocker / "out"), "--weights", "none"]) == 2
    assert "a_file" in _error_line(capsys, "extract")
    assert main(["extract", "--images", str(images), "--output", str(blocker), "--weights", "none"]) == 2
    assert "a_file" in _error_line(capsys, "extract")


# --- item 14: merge on a missing or empty folder ------------------------------------------------------------------


def test_merge_missing_or_empty_folder(tmp_path, capsys):
    assert main(["merge", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in _error_line(capsys, "merge")
    (tmp_path / "empty").mkdir()
    assert main(["merge", str(tmp_path / "empty")]) == 2
    assert "empty" in _error_line(capsys, "merge")


def test_extract_config_whose_cut_section_is_not_a_mapping(images, tmp_path, capsys, no_models):
    config = tmp_path / "extract.yaml"
    config.write_text("size: 64\ncut: 5\n")
    args = ["extract", "--images", str(images), "--output", str(tmp_path / "out"), "--config", str(config)]
    assert main(args) == 2
    assert "extract.yaml: 'cut' must be a mapping of CutConfig fields, got int" in _error_line(capsys, "extract")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network (no DNS) and empty weight caches: as on a compute node that was never online."""
    import socket

    def no_route(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_route)
    monkeypatch.setattr(socket, "create_connection", no_route)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the depth weights: see tests/depth for the not-flagged case


@pytest.mark.parametrize(("flags", "says"), [
    (["--depth-weights", "none"], "cannot download backbone weights"),
    (["--weights", "none"], "needs the pretrained weights depth-anything/Depth-Anything-V2-Small-hf"),
])
def test_demo_input_offline_without_weights_is_one_line(flags, says, images, tmp_path, capsys, offline):
    args = ["demo", "--input", str(images), "--output", str(tmp_path / "demo"), "--backbone", "dino_vits16", *flags]
    assert main(args) == 2
    line = _error_line(capsys, "demo")
    assert says in line and ("--weights" in line or "--depth-weights" in line)
