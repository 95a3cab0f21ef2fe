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
from PIL import Image
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
    assert len(coco["images"]) == 5  # every image was loaded
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


def test_second_run_reuses_cached_depth(tmp_path, monkeypatch):
    listing = _listing(tmp_path, _images(2))
    extract(_cfg(listing, tmp_path / "a"))
    import cuts3d.pipeline.extract as ex

    calls = []
    real = ex.Models.__init__

    def counting_init(self, cfg):
        real(self, cfg)
        model = self.depth_model
        self.depth_model = lambda rgb: calls.append(1) or model(rgb)

    monkeypatch.setattr(ex.Models, "__init__", counting_init)
    # Other cut settings, same output folder (same depth cache), fresh shard log.
    shutil.rmtree(tmp_path / "a" / "shards")
    extract(_cfg(listing, tmp_path / "a", "cut.tau_knn=0.1"))
    assert calls == []


def test_ray_engine_equals_local_engine(tmp_path):
    ray = pytest.importorskip("ray")
    from cuts3d.pipeline.ray_engine import extract_ray

    listing = _listing(tmp_path, _images(3))
    local = extract(_cfg(listing, tmp_path / "local"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = extract_ray(_cfg(listing, tmp_path / "ray"), num_shards=2)
    finally:
        ray.shutdown()
    assert _content(result) == _content(local)
