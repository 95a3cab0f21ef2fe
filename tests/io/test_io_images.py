"""Image listing and decoding (cuts3d.io.images): every bad input gives an ImageLoadError whose reason says
what is wrong and what to do; good inputs in odd modes / orientations / paths come out as (H, W, 3) uint8."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from cuts3d.io import ImageLoadError, ImageRecord, NoImagesError, image_id_for, list_images, load_image, resize_square
from cuts3d.io import images as images_module

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
COCO_IMAGES = DATA / "coco_val2017_dev128" / "images"

needs_coco = pytest.mark.skipif(
    not COCO_IMAGES.is_dir(), reason=f"real COCO dev images not found at {COCO_IMAGES} (expected ../shared/data)"
)


def rgb_array(h: int = 40, w: int = 60) -> np.ndarray:
    """A smooth colour image (not constant, so resampling and orientation are observable)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 77)], -1).astype(np.uint8)


def save(tmp_path: Path, name: str, img: Image.Image, **kwargs) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny valid-header PNG whose IHDR claims width x height (1-bit gray), written in microseconds.

    Decoding it would need the full image; the header alone gives the size.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = zlib.compress(b"\x00" * 64)
    idat = b"IDAT" + data
    png = (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(data))
        + idat
        + struct.pack(">I", zlib.crc32(idat))
        + struct.pack(">I", 0)
        + b"IEND"
        + struct.pack(">I", zlib.crc32(b"IEND"))
    )
    path.write_bytes(png)
    return path


# --- bad inputs -------------------------------------------------------------------------------------------


def reason_of(path: Path, **kwargs) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_image(path, **kwargs)
    err = info.value
    assert err.path == Path(path) and str(path) in str(err)
    assert err.reason.endswith(".") and len(err.reason.split()) >= 8, "reason must be a full sentence"
    return err.reason


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    reason = reason_of(path)
    assert "empty (0 bytes)" in reason and "re-copy" in reason


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    reason = reason_of(path)
    assert "not an image" in reason and "text file" in reason and "remove" in reason


def test_random_bytes_named_png(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(bytes(range(256)) * 4)
    assert "not an image" in reason_of(path)


@pytest.mark.parametrize("keep", [0.3, 0.9, "no_eoi"])
def test_truncated_jpeg_is_refused(tmp_path, keep):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # someone set it globally: truncated files would pass
    full = save(tmp_path, "full.jpg", Image.fromarray(rgb_array(200, 300)), quality=95)
    data = full.read_bytes()
    cut = data[:-2] if keep == "no_eoi" else data[: int(len(data) * keep)]
    path = tmp_path / "cut.jpg"
    path.write_bytes(cut)
    reason = reason_of(path)
    assert "truncated" in reason and "re-copy or re-download" in reason


def test_corrupt_png_data(tmp_path):
    full = save(tmp_path, "full.png", Image.fromarray(rgb_array(64, 64)))
    data = bytearray(full.read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 8 : idat + 40] = b"\xff" * 32  # garble the compressed stream, keep the header
    path = tmp_path / "garbled.png"
    path.write_bytes(bytes(data))
    reason = reason_of(path)
    assert "cannot be decoded" in reason or "corrupt" in reason


def test_too_small(tmp_path):
    path = save(tmp_path, "dot.png", Image.new("RGB", (1, 1)))
    reason = reason_of(path)
    assert "1x1" in reason and "min_side=16" in reason and "remove" in reason
    # one side above, one below the limit is still refused; the limit is a parameter
    thin = save(tmp_path, "thin.png", Image.new("RGB", (200, 10)))
    assert "200x10" in reason_of(thin)
    assert load_image(thin, min_side=10).shape == (10, 200, 3)


def test_huge_image_refused_from_header_without_decoding(tmp_path, monkeypatch):
    def no_decoding(self):
        raise AssertionError("load_image decoded pixels of an image it must refuse from the header")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    # 20000 x 20000 = 400 MP: above PIL's own bomb limit too, refused at open
    huge = png_claiming_size(tmp_path / "huge.png", 20000, 20000)
    reason = reason_of(huge)
    assert "400 megapixels" in reason and "downscale" in reason
    # below PIL's limit, above ours: our header check
    big = png_claiming_size(tmp_path / "big.png", 6000, 5000)
    reason = reason_of(big, max_pixels=10_000_000)
    assert "6000x5000" in reason and "30 megapixels" in reason and "10 megapixels" in reason
    assert "raise max_pixels" in reason


def test_permission_denied(tmp_path, monkeypatch):
    path = save(tmp_path, "locked.png", Image.fromarray(rgb_array()))
    if os.geteuid() != 0:  # root reads anything: then simulate the OS refusing the open
        path.chmod(0)
    else:

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(images_module.Image, "open", refuse)
    try:
        reason = reason_of(path)
    finally:
        path.chmod(0o644)
    assert "permission denied" in reason and "chmod" in reason


def test_missing_file_and_folder(tmp_path):
    assert "does not exist" in reason_of(tmp_path / "nope.jpg")
    (tmp_path / "dir.jpg").mkdir()
    assert "folder" in reason_of(tmp_path / "dir.jpg")


# --- modes, orientation, paths ------------------------------------------------------------------------------


def test_exif_orientation_6_is_applied(tmp_path):
    arr = rgb_array(40, 60)  # stored landscape 60 wide x 40 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = save(tmp_path, "rotated.jpg", Image.fromarray(arr), exif=exif.tobytes(), quality=95)
    out = load_image(path)
    assert out.shape == (60, 40, 3)  # displayed portrait
    # the stored top-left corner (dark red=0 at x=0) ends at the displayed top-right after a CW turn
    expected = np.rot90(arr, k=-1)
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 4


@pytest.mark.parametrize(
    "mode",
    ["L", "1", "P", "P_transparent", "CMYK", "RGBA", "LA", "I;16", "I", "F"],
)
def test_modes_become_rgb_uint8(tmp_path, mode):
    base = Image.fromarray(rgb_array(32, 48))
    if mode == "P_transparent":
        img = base.convert("P")
        img.info["transparency"] = 0
        ext = "png"
    elif mode == "I;16":
        img = Image.fromarray((np.arange(32 * 48).reshape(32, 48) * 40).astype(np.uint16))
        ext = "png"
    elif mode in ("I", "F"):
        values = np.arange(32 * 48, dtype=np.float32).reshape(32, 48) * 1000.0
        img = Image.fromarray(values.astype(np.int32) if mode == "I" else values)
        ext = "tif"
    else:
        img = base.convert(mode)
        ext = "jpg" if mode == "CMYK" else "png"
    path = save(tmp_path, f"m_{mode.replace(';', '')}.{ext}", img)
    out = load_image(path)
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"] and out.flags.writeable
    if mode in ("I;16", "I", "F"):
        # scaled by the image's own range: a ramp uses the full 0..255 and stays gray and ordered
        assert out.min() == 0 and out.max() == 255
        assert (out[..., 0] == out[..., 1]).all() and out[0, 0, 0] < out[-1, -1, 0]
    if mode == "L":
        assert (out[..., 0] == out[..., 2]).all()


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 255  # red ...
    rgba[:, :10, 3] = 0  # ... left half fully transparent
    rgba[:, 10:, 3] = 255
    out = load_image(save(tmp_path, "alpha.png", Image.fromarray(rgba, "RGBA")))
    assert (out[:, :10] == 255).all()  # white, not black or red
    assert (out[:, 10:] == [255, 0, 0]).all()


def test_unicode_and_space_paths(tmp_path):
    folder = tmp_path / "photos été" / "sub dir"
    path = save(folder, "café 北京 1.png", Image.fromarray(rgb_array()))
    assert load_image(path).shape == (40, 60, 3)
    records = list_images(tmp_path / "photos été")
    assert [r.rel for r in records] == ["sub dir/café 北京 1.png"]
    assert records[0].path == path


# --- listing --------------------------------------------------------------------------------------------------


def make_tree(root: Path) -> None:
    for rel in ["b.jpg", "a.PNG", "sub/c.JpEg", "sub/deeper/d.webp", "z.tiff", "x.bmp", "y.TIF"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")  # listing does not decode
    for rel in ["notes.txt", "clip.gif", "._b.jpg", ".hidden/e.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")


def test_folder_listing_sorted_recursive_case_insensitive(tmp_path):
    make_tree(tmp_path)
    records = list_images(tmp_path)
    assert [r.rel for r in records] == [
        "a.PNG",
        "b.jpg",
        "sub/c.JpEg",
        "sub/deeper/d.webp",
        "x.bmp",
        "y.TIF",
        "z.tiff",
    ]
    assert all(isinstance(r, ImageRecord) and r.path.is_absolute() and r.path.is_file() for r in records)
    assert list_images(tmp_path) == records  # deterministic


def test_ids_are_stable_positive_31_bit(tmp_path):
    make_tree(tmp_path)
    records = list_images(tmp_path)
    ids = [r.image_id for r in records]
    assert len(set(ids)) == len(ids) and all(0 < i < 2**31 for i in ids)
    # the id depends on rel only (not on the folder's location or the machine): a pinned value
    assert (
        image_id_for("000000005001.jpg")
        == int.from_bytes(__import__("hashlib").sha1(b"000000005001.jpg").digest()[:4], "big") & 0x7FFFFFFF
    )
    other = tmp_path / "elsewhere"
    make_tree(other)
    assert [(r.rel, r.image_id) for r in list_images(other)] == [(r.rel, r.image_id) for r in records]
    # NFC and NFD spellings of the same name (Linux vs macOS) give the same id
    assert image_id_for("caf\u00e9.jpg") == image_id_for("cafe\u0301.jpg")


def test_id_collisions_are_resolved(monkeypatch, tmp_path):
    real = images_module.image_id_for
    monkeypatch.setattr(images_module, "image_id_for", lambda rel, salt=0: 7 if salt == 0 else real(rel, salt))
    make_tree(tmp_path)
    ids = [r.image_id for r in list_images(tmp_path)]
    assert len(set(ids)) == len(ids) and ids[0] == 7  # the first rel in sorted order keeps its hash


def test_empty_folder_and_only_other_files(tmp_path):
    with pytest.raises(NoImagesError, match="searched recursively for files ending in .jpg .jpeg") as info:
        list_images(tmp_path)
    assert str(tmp_path) in str(info.value) and "empty" in str(info.value)
    (tmp_path / "a.gif").write_bytes(b"x")
    (tmp_path / "b.heic").write_bytes(b"x")
    with pytest.raises(NoImagesError, match=r"other files: .*\.gif \(1\)"):
        list_images(tmp_path)
    assert issubclass(NoImagesError, ValueError)


def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass a folder of images or a text file"):
        list_images(tmp_path / "nowhere")


def test_text_list_relative_absolute_comments(tmp_path):
    make_tree(tmp_path / "imgs")
    other = tmp_path / "other dir"
    other.mkdir()
    (other / "w.jpg").write_bytes(b"x")
    lst = tmp_path / "list.txt"
    lst.write_text(
        "# my subset\n"
        "imgs/sub/c.JpEg\n"
        "\n"
        f"   {tmp_path / 'imgs' / 'b.jpg'}   \n"  # absolute, surrounded by spaces
        "imgs/b.jpg\n"  # the same file again: dropped
        "other dir/w.jpg\r\n",
        encoding="utf-8",
    )
    records = list_images(lst)
    assert [r.rel for r in records] == ["imgs/sub/c.JpEg", "imgs/b.jpg", "other dir/w.jpg"]  # list order kept
    assert records[1].path == tmp_path / "imgs" / "b.jpg"
    assert records[1].image_id == image_id_for("imgs/b.jpg")


def test_text_list_outside_its_folder_uses_common_root(tmp_path):
    make_tree(tmp_path / "data")
    lists = tmp_path / "lists"
    lists.mkdir()
    lst = lists / "val.txt"
    lst.write_text("../data/sub/c.JpEg\n../data/x.bmp\n")
    assert [r.rel for r in list_images(lst)] == ["sub/c.JpEg", "x.bmp"]


def test_text_list_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n   \n")
    with pytest.raises(NoImagesError, match="lists no images"):
        list_images(empty)
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg\n# c\nmissing one.jpg\n")
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="1 listed file.*line 3: .*missing one.jpg"):
        list_images(bad)
    binary = tmp_path / "archive.zip"
    binary.write_bytes(b"PK\x03\x04\xff\xfe\x00\x9c")
    with pytest.raises(ValueError, match="not UTF-8 text"):
        list_images(binary)


def test_single_image_source(tmp_path):
    path = save(tmp_path, "one.png", Image.fromarray(rgb_array()))
    assert [(r.rel, r.path) for r in list_images(path)] == [("one.png", path)]


# --- resize and real images ---------------------------------------------------------------------------------


def test_resize_square_matches_pil_lanczos():
    arr = rgb_array(37, 53)
    out = resize_square(arr, 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(arr).resize((24, 24), Image.LANCZOS)))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        resize_square(arr.astype(np.float32))


@needs_coco
def test_real_coco_folder():
    records = list_images(COCO_IMAGES)
    assert len(records) == 128 and records == sorted(records, key=lambda r: r.rel)
    image = load_image(records[0].path)
    with Image.open(records[0].path) as ref:
        assert image.shape == (ref.height, ref.width, 3)
        np.testing.assert_array_equal(image, np.asarray(ref.convert("RGB")))
    assert resize_square(image).shape == (480, 480, 3)


def test_skipped_entries_are_reported_by_reason(tmp_path):
    from cuts3d.io import scan_images

    make_tree(tmp_path)  # notes.txt, clip.gif, ._b.jpg and .hidden/ besides the images
    (tmp_path / "x.jpg").mkdir()
    (tmp_path / "x.jpg" / "inside.png").write_bytes(b"x")
    (tmp_path / "linked").symlink_to(tmp_path / "sub", target_is_directory=True)
    listing = scan_images(tmp_path)
    assert [r.rel for r in listing.records] == [r.rel for r in list_images(tmp_path)]
    assert "x.jpg/inside.png" in [r.rel for r in listing.records]  # a folder named like an image is searched
    assert listing.skipped == {
        "unknown extension .txt": ["notes.txt"],
        "GIF (not supported: convert to PNG)": ["clip.gif"],
        "dot-file": ["._b.jpg"],
        "hidden folder": [".hidden"],
        "folder named like an image (searched as a folder)": ["x.jpg"],
        "symlinked folder (not followed)": ["linked"],
    }
    assert listing.skipped_count() == 5


def test_names_that_are_not_utf8_are_listed_with_stable_ids(tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9.png"  # Latin-1 bytes: not valid UTF-8
    Image.fromarray(rgb_array()).save(os.fsdecode(raw), format="PNG")
    (record,) = list_images(tmp_path)
    assert os.fsencode(record.path) == raw and load_image(record.path).shape == (40, 60, 3)
    assert record.image_id == int.from_bytes(__import__("hashlib").sha1(b"caf\xe9.png").digest()[:4], "big") & 0x7FFFFFFF
