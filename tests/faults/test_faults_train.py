"""Fault injection for `cuts3d train` / `predict` / `selftrain` (issue 11, items 3, 14, 16, 20).

A real kill -9 in the middle of a run, a resume with other settings, training into a folder that holds a run,
damaged checkpoints (a flipped byte inside tensor data, zero bytes, truncated, a stale last_checkpoint), bad
inputs (missing or broken data, missing images, an unwritable output, a GPU that is not there) and the default
preset on a CPU machine. Every run is the tiny_cpu recipe for a few iterations without precise BN.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

import cuts3d.engine.train as train_mod
from cuts3d.cli import main
from cuts3d.engine.events import release_run_logger
from cuts3d.synthetic.detection import write_detection_set

FAST = {"max_iter": 4, "checkpoint_period": 2, "log_period": 1, "precise_bn_iters": 0, "num_workers": 0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two synthetic 128 x 128 scenes: (pseudo-mask JSON, image folder)."""
    return write_detection_set(tmp_path_factory.mktemp("data"), range(2))


@pytest.fixture(autouse=True)
def _release_logger():
    yield
    release_run_logger()  # a run stopped by an error keeps log.txt open otherwise


def _overrides(**kw) -> list[str]:
    return [f"{k}={v}" for k, v in {**FAST, **kw}.items()]


def _train_args(dataset, out, *extra: str, **kw) -> list[str]:
    data, images = dataset
    return ["train", "--data", str(data), "--images", str(images), "--output", str(out), "--config", "tiny_cpu",
            *extra, *_overrides(**kw)]


def _error_line(capsys, command: str = "train") -> str:
    """The single `cuts3d COMMAND: error:` line of stderr (and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"cuts3d {command}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _no_model(monkeypatch) -> None:
    """Fail the test if a model is built: the error must come before."""
    def refuse(cfg):
        raise AssertionError("a model was built before the inputs were checked")

    monkeypatch.setattr(train_mod, "build_model", refuse)


# --- item 3: kills, resumes, changed settings, existing run folders -----------------------------------------

KILL_SCRIPT = """
import os, signal, sys
import cuts3d.engine.events as events
from cuts3d.cli import main

real_write = events.TensorBoardWriter.write

def write_then_die(self, record):
    real_write(self, record)  # metrics.jsonl was written just before, TensorBoard now (and flushed)
    if record.get("iteration") == int(os.environ["KILL_AFTER"]):
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer or a scheduler's preemption would

events.TensorBoardWriter.write = write_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_kill_after_a_checkpoint_then_resume_logs_every_iteration_once(dataset, tmp_path):
    """kill -9 after iteration 5 (checkpoint at 4, records 1-5 on disk), --resume: iterations 1-6 each exactly once
    in metrics.jsonl and TensorBoard, with the losses of an uninterrupted run."""
    run = tmp_path / "run"
    args = _train_args(dataset, run, max_iter=6, checkpoint_period=4)
    # the same thread count as this process, so the killed run's losses match the in-process runs' bit for bit
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "KILL_AFTER": "5"}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, *args], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [r["iteration"] for r in _records(run)] == [1, 2, 3, 4, 5]
    assert (run / "last_checkpoint").read_text().strip() == "model_0000004.pth"

    # TensorBoard reads event files in name order, and names start with the creation second: a resume within the
    # same second as the killed run's start (only possible in a test) could sort before the file it purges.
    time.sleep(1.1)
    assert main([*args, "--resume"]) == 0
    resumed = _records(run)
    assert [r["iteration"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert "dropped 1 record(s) after iteration 4" in (run / "log.txt").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = [e.step for e in EventAccumulator(str(run / "tb")).Reload().Scalars("loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]

    whole = tmp_path / "whole"
    assert main(_train_args(dataset, whole, max_iter=6, checkpoint_period=4)) == 0
    for a, b in zip(_records(whole), resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7), (a, b)


@pytest.mark.parametrize("change, key", [("lr=0.02", "lr 0.01 -> 0.02"), ("batch_size=4", "batch_size 2 -> 4"),
                                         ("copy_paste=false", "copy_paste true -> false")])
def test_resume_with_changed_settings_is_refused_in_one_line(dataset, tmp_path, capsys, change, key):
    run = tmp_path / "run"
    assert main(_train_args(dataset, run, max_iter=2)) == 0
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    key_value = change.split("=")
    assert main(_train_args(dataset, run, "--resume", max_iter=4, **{key_value[0]: key_value[1]})) == 2
    line = _error_line(capsys)
    assert key in line and "--force" in line and str(run / "model_final.pth") in line
    assert (run / "metrics.jsonl").read_text() == before  # nothing was trained or logged


def test_resume_force_continues_with_the_new_settings_and_says_so(dataset, tmp_path):
    run = tmp_path / "run"
    assert main(_train_args(dataset, run, max_iter=2)) == 0
    assert main(_train_args(dataset, run, "--resume", "--force", max_iter=3, lr=0.02)) == 0
    assert [r["iteration"] for r in _records(run)] == [1, 2, 3]
    assert "--force: continuing model_final.pth with changed settings: lr 0.01 -> 0.02" in (run / "log.txt").read_text()
    assert torch.load(run / "model_final.pth", weights_only=True)["fingerprint"]["lr"] == 0.02


def test_resume_with_other_data_is_refused(dataset, tmp_path, capsys):
    """The data JSON is fingerprinted by content: a re-extraction into the same path is another run."""
    data, images = dataset
    copy = tmp_path / "pseudo.json"
    coco = json.loads(data.read_text())
    copy.write_text(json.dumps(coco))
    run = tmp_path / "run"
    assert main(_train_args((copy, images), run, max_iter=2)) == 0
    coco["annotations"] = coco["annotations"][:-1]
    copy.write_text(json.dumps(coco))
    capsys.readouterr()
    assert main([*_train_args((copy, images), run, max_iter=3), "--resume"]) == 2
    assert "data_sha256" in _error_line(capsys)


def test_training_into_an_existing_run_is_refused_and_overwrite_starts_over(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(dataset, run, max_iter=2)) == 0
    final = (run / "model_final.pth").read_bytes()
    (run / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(_train_args(dataset, run, max_iter=3)) == 2
    line = _error_line(capsys)
    assert "already holds a training run" in line and "--resume" in line and "--overwrite" in line
    assert (run / "model_final.pth").read_bytes() == final and len(_records(run)) == 2

    assert main([*_train_args(dataset, run, max_iter=3, checkpoint_period=5), "--overwrite"]) == 0
    assert [r["iteration"] for r in _records(run)] == [1, 2, 3]  # the old run's records are gone, not appended to
    assert not (run / "model_0000002.pth").exists()  # the old run's checkpoint was deleted
    assert (run / "notes.txt").read_text() == "mine"  # files the run did not write stay
    assert "--overwrite: removed the earlier run's" in (run / "log.txt").read_text()


def test_selftrain_into_an_existing_run_is_refused_before_predicting(dataset, tmp_path, capsys, monkeypatch):
    data, images = dataset
    prev, out = tmp_path / "prev", tmp_path / "round1"
    assert main(_train_args(dataset, prev, max_iter=2)) == 0
    assert main(_train_args(dataset, out, max_iter=2)) == 0
    import cuts3d.engine.predict as predict_mod

    monkeypatch.setattr(predict_mod, "load_trained", lambda *a, **k: pytest.fail("predicted into an existing run"))
    capsys.readouterr()
    args = ["selftrain", "--model", str(prev), "--data", str(data), "--images", str(images), "--output", str(out),
            "--config", "tiny_cpu", *_overrides(max_iter=2)]
    assert main(args) == 2
    assert "already holds a training run" in _error_line(capsys, "selftrain")


# --- item 20: checkpoints with a checksum --------------------------------------------------------------------


def _flip_tensor_byte(path: Path) -> None:
    """Flip one byte inside the largest tensor's stored data (not the zip's headers or the pickle)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        with open(path, "rb") as f:
            f.seek(info.header_offset + 26)
            name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        offset = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_in_tensor_data_is_an_error_naming_the_file(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(dataset, run, max_iter=2)) == 0
    ckpt = run / "model_final.pth"
    assert (run / "model_final.pth.sha256").read_text().split()[1] == "model_final.pth"
    _flip_tensor_byte(ckpt)
    torch.load(ckpt, weights_only=True)  # torch itself does not notice: the damage is silent without the checksum
    capsys.readouterr()
    assert main([*_train_args(dataset, run, max_iter=3), "--resume"]) == 2
    line = _error_line(capsys)
    assert str(ckpt) in line and "corrupt" in line and "sha256" in line
    pred = tmp_path / "pred.json"
    assert main(["predict", "--model", str(run), "--images", str(dataset[1]), "--output", str(pred),
                 "--device", "cpu"]) == 2
    assert str(ckpt) in _error_line(capsys, "predict") and not pred.exists()


@pytest.mark.parametrize("damage", ["zero_bytes", "truncated"])
def test_damaged_checkpoints_name_the_file(dataset, tmp_path, capsys, damage):
    run = tmp_path / "run"
    assert main(_train_args(dataset, run, max_iter=2)) == 0
    ckpt = run / "model_final.pth"
    raw = ckpt.read_bytes()
    ckpt.write_bytes(b"" if damage == "zero_bytes" else raw[: len(raw) // 2])
    # a damaged file whose checksum was never written (a kill between the rename and the .sha256): torch's own
    # errors must still become one line naming the file
    (run / "model_final.pth.sha256").unlink(missing_ok=True)
    capsys.readouterr()
    assert main([*_train_args(dataset, run, max_iter=3), "--resume"]) == 2
    line = _error_line(capsys)
    assert str(ckpt) in line and ("empty (0 bytes" in line if damage == "zero_bytes" else "cannot be read" in line)
    assert main(["predict", "--model", str(run), "--images", str(dataset[1]), "--output", str(tmp_path / "p.json"),
                 "--device", "cpu"]) == 2
    assert str(ckpt) in _error_line(capsys, "predict")


def test_last_checkpoint_naming_a_missing_file_names_it_and_the_ones_there(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(dataset, run, max_iter=3)) == 0  # model_0000002.pth and model_final.pth
    (run / "last_checkpoint").write_text("model_0009999.pth")
    capsys.readouterr()
    assert main([*_train_args(dataset, run, max_iter=4), "--resume"]) == 2
    line = _error_line(capsys)
    assert "model_0009999.pth, which does not exist" in line and str(run / "last_checkpoint") in line
    assert "model_0000002.pth" in line and "model_final.pth" in line
    assert main(["predict", "--model", str(run), "--images", str(dataset[1]), "--output", str(tmp_path / "p.json"),
                 "--device", "cpu"]) == 2
    assert "model_0009999.pth, which does not exist" in _error_line(capsys, "predict")


def test_a_checkpoint_from_before_checksums_loads_with_a_warning(dataset, tmp_path, caplog):
    run = tmp_path / "run"
    assert main(_train_args(dataset, run, max_iter=2)) == 0
    (run / "model_final.pth.sha256").unlink()
    assert main([*_train_args(dataset, run, max_iter=3), "--resume"]) == 0
    assert "has no model_final.pth.sha256" in caplog.text  # console (stderr) in a shell; pytest captures it here
    assert "model_final.pth has no checksum file" in (run / "log.txt").read_text()


# --- item 14: inputs checked before any model, one line each --------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "not_json", "not_coco", "images_missing", "wrong_image_folder"])
def test_bad_training_inputs_stop_before_any_model_in_one_line(dataset, tmp_path, capsys, monkeypatch, case):
    data, images = dataset
    bad = tmp_path / "bad.json"
    if case == "missing":
        data = tmp_path / "nope.json"
    elif case == "not_json":
        bad.write_bytes(b"\x89PNG not json")
        data = bad
    elif case == "not_coco":
        bad.write_text("[1, 2, 3]")
        data = bad
    elif case == "images_missing":
        coco = json.loads(data.read_text())
        coco["images"][0]["file_name"] = "gone.png"
        bad.write_text(json.dumps(coco))
        data = bad
    else:
        images = tmp_path
    _no_model(monkeypatch)
    assert main(_train_args((data, images), tmp_path / "run")) == 2
    line = _error_line(capsys)
    expected = {"missing": f"--data {data}: no such file", "not_json": "not JSON",
                "not_coco": "not a COCO mapping", "images_missing": "1 of 2 training images",
                "wrong_image_folder": "2 of 2 training images"}[case]
    assert expected in line, line


def test_unwritable_output_is_one_line_before_any_model(dataset, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a folder cannot be made under a file, even as root (where chmod does not stop writes)
    _no_model(monkeypatch)
    assert main(_train_args(dataset, blocker / "run")) == 2
    line = _error_line(capsys)
    assert f"--output {blocker / 'run'}: cannot write there" in line


def test_device_cuda_without_a_gpu_is_one_line(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _no_model(monkeypatch)
    assert main([*_train_args(dataset, tmp_path / "run"), "--device", "cuda"]) == 2
    assert "no CUDA GPU is visible" in _error_line(capsys)
    assert main(["predict", "--model", str(tmp_path), "--images", str(dataset[1]), "--output", str(tmp_path / "p.json"),
                 "--device", "cuda"]) == 2
    assert "no CUDA GPU is visible" in _error_line(capsys, "predict")


# --- item 16: no --config on a machine without a GPU -----------------------------------------------------------


def test_no_config_without_a_gpu_refuses_and_lists_the_presets(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _no_model(monkeypatch)
    data, images = dataset
    assert main(["train", "--data", str(data), "--images", str(images), "--output", str(tmp_path / "run")]) == 2
    line = _error_line(capsys)
    assert all(name in line for name in ("tiny_cpu", "one_gpu", "paper")) and "no GPU" in line
    assert not (tmp_path / "run").exists()
