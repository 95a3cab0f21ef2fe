"""The depth cache's exactness and temporary files (cuts3d.depth.cache; issue 11, items 1 and 19)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from cuts3d.depth.cache import DepthCache, round_trip
from cuts3d.io.atomic import TEMP_TAG, host_tag


def _maps() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    relief = (1000.0 + 0.4 * rng.random((16, 24))).astype(np.float32)  # float16 steps by 0.5 here
    holes = (1.0 + 9.0 * rng.random((16, 24))).astype(np.float32)
    holes[0, :3] = [np.nan, np.inf, -np.inf]
    far = (rng.random((16, 24)) * 1e6).astype(np.float32)  # beyond float16: stored as float32
    return {"relief.jpg": relief, "holes.jpg": holes, "far.jpg": far, "f64.jpg": holes.astype(np.float64)}


def test_round_trip_is_bit_identical_to_a_cache_read(tmp_path):
    for dtype in ("float16", "float32"):
        cache = DepthCache(tmp_path, f"m-{dtype}", dtype=dtype)
        for rel, depth in _maps().items():
            cache.put(rel, depth)
            got = cache.get(rel, shape=depth.shape)
            for expected in (cache.round_trip(depth), round_trip(depth, dtype)):
                assert expected.dtype == got.dtype == np.float32
                assert expected.tobytes() == got.tobytes(), (dtype, rel)  # bit for bit, NaN included
            # and storing the round-tripped map again changes nothing (a resumed run re-caches it)
            cache.put(rel, cache.round_trip(depth))
            assert cache.get(rel).tobytes() == got.tobytes()
    # float16 really rounds a far scene's relief (why fresh maps must be round-tripped too) ...
    relief = _maps()["relief.jpg"]
    assert not np.array_equal(round_trip(relief, "float16"), relief)
    np.testing.assert_array_equal(round_trip(_maps()["far.jpg"], "float16"), _maps()["far.jpg"])


def test_default_storage_keeps_the_map_exactly(tmp_path):
    # ... so the default stores float32: a nearly flat map stays a map (float16 would make it constant)
    cache = DepthCache(tmp_path, "m")
    flat = np.float32(0.6934) + np.linspace(0, 1e-4, 16 * 24, dtype=np.float32).reshape(16, 24)
    assert np.unique(round_trip(flat, "float16")).size == 1
    cache.put("flat.jpg", flat)
    assert np.load(cache.path("flat.jpg")).dtype == np.float32
    assert cache.get("flat.jpg").tobytes() == flat.tobytes() == cache.round_trip(flat).tobytes()


def test_stale_temp_files_of_killed_writers_are_cleaned(tmp_path):
    cache = DepthCache(tmp_path, "m")
    cache.put("a.jpg", np.ones((4, 4), np.float32))
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)

    def temp(pid: int, host: str = host_tag(), age_s: float = 0.0):
        path = cache.temp_folder / f".a.jpg.npy.{TEMP_TAG}.{host}.{pid}.zz9_x1.tmp"
        path.write_bytes(b"\x93NUMPY half")
        if age_s:
            os.utime(path, (time.time() - age_s, time.time() - age_s))
        return path

    killed = temp(dead)
    running = temp(os.getppid())
    other_host_young = temp(123, host="other-node")
    other_host_old = temp(456, host="other-node", age_s=2 * 3600)
    # killed on this host, or older than an hour (no write takes that long): stale
    assert sorted(cache.clean_stale_temps()) == sorted([killed, other_host_old])
    assert running.exists() and other_host_young.exists()  # a writer that may still be running
    assert cache.get("a.jpg") is not None  # cached maps are never touched
