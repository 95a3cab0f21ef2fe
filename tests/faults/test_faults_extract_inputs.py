"""Fault injection for extraction's shard logs, merge, lock and odd inputs (issue 11, items 4-10).

Tiny random-weight models (ViT-S/16 at 64 px, a tiny Depth Anything / ZoeDepth at 56 px) on generated
images, so each test runs in seconds without data or downloads. What is checked:

* item 4: a rerun retries an earlier failure (the re-copied file is then processed); an image removed from
  the input is dropped from ``annotations.json`` with a warning;
* item 5: ``cuts3d merge`` with a missing or unfinished shard exits 2 naming it, unless ``--allow-partial``;
  the merged ``info`` keeps method, backbone and depth;
* item 6: a second writer on a locked shard is refused with one line; a writer killed with SIGKILL leaves no
  stale lock;
* item 7: a kill in the middle of a batch keeps the records of the images finished before it;
* item 8: 16x2000 and 1200x16 images through the real depth preprocessing, and an exception injected at each
  stage, become error records (image, stage, reason) and the job goes on;
* item 9: a file name with Latin-1 bytes is processed; the JSON stays valid and its ``file_name`` opens the file;
* item 10: the summary line counts done, failed, skipped and masks; failed images are not in ``images``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cuts3d.pipeline.extract as ex
from cuts3d.cli import main
from cuts3d.pipeline.extract import ExtractConfig, extract, resolve_config
from cuts3d.pipeline.shards import read_log, shard_log_path

TINY = ["backbone=dino_vits16", "weights=none", "depth_weights=none", "size=64", "depth_overrides=tiny",
        "depth_input_size=56", "cut.crf=false", "cut.n_iters=2"]
REPO = Path(__file__).resolve().parents[2]


def _image(path: Path, w: int = 96, h: int = 72, seed: int = 0) -> Path:
    """A blob on a gradient (something for the cuts to find), saved as PNG."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full((h, w), 90)], -1).astype(np.uint8)
    cy, cx = rng.integers(h // 4, 3 * h // 4 + 1), rng.integers(w // 4, 3 * w // 4 + 1)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) // 4) ** 2] = rng.integers(0, 255, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format="PNG")
    return path


def _folder(root: Path, n: int) -> Path:
    for k in range(n):
        _image(root / f"img{k}.png", seed=k)
    return root


def _cfg(images: Path, output: Path, *extra: str) -> ExtractConfig:
    return resolve_config({"images": str(images), "output": str(output)}, None, TINY + list(extra))


def _errors(out: Path) -> dict[str, dict]:
    return {e["image"]: e for e in map(json.loads, (out / "errors.jsonl").read_text(encoding="utf-8").splitlines())}


def _names(out: Path) -> list[str]:
    return [i["file_name"] for i in json.loads((out / "annotations.json").read_text(encoding="utf-8"))["images"]]


# --- item 8: one odd image never stops the job ------------------------------------------------------------------


@pytest.mark.parametrize(
    "depth, failing",
    [("depth_anything_v2_small", {"wide.png", "tall.png"}), ("zoedepth", {"tall.png"})],  # ZoeDepth copes with 2000x16
)
def test_extreme_aspect_ratios_are_error_records_and_the_job_goes_on(tmp_path, depth, failing):
    src = _folder(tmp_path / "imgs", 1)
    _image(src / "wide.png", w=2000, h=16)
    _image(src / "tall.png", w=16, h=1200)
    out = tmp_path / "out"
    assert extract(_cfg(src, out, f"depth={depth}")) == out / "annotations.json"
    errors = _errors(out)
    assert set(errors) == failing
    assert _names(out) == sorted({"img0.png", "wide.png", "tall.png"} - failing)  # failures are only in errors.jsonl
    for e in errors.values():
        assert e["stage"] == "depth" and e["level"] == "error"
        assert "extreme aspect ratio" in e["reason"] and "rerun retries" in e["reason"]


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("stage", ["load", "features", "depth", "cuts", "encode"])
def test_an_exception_at_any_stage_costs_only_that_image(tmp_path, monkeypatch, stage):
    src = _folder(tmp_path / "imgs", 3)
    victim = "img1.png"

    def failing(real, pick):
        def wrapper(*args, **kwargs):
            if pick(*args, **kwargs):
                raise _Boom(f"injected failure at {stage}")
            return real(*args, **kwargs)
        return wrapper

    import cuts3d.io.images as images

    if stage == "load":
        monkeypatch.setattr(images, "load_image", failing(images.load_image, lambda p, **k: Path(p).name == victim))
    elif stage == "features":
        # preprocessing the victim fails in the batched pass and again alone; the others go through alone
        victim_small = images.resize_square(images.load_image(src / victim), 64)
        real_init = ex.Models.__init__

        def init(self, cfg):
            real_init(self, cfg)
            real_pre = self.backbone.preprocess
            self.backbone.preprocess = failing(real_pre, lambda small, size: np.array_equal(small, victim_small))

        monkeypatch.setattr(ex.Models, "__init__", init)
    elif stage == "depth":
        monkeypatch.setattr(ex, "_depth", failing(ex._depth, lambda rel, *a, **k: rel == victim))
    elif stage == "cuts":
        calls = []
        monkeypatch.setattr(ex, "segment", failing(ex.segment, lambda *a, **k: calls.append(1) or len(calls) == 2))
    else:
        calls = []
        monkeypatch.setattr(ex, "_resize_mask", failing(ex._resize_mask, lambda *a, **k: calls.append(1) or len(calls) == 1))
    out = tmp_path / "out"
    extract(_cfg(src, out))
    errors = _errors(out)
    if stage == "encode":  # the first mask written belongs to whichever image had masks first
        assert len(errors) == 1
        victim = next(iter(errors))
    assert set(errors) == {victim}
    assert errors[victim]["stage"] == stage and "injected failure" in errors[victim]["reason"]
    assert victim not in _names(out) and len(_names(out)) == 2


# --- item 9: file names that are not UTF-8 ------------------------------------------------------------------------


def test_a_latin1_file_name_is_processed_and_the_json_stays_valid(tmp_path):
    src = _folder(tmp_path / "imgs", 1)
    raw = os.fsencode(src) + b"/caf\xe9.png"  # Latin-1 'é': not valid UTF-8
    _image(Path(os.fsdecode(raw)), seed=5)
    out = tmp_path / "out"
    extract(_cfg(src, out))
    for name in ("annotations.json", "errors.jsonl", "shards/shard-00000-of-00001.jsonl"):
        (out / name).read_bytes().decode("utf-8")  # strict UTF-8: no raw surrogates written
    names = _names(out)
    assert len(names) == 2
    odd = next(n for n in names if n != "img0.png")
    assert os.fsencode(src / odd) == raw  # file_name opens the very file (for training)
    again = extract(_cfg(src, out))  # a rerun finds it done
    assert again is not None and len(read_log(shard_log_path(out, 0, 1))) == 2


# --- item 10: skipped inputs and the summary line ----------------------------------------------------------------


def test_summary_counts_done_failed_skipped_and_masks(tmp_path, capsys):
    src = _folder(tmp_path / "imgs", 2)
    (src / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (40, 40)).save(src / "anim.gif")
    (src / ".DS_Store").write_bytes(b"x")
    (src / "._img0.png").write_bytes(b"x")
    (src / "notes.txt").write_text("x")
    (src / "x.jpg").mkdir()
    out = tmp_path / "out"
    extract(_cfg(src, out))
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("summary:")]
    assert len(line) == 1, "one end-of-run summary line"
    masks = len(json.loads((out / "annotations.json").read_text())["annotations"])
    assert f"2 images done, 1 failed (reasons in {out / 'errors.jsonl'})" in line[0]
    assert "4 inputs skipped" in line[0] and "2 dot-file" in line[0] and "GIF" in line[0] and ".txt" in line[0]
    assert "x.jpg" in line[0] and f"{masks} masks written" in line[0]
    assert "broken.png" not in _names(out)


# --- item 4: retries and removed images ---------------------------------------------------------------------------


def test_rerun_retries_a_failure_and_drops_a_removed_image(tmp_path, capsys):
    src = _folder(tmp_path / "imgs", 3)
    good = (src / "img2.png").read_bytes()
    (src / "img2.png").write_bytes(good[: len(good) // 3])  # an interrupted copy
    out = tmp_path / "out"
    extract(_cfg(src, out))
    assert "img2.png" in _errors(out) and "img2.png" not in _names(out)
    (src / "img2.png").write_bytes(good)  # re-copied, as the error message advises
    (src / "img0.png").unlink()
    capsys.readouterr()
    extract(_cfg(src, out))
    assert _names(out) == ["img1.png", "img2.png"]
    assert _errors(out) == {}
    err = capsys.readouterr().err
    assert "dropped 1 images that are no longer in the input: img0.png" in err


# --- item 5: partial merges ---------------------------------------------------------------------------------------


def test_merge_refuses_missing_and_unfinished_shards_unless_allowed(tmp_path, capsys):
    src = _folder(tmp_path / "imgs", 3)
    outs = [tmp_path / f"o{i}" for i in range(3)]
    for i in (0, 1):
        assert extract(_cfg(src, outs[i], f"shard={i}/3")) is None
    capsys.readouterr()
    assert main(["merge", str(outs[0]), str(outs[1]), "--output", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shard 2/3" in err and "--allow-partial" in err
    assert not (tmp_path / "m" / "annotations.json").exists()

    assert main(["merge", str(outs[0]), str(outs[1]), "--output", str(tmp_path / "m"), "--allow-partial"]) == 0
    assert "partial merge" in capsys.readouterr().err
    merged = json.loads((tmp_path / "m" / "annotations.json").read_text())
    assert len(merged["images"]) == 2
    assert {k: merged["info"][k] for k in ("method", "backbone", "depth")} == {
        "method": "cuts3d", "backbone": "dino_vits16", "depth": "depth_anything_v2_small"}

    # an unfinished shard (its log lacks an image it was given) is refused as well
    extract(_cfg(src, outs[2], "shard=2/3"))
    log = shard_log_path(outs[1], 1, 3)
    log.write_text("")  # as if killed before its first record
    assert main(["merge", *map(str, outs), "--output", str(tmp_path / "m2")]) == 2
    assert "shard 1/3" in capsys.readouterr().err
    extract(_cfg(src, outs[1], "shard=1/3"))  # finish it
    assert main(["merge", *map(str, outs), "--output", str(tmp_path / "m2")]) == 0
    assert len(json.loads((tmp_path / "m2" / "annotations.json").read_text())["images"]) == 3


# --- item 6: one writer per shard ---------------------------------------------------------------------------------


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_stale_lock(tmp_path, capsys):
    src = _folder(tmp_path / "imgs", 2)
    out = tmp_path / "out"
    log = shard_log_path(out, 0, 1)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom cuts3d.pipeline.shards import ShardLog\n"
         f"log = ShardLog({str(log)!r})\nprint('locked', flush=True)\ntime.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = main(["extract", "--images", str(src), "--output", str(out), *TINY])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1
        assert "already being written" in err[0] and f"pid {holder.pid}" in err[0] and str(log) in err[0]
        assert read_log(log) == []  # the refused writer processed nothing
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert extract(_cfg(src, out)) == out / "annotations.json"  # the kernel released the dead holder's lock
    assert len(read_log(log)) == 2


# --- item 7: per-image records --------------------------------------------------------------------------------------


class _Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing may catch it."""


def test_a_kill_in_the_middle_of_a_batch_keeps_the_finished_images(tmp_path, monkeypatch):
    src = _folder(tmp_path / "imgs", 4)
    real = ex._cut_image
    seen = []

    def cut_then_die(result, *args, **kwargs):
        seen.append(result["rel"])
        if len(seen) == 3:
            raise _Killed()
        return real(result, *args, **kwargs)

    monkeypatch.setattr(ex, "_cut_image", cut_then_die)
    out = tmp_path / "out"
    with pytest.raises(_Killed):
        extract(_cfg(src, out, "batch_size=4"))  # one batch of 4
    assert [r["rel"] for r in read_log(shard_log_path(out, 0, 1))] == seen[:2]  # only the image in flight is lost


def test_kill_9_mid_batch_then_resume(tmp_path):
    """A real SIGKILL while the third image of a batch of 4 is in flight; the resumed run equals a clean one."""
    src = _folder(tmp_path / "imgs", 4)
    ref = extract(_cfg(src, tmp_path / "ref", "batch_size=4"))
    out = tmp_path / "out"
    log = shard_log_path(out, 0, 1)
    script = (
        "import sys, time\nimport cuts3d.pipeline.extract as ex\nreal = ex._cut_image\nn = []\n"
        "def slow(result, *a, **k):\n    n.append(1)\n    if len(n) == 3:\n        time.sleep(120)\n"
        "    return real(result, *a, **k)\nex._cut_image = slow\n"
        f"ex.extract(ex.resolve_config({{'images': {str(src)!r}, 'output': {str(out)!r}}}, None, {TINY + ['batch_size=4']!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120  # generous: the machine is shared
        while time.time() < deadline and len(read_log(log)) < 2 and proc.poll() is None:
            time.sleep(0.05)
        assert len(read_log(log)) == 2, "records must be written per image, not per batch"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    extract(_cfg(src, out, "batch_size=4"))
    strip = lambda p: {k: v for k, v in json.loads(Path(p).read_text()).items() if k in ("images", "annotations")}
    assert strip(out / "annotations.json") == strip(ref)
    rels = [r["rel"] for r in read_log(log)]
    assert sorted(rels) == sorted(set(rels)) and len(rels) == 4
