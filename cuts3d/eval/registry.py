"""Registry of the standard class-agnostic evaluation benchmarks (CutLER / CutS3D protocol).

CutLER (Wang et al., CVPR 2023) and CutS3D (Sick et al., ICCV 2025) report zero-shot,
class-agnostic COCO-style AP on a fixed set of benchmarks. CutLER publishes a class-agnostic
COCO-format ground-truth file for each (every category merged into one, ``iscrowd`` kept),
served from ``dl.fbaipublicfiles.com/cutler/``. This module maps a short name (``coco``,
``lvis``, ``kitti``, ...) to the file a user downloaded into a data directory, together with
the protocol settings of that benchmark (which IoU types it has, how many detections per image
are scored). Nothing is downloaded here.

The data directory comes from ``data_dir=`` / ``--data-dir`` or, failing that, the
``CUTS3D_DATA`` environment variable. Inside it a file is found either flat
(``DATA/<expected name>`` or ``DATA/annotations/<expected name>``) or in CutLER's detectron2
layout (e.g. ``DATA/coco/annotations/coco_cls_agnostic_instances_val2017.json``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Environment variable naming the directory that holds the benchmark annotation files.
ENV_VAR = "CUTS3D_DATA"

_CUTLER_URL = "https://dl.fbaipublicfiles.com/cutler"


@dataclass(frozen=True)
class Benchmark:
    """One class-agnostic evaluation benchmark.

    Attributes:
        name: short name accepted by ``--gt`` (lower case).
        title: human-readable data set and split.
        file_names: accepted flat file names, the first is the documented expected name;
            each is looked for as ``DATA/<name>`` and ``DATA/annotations/<name>``.
        layout_paths: paths relative to ``DATA`` in CutLER's detectron2 layout.
        url: where CutLER publishes the file (for the "not found" message; not downloaded).
        iou_types: IoU types the ground truth supports, the default for ``--iou-type``.
        max_dets: detections per image scored by the protocol (300 for LVIS, else 100).
        images: which images the predictions must cover.
        aliases: other accepted spellings of ``name``.
    """

    name: str
    title: str
    file_names: tuple[str, ...]
    layout_paths: tuple[str, ...]
    url: str
    iou_types: tuple[str, ...]
    max_dets: int
    images: str
    aliases: tuple[str, ...] = ()

    @property
    def expected_file(self) -> str:
        """The documented expected file name (flat layout)."""
        return self.file_names[0]

    def candidates(self, data_dir: Path) -> list[Path]:
        """All paths under ``data_dir`` where this benchmark's file is looked for, in order."""
        out: list[Path] = []
        for fname in self.file_names:
            out.append(data_dir / fname)
            out.append(data_dir / "annotations" / fname)
        out.extend(data_dir / rel for rel in self.layout_paths)
        return out


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            name="coco",
            title="COCO val2017 (5,000 images), boxes and masks",
            file_names=("coco_cls_agnostic_instances_val2017.json",),
            layout_paths=("coco/annotations/coco_cls_agnostic_instances_val2017.json",),
            url=f"{_CUTLER_URL}/coco/coco_cls_agnostic_instances_val2017.json",
            iou_types=("segm", "bbox"),
            max_dets=100,
            images="COCO val2017",
            aliases=("coco_val2017", "coco-val2017", "coco2017", "cocoval2017"),
        ),
        Benchmark(
            name="coco20k",
            title="COCO20K (19,817 train2014 images), boxes and masks",
            file_names=("coco20k_trainval_gt.json",),
            layout_paths=("coco/annotations/coco20k_trainval_gt.json",),
            url=f"{_CUTLER_URL}/coco/coco20k_trainval_gt.json",
            iou_types=("segm", "bbox"),
            max_dets=100,
            images="COCO train2014 (the COCO20K subset)",
            aliases=("coco-20k", "coco_20k"),
        ),
        Benchmark(
            name="lvis",
            title="LVIS v1.0 val, COCO-fied (val2017 images), boxes and masks",
            file_names=("lvis1.0_cocofied_val_cls_agnostic.json",),
            layout_paths=(
                "coco/annotations/lvis1.0_cocofied_val_cls_agnostic.json",
                "lvis/annotations/lvis1.0_cocofied_val_cls_agnostic.json",
            ),
            url=f"{_CUTLER_URL}/coco/lvis1.0_cocofied_val_cls_agnostic.json",
            iou_types=("segm", "bbox"),
            max_dets=300,
            images="COCO val2017",
            aliases=("lvis_v1_val", "lvis1.0", "lvis_val"),
        ),
        Benchmark(
            name="voc",
            title="PASCAL VOC 2007 trainval+test, boxes only",
            file_names=("voc_2007_trainval_test_cls_agnostic.json", "trainvaltest_2007_cls_agnostic.json"),
            layout_paths=("voc/annotations/trainvaltest_2007_cls_agnostic.json",),
            url=f"{_CUTLER_URL}/voc/trainvaltest_2007_cls_agnostic.json",
            iou_types=("bbox",),
            max_dets=100,
            images="VOC2007 JPEGImages",
            aliases=("voc07", "voc2007", "voc_2007"),
        ),
        Benchmark(
            name="objects365",
            title="Objects365 v2 val, boxes only",
            file_names=("objects365_val_cls_agnostic.json", "zhiyuan_objv2_val_cls_agnostic.json"),
            layout_paths=("objects365/annotations/zhiyuan_objv2_val_cls_agnostic.json",),
            url=f"{_CUTLER_URL}/objects365/zhiyuan_objv2_val_cls_agnostic.json",
            iou_types=("bbox",),
            max_dets=100,
            images="Objects365 v2 val",
            aliases=("o365", "objects365_val", "objects365v2"),
        ),
        Benchmark(
            name="openimages",
            title="OpenImages v6 val, boxes only",
            file_names=("openimages_val_cls_agnostic.json",),
            layout_paths=(
                "openImages/annotations/openimages_val_cls_agnostic.json",
                "openimages/annotations/openimages_val_cls_agnostic.json",
            ),
            url=f"{_CUTLER_URL}/openImages/openimages_val_cls_agnostic.json",
            iou_types=("bbox",),
            max_dets=100,
            images="OpenImages v6 validation",
            aliases=("oi", "openimages_v6", "openimages_val", "open_images"),
        ),
        Benchmark(
            name="kitti",
            title="KITTI 2D object trainval, boxes only",
            file_names=("kitti_trainval_cls_agnostic.json",),
            layout_paths=("kitti/annotations/trainval_cls_agnostic.json",),
            url=f"{_CUTLER_URL}/kitti/trainval_cls_agnostic.json",
            iou_types=("bbox",),
            max_dets=100,
            images="KITTI trainval (JPEGImages)",
            aliases=("kitti_trainval",),
        ),
        Benchmark(
            name="uvo",
            title="UVO val (sparse, cleaned), boxes and masks",
            file_names=("uvo_val_cls_agnostic.json", "val_sparse_cleaned_cls_agnostic.json"),
            layout_paths=("uvo/annotations/val_sparse_cleaned_cls_agnostic.json",),
            url=f"{_CUTLER_URL}/uvo/val_sparse_cleaned_cls_agnostic.json",
            iou_types=("segm", "bbox"),
            max_dets=100,
            images="UVO val frames",
            aliases=("uvo_val",),
        ),
    )
}


class RegistryError(ValueError):
    """A registry name could not be resolved to an annotation file (message says what to do)."""


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def lookup(name: str) -> Benchmark | None:
    """Return the benchmark for a short name or alias (case-insensitive), else ``None``."""
    key = _normalise(name)
    for bench in BENCHMARKS.values():
        if key == _normalise(bench.name) or key in {_normalise(a) for a in bench.aliases}:
            return bench
    return None


def data_dir_from(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The data directory: ``data_dir`` if given, else ``$CUTS3D_DATA``, else ``None``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR, "")
    return Path(env).expanduser() if env else None


def resolve(name: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[Benchmark, Path]:
    """Resolve a registry short name to ``(benchmark, path of its annotation file)``.

    Args:
        name: short name or alias, e.g. ``"coco"``, ``"lvis"``, ``"voc07"``.
        data_dir: directory holding the downloaded files; ``None`` uses ``$CUTS3D_DATA``.

    Raises:
        RegistryError: unknown name, no data directory, or the file is not in it. The message
            lists the paths searched and the URL the file is published at.
    """
    bench = lookup(name)
    if bench is None:
        raise RegistryError(f"unknown benchmark name {name!r}; known names: {', '.join(BENCHMARKS)}")
    root = data_dir_from(data_dir)
    if root is None:
        raise RegistryError(
            f"--gt {name!r} names the {bench.title} benchmark, but no data directory is set: pass "
            f"--data-dir DIR (Python: data_dir=DIR) or set {ENV_VAR}=DIR, where DIR holds "
            f"{bench.expected_file} (download: {bench.url})"
        )
    if not root.is_dir():
        source = "--data-dir" if data_dir not in (None, "") else f"${ENV_VAR}"
        raise RegistryError(f"data directory {str(root)!r} (from {source}) does not exist or is not a directory")
    searched = bench.candidates(root)
    for path in searched:
        if path.is_file():
            return bench, path
    listing = "\n  ".join(str(p) for p in searched)
    raise RegistryError(
        f"{bench.title}: annotation file not found in data directory {str(root)!r}. Download "
        f"{bench.url} and save it as {root / bench.expected_file} (searched:\n  {listing})"
    )


def describe(data_dir: str | os.PathLike[str] | None = None) -> str:
    """A markdown table of the registry: name, data set, expected file, IoU types, max dets and,
    when a data directory is known, whether the file was found there."""
    root = data_dir_from(data_dir)
    header = "| name | benchmark | expected file | iou types | max dets |"
    sep = "|---|---|---|---|---|"
    if root is not None:
        header += f" found in {root} |"
        sep += "---|"
    rows = [header, sep]
    for bench in BENCHMARKS.values():
        row = (
            f"| `{bench.name}` | {bench.title} | `{bench.expected_file}` | "
            f"{' '.join(bench.iou_types)} | {bench.max_dets} |"
        )
        if root is not None:
            found = next((p for p in bench.candidates(root) if p.is_file()), None)
            row += f" {found.relative_to(root) if found else 'missing'} |"
        rows.append(row)
    return "\n".join(rows)
