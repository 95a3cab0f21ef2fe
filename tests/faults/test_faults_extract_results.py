"""Fault injection for extraction results that must never differ or mix (issue 11, items 1, 2 and 19).

Tiny random-weight models (ViT-S/16 at 128 px, a tiny Depth Anything at 56 px) on generated images, so each
test runs in seconds without data or downloads. The depth model is replaced by a far scene with fine relief
(1000 +- 0.4), which float16 storage (the cache's before this fix) rounds, so a cached map that is cut other
than a fresh one shows.

* item 1: ``kill -9`` right after a depth-cache write (the map is cached, its image's record is not), then a
  resume: the result equals an uninterrupted run's;
* item 2: a rerun into the same folder with other settings (cut, method, backbone, size) exits 2 with one line
  naming the differing keys and leaves the old result untouched; the same settings resume; ``--overwrite``
  starts over and gives the result of a fresh run of the new settings;
* item 19: the kill leaves no temporary file that the resumed run keeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import cuts3d.pipeline.extract as ex
from cuts3d.cli import main
from cuts3d.pipeline.extract import extract, resolve_config
from cuts3d.pipeline.shards import read_log, shard_log_path

TINY = ["backbone=dino_vits16", "weights=none", "depth_weights=none", "size=128", "depth_overrides=tiny",
        "depth_input_size=56", "cut.crf=false"]
REPO = Path(__file__).resolve().parents[2]

# Shared by the in-process reference run and the subprocess runner, so both see the same depth.
DEPTH_SRC = '''
import numpy as np
from PIL import Image, ImageFilter


def far_relief_depth(rgb):
    """(H, W) float32: 1000 + 0.4 * blurred gray; float16 steps by 0.5 at 1000."""
    gray = Image.fromarray(rgb).convert("L").filter(ImageFilter.GaussianBlur(4))
    return (1000.0 + 0.4 * np.asarray(gray, np.float32) / 255.0).astype(np.float32)
'''

# ``python runner.py extract ...``: the CLI with the depth above; KILL_AFTER_CACHE_WRITES=k kills the process
# with SIGKILL right after the k-th depth-cache write, before that image's record reaches the shard log.
RUNNER_SRC = DEPTH_SRC + '''
import os
import signal
import sys

import cuts3d.pipeline.extract as ex
from cuts3d.cli import main
from cuts3d.depth.cache import DepthCache

real_init = ex.Models.__init__


def init(self, cfg):
    real_init(self, cfg)
    self.depth_model = far_relief_depth


ex.Models.__init__ = init
kill_after = int(os.environ.get("KILL_AFTER_CACHE_WRITES", "0"))
if kill_after:
    real_put = DepthCache.put
    writes = []

    def put(self, rel, depth):
        real_put(self, rel, depth)
        writes.append(rel)
        if len(writes) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    DepthCache.put = put
sys.exit(main(sys.argv[1:]))
'''


def _images(folder: Path, n: int) -> Path:
    """``n`` generated 160x120 photos: a smooth colour field with a few bright and dark rectangles."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(n):
        coarse = rng.random((6, 8, 3)) * 255
        img = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((160, 120), Image.BICUBIC)).copy()
        for _ in range(3):
            y, x = rng.integers(0, 80), rng.integers(0, 120)
            img[y : y + 40, x : x + 40] = rng.integers(0, 256, 3)
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


def _content(path: Path) -> dict:
    d = json.loads(Path(path).read_text())
    return {"images": d["images"], "annotations": d["annotations"]}


def test_kill_9_right_after_a_depth_cache_write_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    images = _images(tmp_path / "imgs", 3)
    namespace: dict = {}
    exec(DEPTH_SRC, namespace)
    real_init = ex.Models.__init__

    def init(self, cfg):
        real_init(self, cfg)
        self.depth_model = namespace["far_relief_depth"]

    monkeypatch.setattr(ex.Models, "__init__", init)
    reference = _content(extract(resolve_config({"images": str(images), "output": str(tmp_path / "ref")}, None, TINY)))
    assert reference["annotations"]

    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER_SRC)
    out = tmp_path / "killed"
    cmd = [sys.executable, str(runner), "extract", "--images", str(images), "--output", str(out), *TINY]
    killed = subprocess.run(cmd, cwd=REPO, env={**os.environ, "KILL_AFTER_CACHE_WRITES": "2"},
                            capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    cached = list((out / "depth_cache").rglob("*.npy"))
    logged = read_log(shard_log_path(out, 0, 1))
    assert len(cached) == 2 and len(logged) < len(cached)  # a map is cached whose image has no record yet
    assert not (out / "annotations.json").exists()

    # the resume runs in this process (same depth, patched above): it reads the second map from the cache
    assert main(cmd[2:]) == 0
    assert _content(out / "annotations.json") == reference  # scores, RLEs and confidence maps bit for bit
    leftovers = [p for p in out.rglob("*.tmp")]
    assert leftovers == []


def test_rerun_with_other_settings_is_refused_and_overwrite_starts_over(tmp_path, capsys):
    images = _images(tmp_path / "imgs", 2)
    out = tmp_path / "out"
    base = ["extract", "--images", str(images), "--output", str(out), *TINY]
    assert main(base) == 0
    annotations, config = (out / "annotations.json").read_bytes(), (out / "config.yaml").read_bytes()
    capsys.readouterr()
    for extra, key in ((["cut.n_iters=1"], "cut.n_iters: 3 -> 1"), (["--method", "maskcut"], "cut.method"),
                       (["backbone=dino_vits8"], "backbone: \"dino_vits16\" -> \"dino_vits8\""),
                       (["size=112"], "size: 128 -> 112")):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and key in err and "--overwrite" in err and str(out) in err, err
        # nothing of the refused run was written: the old result and its config stay as they were
        assert (out / "annotations.json").read_bytes() == annotations
        assert (out / "config.yaml").read_bytes() == config

    assert main(base) == 0  # the same settings resume (nothing left to do)
    assert (out / "annotations.json").read_bytes() == annotations

    assert main(base + ["cut.n_iters=1", "--overwrite"]) == 0
    assert "--overwrite: deleted the results of other settings" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    assert main(["extract", "--images", str(images), "--output", str(fresh), *TINY, "cut.n_iters=1"]) == 0
    assert _content(out / "annotations.json") == _content(fresh / "annotations.json")
    assert json.loads((out / "fingerprint.json").read_text())["settings"]["cut.n_iters"] == 1
    # --overwrite with the settings the folder now has is a plain resume: the result is kept
    kept = (out / "annotations.json").read_bytes()
    assert main(base + ["cut.n_iters=1", "--overwrite"]) == 0
    assert (out / "annotations.json").read_bytes() == kept
