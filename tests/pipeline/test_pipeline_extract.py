"""End-to-end extraction on real COCO images with tiny random-weight models: output format, shards, kill -9
and resume, bad inputs, precomputed depth, the Ray engine."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from pycocotools.coco import COCO

from cuts3d.pipeline.extract import ExtractConfig, extract, resolve_config
from cuts3d.pipeline.shards import read_log, shard_log_path

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "coco_val2017_dev128" / "images"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real COCO images not found at {DATA} (../shared/data)")

# Tiny but real: ViT-S/16 at 128 px (8 x 8 patches), a tiny random Depth Anything.
TINY = ["backbone=dino_vits16", "weights=none", "depth_weights=none", "size=128", "depth_overrides=tiny", "depth_input_size=56",
        "cut.crf=false"]  # random features give tiny masks that the CRF (rightly) rejects


def _images(n: int) -> list[Path]:
    return sorted(DATA.glob("*.jpg"))[:n]


def _listing(tmp_path: Path, paths: list[Path]) -> Path:
    f = tmp_path / "images.txt"
    f.write_text("".join(f"{p}\n" for p in paths))
    return f


def _cfg(images, output, *extra) -> ExtractConfig:
    return resolve_config({"images": str(images), "output": str(output)}, None, TINY + list(extra))


def _content(path: Path) -> dict:
    d = json.loads(Path(path).read_text())
    return {"images": d["images"], "annotations": d["annotations"]}


def test_extract_writes_coco_json_that_pycocotools_loads(tmp_path):
    imgs = _images(3)
    out = tmp_path / "out"
    result = extract(_cfg(_listing(tmp_path, imgs), out))
    assert result == out / "annotations.json"
    coco = COCO(str(result))
    assert len(coco.imgs) == 3 and coco.getCatIds() == [1]
    for img, path in zip(sorted(coco.imgs.values(), key=lambda i: i["file_name"]), imgs):
        w, h = Image.open(path).size
        assert (img["width"], img["height"]) == (w, h)
    anns = coco.dataset["annotations"]
    assert anns, "no pseudo-masks at all"
    # the floor the SC maps were clipped at, for training's confidence_floor check (Table 5c)
    assert coco.dataset["info"]["confidence_floor"] == 0.5
    from cuts3d.masks.coco import decode_confidence

    for a in anns:
        assert isinstance(a["segmentation"]["counts"], str) and a["iscrowd"] == 0 and a["category_id"] == 1
        img = coco.imgs[a["image_id"]]
        assert coco.annToMask(a).shape == (img["height"], img["width"]) and a["area"] > 0
        sc = decode_confidence(a["confidence"])
        assert sc.shape == (8, 8) and 0.5 <= sc.min() and sc.max() <= 1
        assert 0 <= a["confidence_score"] <= 1 and 0 <= a["front"] <= 1
        # the ranking score is the mean SC times the 3D front factor (CutConfig.score_front)
        assert a["score"] == pytest.approx(a["confidence_score"] * (1 + a["front"]) / 2)
    for name in ("config.yaml", "errors.jsonl", "run_meta.json"):
        assert (out / name).is_file()
    meta = json.loads((out / "run_meta.json").read_text())
    assert meta["backbone"] == "dino_vits16" and meta["backbone_weights"] == "random" and "torch" in meta


def test_shards_then_merge_equal_single_run(tmp_path):
    listing = _listing(tmp_path, _images(4))
    single = extract(_cfg(listing, tmp_path / "single"))
    assert extract(_cfg(listing, tmp_path / "sharded", "shard=0/2")) is None  # shard 1 still missing
    merged = extract(_cfg(listing, tmp_path / "sharded", "shard=1/2"))  # the last shard merges
    assert _content(merged) == _content(single)
    from cuts3d.cli import main

    assert main(["merge", str(tmp_path / "sharded"), "--output", str(tmp_path / "again")]) == 0
    assert _content(tmp_path / "again" / "annotations.json") == _content(single)
    # One image per ViT pass gives the same result as the default batches.
    assert _content(extract(_cfg(listing, tmp_path / "b1", "batch_size=1"))) == _content(single)


def test_kill_9_and_resume_equals_uninterrupted(tmp_path):
    listing = _listing(tmp_path, _images(6))
    reference = extract(_cfg(listing, tmp_path / "ref"))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cuts3d", "extract", "--images", str(listing), "--output", str(out), *TINY]
    log = shard_log_path(out, 0, 1)
    for kill_after in (1, 3):  # kill twice, at different points of the run
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and len(read_log(log)) < kill_after and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (out / "annotations.json").exists()
    done = len(read_log(log))
    assert 1 <= done < 6
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _content(out / "annotations.json") == _content(reference)
    rels = [r["rel"] for r in read_log(log)]
    assert len(rels) == len(set(rels)) == 6  # none lost, none duplicated


def test_bad_inputs_are_recorded_and_the_job_goes_on(tmp_path):
    src = tmp_path / "imgs"
    (src / "ünï cödé").mkdir(parents=True)
    good = src / "ünï cödé" / "with space.jpg"
    shutil.copy(_images(1)[0], good)
    (src / "empty.jpg").write_bytes(b"")
    data = _images(2)[1].read_bytes()
    (src / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (src / "text.jpg").write_text("this is not an image")
    Image.new("RGB", (1, 1)).save(src / "tiny.png")
    Image.new("1", (20000, 20000)).save(src / "huge.png")
    (src / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    out = tmp_path / "out"
    result = extract(_cfg(src, out))
    coco = json.loads(result.read_text())
    assert [i["file_name"] for i in coco["images"]] == ["ünï cödé/with space.jpg"]
    errors = {e["image"]: e for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert set(errors) == {"empty.jpg", "truncated.jpg", "text.jpg", "tiny.png", "huge.png", "dangling.jpg"}
    for e in errors.values():
        assert e["stage"] == "load" and e["level"] == "error" and len(e["reason"]) > 10


def test_precomputed_depth_and_its_bad_files(tmp_path):
    imgs = _images(5)
    src = tmp_path / "imgs"
    src.mkdir()
    depth_dir = tmp_path / "depth"
    depth_dir.mkdir()
    for p in imgs:
        shutil.copy(p, src / p.name)
    sizes = [Image.open(p).size for p in imgs]  # (W, H)
    stem = [p.stem for p in imgs]
    w, h = sizes[0]
    np.save(depth_dir / f"{stem[0]}.npy", np.linspace(1, 2, w * h).reshape(h, w).astype(np.float32))  # good
    # stem[1]: missing file
    w, h = sizes[2]
    np.save(depth_dir / f"{stem[2]}.npy", np.ones((h + 3, w), np.float32))  # wrong size
    w, h = sizes[3]
    nan = np.linspace(1, 2, w * h).reshape(h, w)
    nan[: h // 2] = np.nan
    np.save(depth_dir / f"{stem[3]}.npy", nan)  # half missing: processed, with a warning
    w, h = sizes[4]
    np.save(depth_dir / f"{stem[4]}.npy", np.full((h, w), 3.0))  # constant: processed, with a warning
    out = tmp_path / "out"
    coco = json.loads(extract(_cfg(src, out, f"depth=precomputed:{depth_dir}")).read_text())
    # the two images whose depth failed are only in errors.jsonl, not images with 0 annotations (issue 11, item 10)
    assert {i["file_name"] for i in coco["images"]} == {imgs[k].name for k in (0, 3, 4)}
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    by_image = {e["image"]: e for e in errors}
    assert by_image[imgs[1].name]["level"] == "error" and by_image[imgs[1].name]["stage"] == "depth"
    assert by_image[imgs[2].name]["level"] == "error"
    assert by_image[imgs[3].name]["level"] == "warning" and by_image[imgs[4].name]["level"] == "warning"
    assert imgs[0].name not in by_image
    with_masks = {i["file_name"] for i in coco["images"] if any(a["image_id"] == i["id"] for a in coco["annotations"])}
    assert imgs[1].name not in with_masks and imgs[2].name not in with_masks


def test_empty_folder_fails_before_any_model_is_loaded(tmp_path, monkeypatch):
    import cuts3d.pipeline.extract as ex
    from cuts3d.io.images import NoImagesError

    def boom(*a, **k):
        raise AssertionError("a model was built for an empty folder")

    monkeypatch.setattr(ex, "Models", boom)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoImagesError, match="empty"):
        extract(_cfg(tmp_path / "empty", tmp_path / "out"))


def far_relief_depth(rgb: np.ndarray) -> np.ndarray:
    """(H, W) float32 depth of a far scene with fine relief (1000 +- 0.4, from the blurred gray image).

    float16 (the cache's storage before issue 11) steps by 0.5 at 1000, so a map stored that way and not cut
    exactly as the fresh one gives other masks (item 1).
    """
    gray = Image.fromarray(rgb).convert("L").filter(ImageFilter.GaussianBlur(4))
    return (1000.0 + 0.4 * np.asarray(gray, np.float32) / 255.0).astype(np.float32)


def _count_depth_calls(monkeypatch, depth_fn=None) -> list:
    """Wrap the depth model of every job built from now on: each call is counted (and ``depth_fn`` replaces it)."""
    import cuts3d.pipeline.extract as ex

    calls = []
    real = ex.Models.__init__

    def counting_init(self, cfg):
        real(self, cfg)
        model = self.depth_model
        self.depth_model = lambda rgb: calls.append(1) or (depth_fn or model)(rgb)

    monkeypatch.setattr(ex.Models, "__init__", counting_init)
    return calls


def test_cached_depth_gives_the_masks_of_fresh_depth(tmp_path, monkeypatch):
    calls = _count_depth_calls(monkeypatch, far_relief_depth)
    listing = _listing(tmp_path, _images(3))
    cache = tmp_path / "cache"
    fresh = _content(extract(_cfg(listing, tmp_path / "fresh", f"depth_cache={cache}")))
    assert len(calls) == 3 and fresh["annotations"]
    cached = _content(extract(_cfg(listing, tmp_path / "cached", f"depth_cache={cache}")))
    assert len(calls) == 3  # every map came from the cache
    assert cached == fresh  # scores, RLEs and confidence maps bit for bit
    assert _content(extract(_cfg(listing, tmp_path / "nocache", "cache_depth=false"))) == fresh


def test_depth_cache_is_shared_across_cut_settings_and_keyed_by_depth_settings(tmp_path, monkeypatch):
    calls = _count_depth_calls(monkeypatch)
    listing = _listing(tmp_path, _images(2))
    cache = tmp_path / "cache"
    extract(_cfg(listing, tmp_path / "a", f"depth_cache={cache}"))
    assert len(calls) == 2
    # other cut settings in another output folder, same depth settings: every map comes from the shared cache
    extract(_cfg(listing, tmp_path / "b", f"depth_cache={cache}", "cut.tau_knn=0.1"))
    assert len(calls) == 2
    # another size changes the map (it is resized to size x size): a key of its own, so computed again
    extract(_cfg(listing, tmp_path / "c", f"depth_cache={cache}", "size=112"))
    assert len(calls) == 4
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2
    assert not (tmp_path / "a" / "depth_cache").exists()  # --depth-cache replaces OUT/depth_cache


def test_stale_temp_files_are_cleaned_and_outputs_follow_the_umask(tmp_path):
    from cuts3d.depth.cache import TEMP_FOLDER
    from cuts3d.io.atomic import TEMP_TAG, host_tag
    from cuts3d.pipeline.fingerprint import depth_cache_key

    listing = _listing(tmp_path, _images(1))
    out, cache = tmp_path / "out", tmp_path / "cache"
    cfg = _cfg(listing, out, f"depth_cache={cache}")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)  # a process of this host that has exited: what kill -9 leaves behind

    def temp(folder: Path, target: str, pid: int) -> Path:
        path = folder / f".{target}.{TEMP_TAG}.{host_tag()}.{pid}.k1ll3d_x.tmp"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
        return path

    temp_folder = cache / depth_cache_key(cfg) / TEMP_FOLDER
    stale = [temp(out, "annotations.json", dead_pid), temp(out, "config.yaml", dead_pid),
             temp(temp_folder, "x.jpg.npy", dead_pid)]
    running = [temp(out, "annotations.json", os.getppid()), temp(temp_folder, "y.jpg.npy", os.getppid())]
    old_umask = os.umask(0o002)  # a group-shared cluster folder
    try:
        extract(cfg)
    finally:
        os.umask(old_umask)
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in running)  # a live writer's temporary file is never touched
    written = [out / n for n in ("annotations.json", "errors.jsonl", "config.yaml", "run_meta.json", "fingerprint.json")]
    written += list(cache.rglob("*.npy"))
    assert len(written) == 6
    assert {str(p): oct(p.stat().st_mode & 0o777) for p in written} == {str(p): "0o664" for p in written}


def test_ray_engine_equals_local_engine(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    import cuts3d.pipeline.ray_engine as ray_engine

    # Progress comes from the tasks' reports: the driver reads each shard log once (the starting count), not
    # every second (issue 12: GBs per poll on ImageNet).
    reads = []
    remaining = ray_engine._remaining
    monkeypatch.setattr(ray_engine, "_remaining", lambda *a: reads.append(a[2]) or remaining(*a))
    listing = _listing(tmp_path, _images(3))
    local = extract(_cfg(listing, tmp_path / "local"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = ray_engine.extract_ray(_cfg(listing, tmp_path / "ray"), num_shards=2)
    finally:
        ray.shutdown()
    assert _content(result) == _content(local)
    assert sorted(reads) == [0, 1]
