"""End-to-end extraction on real COCO images with tiny random-weight models: output format, shards, kill -9
and resume, bad inputs, precomputed depth, cut workers (local pool and Ray tasks), the Ray engine."""

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


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process (from /proc)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> list[int]:
    table = _process_table()
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        kids = [p for p, (parent, _) in table.items() if parent == pid]
        found += kids
        todo += kids
    return found


def _running(pids: list[int]) -> list[int]:
    """The pids that still run (a zombie has ended: only its exit status waits for a parent)."""
    table = _process_table()
    return [p for p in pids if p in table and table[p][1] != "Z"]


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


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


# `cuts3d extract` whose main process stops (sleeps) right after logging its STOP_AFTER-th record and says so in
# MARKER, so that the test's SIGKILL finds exactly that many records, whatever the cut workers have in flight.
STOPPING_CLI = """
import os, sys, time
from pathlib import Path
from cuts3d.cli import main
from cuts3d.pipeline.shards import ShardLog

real, logged = ShardLog.append, []

def append(self, record):
    real(self, record)
    logged.append(record["rel"])
    if len(logged) == int(os.environ["STOP_AFTER"]):
        Path(os.environ["MARKER"]).touch()
        time.sleep(600)

ShardLog.append = append
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_with_cut_workers_and_resume_equals_uninterrupted(tmp_path):
    """kill -9 of the main process while 2 cut workers have images in flight: those are lost and redone, the
    workers end by themselves (no orphan keeps running), the resumed run equals an uninterrupted one."""
    listing = _listing(tmp_path, _images(6))
    reference = extract(_cfg(listing, tmp_path / "ref"))
    out = tmp_path / "killed"
    args = ["extract", "--images", str(listing), "--output", str(out), "--cut-workers", "2", *TINY]
    log = shard_log_path(out, 0, 1)
    for stop_after in (1, 2):  # kill twice, at different points of the run
        marker = tmp_path / f"stopped-{stop_after}"
        env = {**os.environ, "STOP_AFTER": str(stop_after), "MARKER": str(marker)}
        proc = subprocess.Popen([sys.executable, "-c", STOPPING_CLI, *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and not marker.exists() and proc.poll() is None:
            time.sleep(0.02)
        assert marker.exists(), "the job did not log a record"
        children = _descendants(proc.pid)  # the cut workers (and multiprocessing's resource tracker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert len(children) >= 2 and not (out / "annotations.json").exists()
        deadline = time.time() + 15  # a worker notices within a second that its parent is gone
        while _running(children) and time.time() < deadline:
            time.sleep(0.1)
        assert _running(children) == [], "processes of the killed job are still running"
    assert len(read_log(log)) == 3
    subprocess.run([sys.executable, "-m", "cuts3d", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    assert (out / "annotations.json").read_bytes() == reference.read_bytes()
    rels = [r["rel"] for r in read_log(log)]
    assert len(rels) == len(set(rels)) == 6  # none lost, none duplicated


def test_cut_workers_give_the_bytes_of_the_inline_path(tmp_path):
    """cut_workers=2 logs the records in completion order; the merge sorts them: the same files, byte for byte."""
    listing = _listing(tmp_path, _images(6))
    inline = extract(_cfg(listing, tmp_path / "inline"))
    pooled = extract(_cfg(listing, tmp_path / "pooled", "cut_workers=2"))
    assert pooled.read_bytes() == inline.read_bytes() and _content(inline)["annotations"]
    assert (tmp_path / "pooled" / "errors.jsonl").read_bytes() == (tmp_path / "inline" / "errors.jsonl").read_bytes()
    assert sorted(r["rel"] for r in read_log(shard_log_path(tmp_path / "pooled", 0, 1))) == [p.name for p in _images(6)]
    # the pool is shut down when extract returns: no worker is left (multiprocessing's resource tracker may be)
    workers = [p for p in _descendants(os.getpid()) if "resource_tracker" not in _cmdline(p)]
    assert _running(workers) == []


def test_images_in_flight_never_exceed_the_executors_bound(tmp_path):
    """run_shard's one bounded loop: it waits for a finished image before handing over one more than the bound,
    and logs every image once (an executor that cuts in this process, when asked for a result)."""
    from cuts3d.io.images import scan_images
    from cuts3d.pipeline.extract import run_cut_job, run_shard

    class InProcess:
        max_in_flight = 2

        def __init__(self):
            self.jobs, self.peak = [], 0

        @property
        def in_flight(self):
            return len(self.jobs)

        def submit(self, job):
            self.jobs.append(job)
            self.peak = max(self.peak, len(self.jobs))

        def wait_first(self):
            return [run_cut_job(self.jobs.pop(0))]

        def close(self, abort=False):
            assert not abort and not self.jobs

    listing = _listing(tmp_path, _images(5))
    cfg = _cfg(listing, tmp_path / "bounded", "cut_workers=1", "batch_size=4")
    made = []
    run_shard(cfg, scan_images(cfg.images).records, 0, 1, cut_executor=lambda: made.append(InProcess()) or made[-1])
    assert made[0].peak == 2  # a batch of 4 images, 2 in flight at most
    rels = [r["rel"] for r in read_log(shard_log_path(tmp_path / "bounded", 0, 1))]
    assert sorted(rels) == [p.name for p in _images(5)] and len(rels) == 5


def test_cut_workers_run_every_blas_on_one_thread():
    # scipy loads its own OpenBLAS on first use of scipy.linalg, after the worker's thread limit was set: it
    # must be on one thread too, or K workers oversubscribe K cores.
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from cuts3d.pipeline.cut_workers import init_worker, thread_counts

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
                             initargs=(os.getpid(),)) as pool:
        counts = pool.submit(thread_counts).result(timeout=120)
    assert any("openblas" in k.lower() or "blas" in k.lower() for k in counts), counts
    assert all(n == 1 for n in counts.values()), counts


def test_a_rerun_with_other_cut_workers_resumes(tmp_path):
    """cut_workers does not change results, so it is not in the fingerprint: another value resumes the folder."""
    from cuts3d.pipeline.fingerprint import result_settings

    imgs = _images(3)
    out = tmp_path / "out"
    extract(_cfg(_listing(tmp_path, imgs[:2]), out))
    listing = _listing(tmp_path, imgs)
    assert result_settings(_cfg(listing, out, "cut_workers=1")) == result_settings(_cfg(listing, out))
    extract(_cfg(listing, out, "cut_workers=1"))  # not refused as other settings
    assert [r["rel"] for r in read_log(shard_log_path(out, 0, 1))] == [p.name for p in imgs]  # only the new one cut
    assert _content(out / "annotations.json") == _content(extract(_cfg(listing, tmp_path / "ref")))


def test_a_dead_cut_worker_fails_the_images_in_flight_and_the_job_goes_on(tmp_path, monkeypatch):
    """A worker process that really dies (os._exit on one image): the images it took down fail at stage cuts,
    naming the worker; a new pool cuts the rest; a rerun retries the failures and gives the clean result."""
    from cuts3d.pipeline.cut_workers import FAULT_EXIT_ENV

    imgs = _images(6)
    listing = _listing(tmp_path, imgs)
    hook = tmp_path / "exit_on"
    hook.write_text(imgs[0].name)
    monkeypatch.setenv(FAULT_EXIT_ENV, str(hook))
    out = tmp_path / "out"
    extract(_cfg(listing, out, "cut_workers=2"))
    assert not hook.exists()  # the fault fired (once)
    errors = {e["image"]: e for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    victim = errors[imgs[0].name]
    assert victim["stage"] == "cuts" and victim["level"] == "error"
    assert "CutWorkerDied" in victim["reason"] and "exit code 70" in victim["reason"] and "rerun" in victim["reason"]
    assert all(e["stage"] == "cuts" and "CutWorkerDied" in e["reason"] for e in errors.values())
    assert len(errors) <= 4  # at most the 2 * 2 images in flight
    assert len(read_log(shard_log_path(out, 0, 1))) == 6  # every image has a record: the job went on
    assert json.loads((out / "annotations.json").read_text())["images"]  # the images after the crash were cut
    extract(_cfg(listing, out, "cut_workers=2"))  # the rerun retries the failed images only
    assert (out / "errors.jsonl").read_text() == ""
    assert _content(out / "annotations.json") == _content(extract(_cfg(listing, tmp_path / "ref")))


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


@pytest.mark.parametrize("workers", [0, 2])
def test_ray_engine_equals_local_engine(tmp_path, monkeypatch, workers):
    """workers=2: each shard task sends its cuts to 2 Ray actors (2 shards x 2 actors of 1 CPU on 2 CPUs: the
    shard tasks must hold no CPU); the actor cutting one image dies, that image fails, a rerun redoes it."""
    ray = pytest.importorskip("ray")
    import cuts3d.pipeline.ray_engine as ray_engine
    from cuts3d.pipeline.cut_workers import FAULT_EXIT_ENV

    # Progress comes from the tasks' reports: the driver reads each shard log once (the starting count), not
    # every second (issue 12: GBs per poll on ImageNet).
    reads = []
    remaining = ray_engine._remaining
    monkeypatch.setattr(ray_engine, "_remaining", lambda *a: reads.append(a[2]) or remaining(*a))
    imgs = _images(3)
    listing = _listing(tmp_path, imgs)
    local = extract(_cfg(listing, tmp_path / "local"))
    hook = tmp_path / "exit_on"
    if workers:
        hook.write_text(imgs[1].name)
        monkeypatch.setenv(FAULT_EXIT_ENV, str(hook))  # before ray.init: the Ray workers inherit it
    cfg = _cfg(listing, tmp_path / "ray", f"cut_workers={workers}")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = ray_engine.extract_ray(cfg, num_shards=2)
        if workers:
            assert not hook.exists()
            errors = [json.loads(line) for line in (tmp_path / "ray" / "errors.jsonl").read_text().splitlines()]
            assert [(e["image"], e["stage"]) for e in errors] == [(imgs[1].name, "cuts")]
            assert "died" in errors[0]["reason"]
            assert [i["file_name"] for i in json.loads(result.read_text())["images"]] == [imgs[0].name, imgs[2].name]
            result = ray_engine.extract_ray(cfg, num_shards=2)  # resumes: redoes the failed image
    finally:
        ray.shutdown()
    assert _content(result) == _content(local)
    assert sorted(reads) == ([0, 0, 1, 1] if workers else [0, 1])  # once per shard and run
