"""Atomic writes: umask-respecting permissions and the rules for cleaning temporary files left by kills
(cuts3d.io.atomic; issue 11, item 19)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cuts3d.io import atomic
from cuts3d.io.atomic import TEMP_TAG, atomic_write, clean_stale_temps, current_umask, host_tag, is_stale_temp
from cuts3d.pipeline.shards import atomic_write_text


@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_text(tmp_path / "annotations.json", "{}")
        atomic_write(tmp_path / "x.bin", lambda f: f.write(b"\0"))
        atomic_write_text(tmp_path / "annotations.json", "{} ")  # replacing keeps the umask's mode too
    finally:
        os.umask(old)
    for name in ("annotations.json", "x.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
    assert (tmp_path / "annotations.json").read_text() == "{} "
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.json", "x.bin"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    atomic_write_text(tmp_path / "a.json", "old")

    def boom(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "a.json", boom)
    assert (tmp_path / "a.json").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def test_temp_names_carry_host_and_pid_and_only_stale_ones_are_cleaned(tmp_path):
    fd, tmp = atomic.temp_file(tmp_path / "config.yaml")
    os.close(fd)
    assert tmp.name.startswith(f".config.yaml.{TEMP_TAG}.{host_tag()}.{os.getpid()}.") and tmp.name.endswith(".tmp")
    assert not is_stale_temp(tmp)  # this process is alive

    def make(name: str, age_s: float = 0.0) -> Path:
        path = tmp_path / name
        path.write_text("partial")
        if age_s:
            os.utime(path, (time.time() - age_s, time.time() - age_s))
        return path

    host = host_tag()
    stale = [
        make(f".annotations.json.{TEMP_TAG}.{host}.{_dead_pid()}.ab_12cd.tmp"),  # killed on this host
        make(f".annotations.json.{TEMP_TAG}.node-7.{os.getpid()}.ab_12cd.tmp", age_s=7200),  # any host, > 1 h
        make(".annotations.json.k2j4_x9q.tmp", age_s=7200),  # an older cuts3d's mkstemp name, > 1 h
    ]
    kept = [
        tmp,
        make(f".annotations.json.{TEMP_TAG}.{host}.{os.getppid()}.ab_12cd.tmp"),  # writer still running
        make(f".annotations.json.{TEMP_TAG}.node-7.{_dead_pid()}.ab_12cd.tmp"),  # other host: cannot check, young
        make(".annotations.json.m3n8_p0r.tmp"),  # old-style and young: its writer may be running
        make("notes.tmp", age_s=7200),  # not one of ours
        make("annotations.json"),
    ]
    removed = clean_stale_temps(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    assert clean_stale_temps(tmp_path / "absent") == []
