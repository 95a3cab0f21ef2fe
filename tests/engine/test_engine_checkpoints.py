"""cuts3d.engine.checkpoints: durable writes (fsync before the rename), the sha256 sidecar, verified reads."""

from __future__ import annotations

import hashlib
import logging
import os

import pytest
import torch

import cuts3d.engine.checkpoints as ckpt_mod
from cuts3d.engine.checkpoints import (
    latest_checkpoint,
    load_weights_into,
    read_checkpoint,
    remove_stale_temps,
    save_checkpoint,
    sidecar_path,
)
from cuts3d.features.weights import CheckpointError


def _state() -> dict:
    return {"model": {"w": torch.arange(1000, dtype=torch.float32)}, "iteration": 7}


def test_save_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) if os.path.exists("/proc/self/fd") else fd))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(src), os.path.basename(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "fsync", fsync)
    monkeypatch.setattr(ckpt_mod.os, "replace", replace)
    path = tmp_path / "model_0000007.pth"
    save_checkpoint(_state(), path, marker=False)
    first_replace = next(i for i, e in enumerate(events) if e[0] == "replace")
    assert events[first_replace] == ("replace", ".model_0000007.pth.tmp", "model_0000007.pth")
    assert ("fsync", ".model_0000007.pth.tmp") in events[:first_replace]  # data on disk before it gets the name
    assert ("fsync", tmp_path.name) in events[first_replace:]  # and the rename itself made durable


def test_sidecar_is_the_sha256_of_the_file_in_sha256sum_format(tmp_path):
    path = tmp_path / "model_final.pth"
    digest = save_checkpoint(_state(), path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar_path(path).read_text() == f"{digest}  model_final.pth\n"
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    torch.testing.assert_close(read_checkpoint(path)["model"]["w"], _state()["model"]["w"])


def test_files_follow_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "model_final.pth"
        save_checkpoint(_state(), path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the other users of a shared cluster


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "model_final.pth"
    save_checkpoint(_state(), path)
    before = path.read_bytes()

    def full_disk(obj, f, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"model": {}}, path)
    assert path.read_bytes() == before and sidecar_path(path).is_file()
    assert not list(tmp_path.glob(".*.tmp"))


def test_overwriting_drops_the_old_sidecar_before_the_rename(tmp_path, monkeypatch):
    """A kill between the rename and the new sidecar must leave no stale checksum that calls a good file corrupt."""
    path = tmp_path / "model_final.pth"
    save_checkpoint(_state(), path)

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(ckpt_mod, "atomic_write_text", killed)  # dies right after the rename
    with pytest.raises(Killed):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "iteration": 9}, path)
    assert not sidecar_path(path).exists()
    assert read_checkpoint(path)["iteration"] == 9  # unverified, with a warning, but not refused


def test_read_refuses_a_sidecar_without_a_digest(tmp_path):
    path = tmp_path / "model_final.pth"
    save_checkpoint(_state(), path)
    sidecar_path(path).write_text("garbage\n")
    with pytest.raises(CheckpointError, match="holds no sha256"):
        read_checkpoint(path)


def test_read_refuses_a_foreign_pickle_and_a_non_dict(tmp_path):
    foreign = tmp_path / "weights.pth"
    foreign.write_bytes(b"\x80\x02Ke.")  # a pickle of the int 101, not a checkpoint (torch's zip reader refuses it)
    with pytest.raises(CheckpointError, match="weights.pth cannot be read"):
        read_checkpoint(foreign)
    listed = tmp_path / "list.pth"
    torch.save([1, 2], listed)
    with pytest.raises(CheckpointError, match="holds a list"):
        read_checkpoint(listed)


def test_empty_marker_and_stale_temps(tmp_path):
    (tmp_path / "last_checkpoint").write_text("\n")
    with pytest.raises(CheckpointError, match="last_checkpoint is empty.*none is left here"):
        latest_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path / "nothing") is None
    (tmp_path / ".model_0000005.pth.tmp").write_bytes(b"half")
    (tmp_path / "model_0000005.tmp").write_bytes(b"half")  # the name older versions used
    (tmp_path / "keep.tmp").write_bytes(b"mine")
    assert remove_stale_temps(tmp_path) == [".model_0000005.pth.tmp", "model_0000005.tmp"]
    assert (tmp_path / "keep.tmp").exists()


def test_weights_of_another_architecture_name_the_file_and_the_keys(tmp_path):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match=r"x.pth does not fit.*1 missing keys \(e.g. bias\).*1 shape mismatches"):
        load_weights_into(model, {"weight": torch.zeros(5, 3)}, tmp_path / "x.pth")
    load_weights_into(model, {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, tmp_path / "x.pth")
    assert float(model.weight.detach().sum()) == 6.0


def test_no_sidecar_warns(tmp_path, caplog):
    path = tmp_path / "old.pth"
    torch.save(_state(), path)
    with caplog.at_level(logging.WARNING, logger="cuts3d"):
        assert read_checkpoint(path)["iteration"] == 7
    assert "has no old.pth.sha256" in caplog.text
