"""Precomputed depth (cuts3d.depth.precomputed) and the depth cache (cuts3d.depth.cache): files are found by
the image's relative path, read in every supported format, and every bad file gives a DepthInputError that
says what to do; cache writes round-trip and are atomic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cuts3d.depth import DepthCache, DepthInputError, PrecomputedDepth, depth_warnings
from cuts3d.depth import cache as cache_module
from cuts3d.io import atomic as atomic_module

H, W = 12, 20


def ramp() -> np.ndarray:
    """(H, W) float32 depth with distinct values (so transposes and flips are visible)."""
    return (np.arange(H * W, dtype=np.float32).reshape(H, W) + 1.0) * 0.5


# --- PrecomputedDepth -----------------------------------------------------------------------------------------


def test_reads_npy_png16_and_tiff(tmp_path):
    depth = ramp()
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "a.npy", depth.astype(np.float64))
    mm = (depth * 1000).astype(np.uint16)  # e.g. millimetres
    Image.fromarray(mm).save(tmp_path / "b.png")
    Image.fromarray(depth).save(tmp_path / "c.tiff")
    Image.fromarray(depth).save(tmp_path / "d e é.tif")
    source = PrecomputedDepth(tmp_path)

    a = source("sub/a.jpg", (H, W))
    assert a.dtype == np.float32 and a.shape == (H, W)
    np.testing.assert_array_equal(a, depth)
    b = source("b.JPG", (H, W))
    assert b.dtype == np.float32
    np.testing.assert_array_equal(b, mm.astype(np.float32))  # 16-bit values kept as stored
    np.testing.assert_array_equal(source("c.png", (H, W)), depth)
    np.testing.assert_array_equal(source("d e é.jpeg", (H, W)), depth)


def test_lookup_order_npy_png_tiff(tmp_path):
    np.save(tmp_path / "x.npy", np.full((H, W), 1.0, np.float32))
    Image.fromarray(np.full((H, W), 2, np.uint16)).save(tmp_path / "x.png")
    Image.fromarray(np.full((H, W), 3.0, np.float32)).save(tmp_path / "x.tiff")
    source = PrecomputedDepth(tmp_path)
    assert source("x.jpg", (H, W))[0, 0] == 1.0
    (tmp_path / "x.npy").unlink()
    assert source("x.jpg", (H, W))[0, 0] == 2.0
    (tmp_path / "x.png").unlink()
    assert source("x.jpg", (H, W))[0, 0] == 3.0
    assert [p.name for p in source.candidates("x.jpg")] == ["x.npy", "x.png", "x.tiff", "x.tif"]


def test_zero_in_integer_png_is_missing_and_singleton_axes_squeezed(tmp_path):
    mm = (ramp() * 10).astype(np.uint16)
    mm[0, :3] = 0
    Image.fromarray(mm).save(tmp_path / "z.png")
    out = PrecomputedDepth(tmp_path)("z.jpg", (H, W))
    assert np.isnan(out[0, :3]).all() and np.isfinite(out[1:]).all()
    np.save(tmp_path / "s.npy", ramp()[..., None])
    assert PrecomputedDepth(tmp_path)("s.jpg", (H, W)).shape == (H, W)


def test_missing_file_names_the_paths_tried(tmp_path):
    with pytest.raises(DepthInputError) as info:
        PrecomputedDepth(tmp_path)("sub/img.jpg", (H, W))
    reason = info.value.reason
    for ext in (".npy", ".png", ".tiff", ".tif"):
        assert str(tmp_path / "sub" / f"img{ext}") in reason
    assert "no depth map for image 'sub/img.jpg'" in reason
    assert isinstance(info.value, ValueError)


def test_wrong_size_and_transposed(tmp_path):
    np.save(tmp_path / "t.npy", ramp().T)
    np.save(tmp_path / "s.npy", ramp()[:6])
    source = PrecomputedDepth(tmp_path)
    with pytest.raises(DepthInputError) as info:
        source("t.jpg", (H, W))
    assert f"is {W}x{H} (HxW) but image 't.jpg' is {H}x{W}" in info.value.reason
    assert "looks transposed" in info.value.reason and "EXIF" in info.value.reason
    with pytest.raises(DepthInputError) as info:
        source("s.jpg", (H, W))
    assert f"is 6x{W} (HxW)" in info.value.reason and "looks transposed" not in info.value.reason
    assert "resize it" in info.value.reason


def test_unreadable_and_unsuitable_files(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "txt.png").write_text("not a png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "rgb.png")
    np.save(tmp_path / "cube.npy", np.zeros((2, H, W), np.float32))
    np.save(tmp_path / "obj.npy", np.array(["a", "b"]))
    source = PrecomputedDepth(tmp_path)
    cases = {
        "bad.jpg": "cannot be read",
        "txt.jpg": "cannot be read",
        "rgb.jpg": "colour mode 'RGB'",
        "cube.jpg": "must be 2-D",
        "obj.jpg": "not numbers",
    }
    for rel, expected in cases.items():
        with pytest.raises(DepthInputError, match=expected):
            source(rel, (H, W))
    with pytest.raises(DepthInputError, match="relative"):
        source("../escape.jpg", (H, W))
    with pytest.raises(FileNotFoundError, match="precomputed depth folder"):
        PrecomputedDepth(tmp_path / "nope")


def test_nan_and_constant_maps_are_allowed_but_reported(tmp_path):
    part = ramp()
    part[:3] = np.nan
    part[3, 0] = np.inf
    np.save(tmp_path / "p.npy", part)
    np.save(tmp_path / "c.npy", np.full((H, W), 4.0, np.float32))
    np.save(tmp_path / "n.npy", np.full((H, W), np.nan, np.float32))
    source = PrecomputedDepth(tmp_path)

    notes = depth_warnings(source("p.jpg", (H, W)))
    share = 100.0 * (3 * W + 1) / (H * W)
    assert len(notes) == 1 and f"{share:.1f}% of depth pixels are NaN/inf" in notes[0]
    notes = depth_warnings(source("c.jpg", (H, W)))
    assert len(notes) == 1 and "constant (4)" in notes[0] and "no 3D cue" in notes[0]
    notes = depth_warnings(source("n.jpg", (H, W)))
    assert len(notes) == 1 and "NaN/inf everywhere" in notes[0]
    assert depth_warnings(ramp()) == []


# --- DepthCache --------------------------------------------------------------------------------------------


def test_cache_round_trip_per_model(tmp_path):
    depth = ramp()
    depth[0, 0] = np.nan
    a = DepthCache(tmp_path, "depth_anything_v2_small", dtype="float16")
    z = DepthCache(tmp_path, "zoedepth", dtype="float32")
    assert a.get("sub dir/é.jpg") is None
    a.put("sub dir/é.jpg", depth)
    z.put("sub dir/é.jpg", depth * 2)

    got = a.get("sub dir/é.jpg")
    assert got.dtype == np.float32 and got.shape == (H, W) and np.isnan(got[0, 0])
    np.testing.assert_allclose(got, depth, rtol=1e-3)  # float16 storage
    np.testing.assert_array_equal(z.get("sub dir/é.jpg"), depth * 2)  # float32: exact, and not mixed with a
    assert a.path("sub dir/é.jpg") == tmp_path / "depth_anything_v2_small" / "sub dir" / "é.jpg.npy"
    assert np.load(a.path("sub dir/é.jpg")).dtype == np.float16
    # a.jpg and a.png do not share a cache file
    assert a.path("a.jpg") != a.path("a.png")
    # a stale entry of another size is a miss when the caller gives the expected shape
    assert a.get("sub dir/é.jpg", shape=(H, W)) is not None and a.get("sub dir/é.jpg", shape=(W, H)) is None


def test_cache_float16_overflow_falls_back_to_float32(tmp_path):
    cache = DepthCache(tmp_path, "m", dtype="float16")
    big = ramp() * 1e4  # up to 1.2e6: beyond float16's 65504
    cache.put("big.png", big)
    np.testing.assert_array_equal(cache.get("big.png"), big)


def test_cache_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    cache = DepthCache(tmp_path, "m")
    cache.put("x.jpg", ramp())
    cache.put("x.jpg", ramp() + 1)  # overwrite in place
    # temporary files go to one flat folder (cheap to clean after a kill), which is empty between writes
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == [cache_module.TEMP_FOLDER, "x.jpg.npy"] and not any(cache.temp_folder.iterdir())
    np.testing.assert_allclose(cache.get("x.jpg"), ramp() + 1, rtol=1e-3)

    # a crash between writing and renaming (here: in os.replace) keeps the old file intact and no temp file
    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_module.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.put("x.jpg", np.zeros((H, W), np.float32))
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [cache_module.TEMP_FOLDER, "x.jpg.npy"]
    assert not any(cache.temp_folder.iterdir())
    np.testing.assert_allclose(cache.get("x.jpg"), ramp() + 1, rtol=1e-3)


def test_cache_unreadable_file_is_a_miss(tmp_path):
    cache = DepthCache(tmp_path, "m")
    path = cache.path("t.jpg")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x93NUMPY\x01\x00")  # a truncated file from some older, non-atomic writer
    assert cache.get("t.jpg") is None
    cache.put("t.jpg", ramp())
    assert cache.get("t.jpg") is not None


def test_cache_key_validation(tmp_path):
    with pytest.raises(ValueError, match="relative"):
        DepthCache(tmp_path, "m").path("/etc/passwd")
    with pytest.raises(ValueError, match="relative"):
        DepthCache(tmp_path, "m").path("../x.jpg")
    # model names cannot escape the cache root
    assert DepthCache(tmp_path, "../evil/name").folder.parent == tmp_path
    with pytest.raises(ValueError, match="dtype"):
        DepthCache(tmp_path, "m", dtype="int8")
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        DepthCache(tmp_path, "m").put("x.jpg", np.zeros((2, 3, 4)))
    assert not any(Path(root).name.startswith(".") for root, _, _ in os.walk(tmp_path))
