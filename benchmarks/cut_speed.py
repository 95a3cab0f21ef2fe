"""Time per image of the whole cut stage, this tree against an earlier commit's code, in one run; same masks?

Usage::

    python benchmarks/cut_speed.py [--images 3] [--grid 60] [--channels 768] [--no-crf] [--threads 1]
                                   [--repeats 3] [--baseline e61d255] [--family-scenes 6] [--no-reference]

Inputs: ``--images`` scenes of ``--grid`` x ``--grid`` patches with C = ``--channels`` features, a 480 x 480 depth
map and RGB image (:func:`cuts3d.synthetic.make_scene`, patch size 8), and ``--family-scenes`` scenes of every
synthetic family (:data:`cuts3d.synthetic.FAMILIES`, ordinary and far backdrop) for the mask comparison. They
are generated once here and saved, and every variant cuts the same saved inputs:

- ``baseline``: ``segment()`` with the default CutConfig (N=3 rounds, LocalCut, T=6 confidence cuts, CRF) as
  the commit ``--baseline`` has it. Its package is extracted with ``git archive`` and imported in a subprocess
  (``python -S`` with that folder first on the path, so the installed cuts3d does not shadow it);
- ``this tree``: the same call with the code of this checkout, run the same way;
- ``reference MaskCut``: CutLER's MaskCut with the dense generalized eigensolver every round
  (cuts3d.cuts.reference.reference_maskcut) on the timing scenes, as a fixed yardstick.

Each variant runs in its own subprocess with ``--threads`` BLAS/torch threads (1: the per-core cost a cut
worker pays), one after the other, nothing else running. The first scene is cut once untimed (imports, first
calls, numba's compilation). Each timing scene is cut ``--repeats`` times and the median kept (timings on this
shared machine vary by about 10% from run to run). The mask comparison reports, per scene set, how many scenes give identical masks and the class-agnostic
mask AP50 / AP of both against the scenes' ground truth.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from _results import append

REPO = Path(__file__).resolve().parents[1]

# Runs inside the subprocess, against whichever cuts3d is first on the path.
WORKER = r"""
import json, sys, time
import numpy as np
inputs, output, crf, reference = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
repeats = int(sys.argv[5])
import torch
from cuts3d import CutConfig, segment
data = np.load(inputs)
names = sorted({k.split("/")[0] for k in data.files})
timed = [n for n in names if n.startswith("time")]
config = CutConfig(crf=crf)
out, seconds, ref_seconds = {}, {}, {}
first = timed[0]
segment(data[first + "/features"], data[first + "/depth"], data[first + "/image"], config)  # warm-up
for name in names:
    runs = []
    for _ in range(repeats if name.startswith("tim") else 1):  # timing scenes: the median of `repeats` cuts
        t = time.perf_counter()
        insts = segment(data[name + "/features"], data[name + "/depth"], data[name + "/image"], config)
        runs.append(time.perf_counter() - t)
    seconds[name] = float(np.median(runs))
    shape = data[name + "/image"].shape[:2]
    out[name + "/masks"] = np.stack([i.mask for i in insts]) if insts else np.zeros((0, *shape), bool)
    out[name + "/scores"] = np.array([i.score for i in insts], dtype=np.float64)
if reference:
    from cuts3d.cuts.reference import reference_maskcut
    for name in timed:
        t = time.perf_counter()
        reference_maskcut(torch.from_numpy(data[name + "/features"]), data[name + "/image"], data[name + "/depth"].shape, crf=crf)
        ref_seconds[name] = time.perf_counter() - t
np.savez_compressed(output, **out)
import cuts3d
print(json.dumps({"seconds": seconds, "reference": ref_seconds, "package": cuts3d.__file__}))
"""


def _save_inputs(path: Path, args: argparse.Namespace) -> dict[str, object]:
    """Write every scene's features, depth and image to one npz; returns the family scenes (ground truth)."""
    from cuts3d.synthetic import FAMILIES, make_family_scene, make_scene

    arrays: dict[str, np.ndarray] = {}
    for i in range(args.images):
        s = make_scene(100 + i, grid=args.grid, channels=args.channels, patch_size=8)
        arrays.update({f"time{i:02d}/features": s.features, f"time{i:02d}/depth": s.depth, f"time{i:02d}/image": s.image})
    # Multi-object timing scenes: one of each family at the same size (several masks per image, so several CRFs).
    for i, family in enumerate(sorted(FAMILIES)):
        s = make_family_scene(family, 100 + i, grid=args.grid, channels=args.channels, patch_size=8)
        arrays.update({f"timf{i:02d}/features": s.features, f"timf{i:02d}/depth": s.depth, f"timf{i:02d}/image": s.image})
    families: dict[str, object] = {}
    for family in FAMILIES:
        for far in (False, True):
            for seed in range(args.family_scenes):
                s = make_family_scene(family, seed, far_backdrop=far)
                name = f"{family}{'-far' if far else ''}{seed:02d}"
                families[name] = s
                arrays.update({f"{name}/features": s.features, f"{name}/depth": s.depth, f"{name}/image": s.image})
    np.savez(path, **arrays)
    return families


def _run(package_root: Path, inputs: Path, output: Path, crf: bool, reference: bool, threads: int,
         repeats: int) -> dict:
    site = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": f"{package_root}{os.pathsep}{site}"}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, "-S", "-c", WORKER, str(inputs), str(output), "1" if crf else "0", "1" if reference else "0",
           str(repeats)]
    # cwd: with -c the current folder comes first on the path, and it must not be a checkout
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=inputs.parent)
    if done.returncode != 0:
        raise SystemExit(f"cut_speed: the run of {package_root} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["package"].startswith(str(package_root)):
        raise SystemExit(f"cut_speed: imported {result['package']}, not the code under {package_root}")
    return result


def _extract(rev: str, into: Path) -> Path:
    archive = into / "baseline.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(REPO), "archive", rev, "cuts3d"], stdout=f, check=True)
    root = into / "baseline"
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root


def _ap(masks: dict, families: dict, names: list[str]) -> tuple[float, float]:
    from cuts3d.eval import evaluate
    from cuts3d.masks.coco import ground_truth_dataset, mask_annotation

    dets = []
    for idx, name in enumerate(names, start=1):
        dets += [mask_annotation(m, idx, float(s)) for m, s in zip(masks[name + "/masks"], masks[name + "/scores"])]
    gt = ground_truth_dataset([families[n].masks for n in names])
    if not dets:
        return 0.0, 0.0
    m = evaluate(gt, dets, iou_types=("segm",), verbose=False)["segm"]
    return float(m["AP50"]), float(m["AP"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--grid", type=int, default=60)
    parser.add_argument("--channels", type=int, default=768)
    parser.add_argument("--no-crf", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/torch threads of each variant's process")
    parser.add_argument("--repeats", type=int, default=3, help="cuts of each timing scene; the median is reported")
    parser.add_argument("--baseline", default="e61d255", help="git revision whose cut stage is the comparison "
                        "(default: the last commit before issue 12's faster cut stage)")
    parser.add_argument("--family-scenes", type=int, default=6, help="scenes per synthetic family and backdrop")
    parser.add_argument("--no-reference", action="store_true", help="skip CutLER's dense-eigh MaskCut (slow)")
    args = parser.parse_args()
    from cuts3d.masks.crf import crf_available

    crf = not args.no_crf and crf_available()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = tmp / "inputs.npz"
        families = _save_inputs(inputs, args)
        base_root = _extract(args.baseline, tmp)
        runs = {}
        for label, root, ref in (("baseline", base_root, False), ("this tree", REPO, not args.no_reference)):
            runs[label] = _run(root, inputs, tmp / f"{label.replace(' ', '_')}.npz", crf, ref, args.threads, args.repeats)
            print(label, json.dumps(runs[label]["seconds"]), flush=True)
        masks = {label: dict(np.load(tmp / f"{label.replace(' ', '_')}.npz")) for label in runs}

    timed = sorted(n for n in runs["baseline"]["seconds"] if n.startswith("time"))
    multi = sorted(n for n in runs["baseline"]["seconds"] if n.startswith("timf"))
    per_image = {label: float(np.mean([r["seconds"][n] for n in timed])) for label, r in runs.items()}
    per_multi = {label: float(np.mean([r["seconds"][n] for n in multi])) for label, r in runs.items()}
    if runs["this tree"]["reference"]:
        per_image["reference MaskCut (dense eigh, CutLER)"] = float(np.mean(list(runs["this tree"]["reference"].values())))
    base = per_image["baseline"]
    ref = per_image.get("reference MaskCut (dense eigh, CutLER)")
    names = {"baseline": f"cuts3d defaults at {args.baseline} (baseline)", "this tree": "cuts3d defaults, this tree"}
    masks_per = {label: np.mean([len(masks[label][n + "/scores"]) for n in timed]) for label in runs}
    masks_multi = {label: np.mean([len(masks[label][n + "/scores"]) for n in multi]) for label in runs}
    rows = []
    for k, t in per_image.items():
        cells = [names.get(k, k), f"{t:.3f}", f"{base / t:.2f}x", f"{ref / t:.1f}x" if ref else "-"]
        if k in runs:
            cells += [f"{masks_per[k]:.1f}", f"{per_multi[k]:.3f}", f"{per_multi['baseline'] / per_multi[k]:.2f}x",
                      f"{masks_multi[k]:.1f}"]
        else:
            cells += ["-"] * 4
        rows.append("| " + " | ".join(cells) + " |")

    def same(name: str) -> bool:
        a, b = masks["baseline"], masks["this tree"]
        return a[name + "/masks"].shape == b[name + "/masks"].shape and bool(np.array_equal(a[name + "/masks"], b[name + "/masks"]))

    equal_timed = sum(same(n) for n in timed + multi)
    sets: dict[str, list[str]] = {}
    for name in families:
        sets.setdefault(name[:-2], []).append(name)
    quality = []
    for set_name, members in sets.items():
        b50, bap = _ap(masks["baseline"], families, members)
        n50, nap = _ap(masks["this tree"], families, members)
        quality.append(f"| {set_name} | {sum(same(n) for n in members)}/{len(members)} | {b50:.1f} / {bap:.1f} | {n50:.1f} / {nap:.1f} |")
    table = "\n".join(
        [
            f"{len(timed)} timing scenes, {args.grid}x{args.grid} patches, C={args.channels}, N=3, T=6, image 480x480, "
            f"CRF: {crf}, {args.threads} thread(s) per process, median of {args.repeats} cuts per timing scene",
            "",
            f"Single-object scenes: {len(timed)} of make_scene; multi-object scenes: one per family, {len(multi)}, at the "
            "same size (reference MaskCut: single-object scenes only).",
            "",
            "| cut stage | s/image | speed-up vs baseline | speed-up vs reference | masks/image | multi-object s/image "
            "| speed-up vs baseline | masks/image |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"Timing scenes with identical masks: {equal_timed}/{len(timed) + len(multi)}.",
            "",
            f"Same masks on the synthetic families ({args.family_scenes} scenes each; AP against ground truth):",
            "",
            "| scene set | scenes with identical masks | baseline AP50 / AP | this tree AP50 / AP |",
            "|---|---:|---:|---:|",
            *quality,
        ]
    )
    print(table)
    append("cut_speed: whole cut stage per image, this tree vs an earlier commit", table)


if __name__ == "__main__":
    main()
