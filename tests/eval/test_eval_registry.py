"""Benchmark registry: short names resolve to the expected file in --data-dir / $CUTS3D_DATA,
with each benchmark's protocol defaults (box-only sets -> bbox, LVIS -> 300 detections)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cuts3d.eval import EvalInputError, evaluate, registry
from cuts3d.eval.perturb import perturbed_predictions

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
GT_PATH = DATA / "coco_val2017_dev128" / "annotations.json"

EXPECTED_FILES = {
    "coco": "coco_cls_agnostic_instances_val2017.json",
    "coco20k": "coco20k_trainval_gt.json",
    "lvis": "lvis1.0_cocofied_val_cls_agnostic.json",
    "voc": "voc_2007_trainval_test_cls_agnostic.json",
    "objects365": "objects365_val_cls_agnostic.json",
    "openimages": "openimages_val_cls_agnostic.json",
    "kitti": "kitti_trainval_cls_agnostic.json",
    "uvo": "uvo_val_cls_agnostic.json",
}
needs_data = pytest.mark.skipif(
    not GT_PATH.is_file(),
    reason=f"real COCO dev data not found at {GT_PATH} (expected ../shared/data beside the repository)",
)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def small_gt() -> dict:
    """The first 12 dev128 images with their annotations, 80 categories as in COCO."""
    d = json.loads(GT_PATH.read_text())
    keep = {img["id"] for img in d["images"][:12]}
    return dict(
        d,
        images=[i for i in d["images"] if i["id"] in keep],
        annotations=[a for a in d["annotations"] if a["image_id"] in keep],
    )


def test_names_files_and_defaults():
    assert {n: b.expected_file for n, b in registry.BENCHMARKS.items()} == EXPECTED_FILES
    for name in ("voc", "objects365", "openimages", "kitti"):
        assert registry.BENCHMARKS[name].iou_types == ("bbox",)
    for name in ("coco", "coco20k", "lvis", "uvo"):
        assert registry.BENCHMARKS[name].iou_types == ("segm", "bbox")
    assert registry.BENCHMARKS["lvis"].max_dets == 300
    assert registry.lookup("COCO-val2017").name == "coco"
    assert registry.lookup("VOC07").name == "voc"
    assert registry.lookup("imagenet") is None
    table = registry.describe()
    assert all(f"`{n}`" in table and f"`{f}`" in table for n, f in EXPECTED_FILES.items())


def test_resolution_needs_a_data_directory(tmp_path):
    with pytest.raises(registry.RegistryError, match=r"--data-dir DIR .* CUTS3D_DATA=DIR") as e:
        registry.resolve("coco")
    assert "coco_cls_agnostic_instances_val2017.json" in str(e.value)
    with pytest.raises(registry.RegistryError, match="annotation file not found") as e:
        registry.resolve("lvis", tmp_path)
    msg = str(e.value)
    assert "https://dl.fbaipublicfiles.com/cutler/coco/lvis1.0_cocofied_val_cls_agnostic.json" in msg
    assert str(tmp_path / "lvis1.0_cocofied_val_cls_agnostic.json") in msg
    with pytest.raises(registry.RegistryError, match="does not exist"):
        registry.resolve("coco", tmp_path / "missing")


def test_flag_env_and_cutler_layout(tmp_path, monkeypatch):
    flat = tmp_path / "flat"
    (flat / "annotations").mkdir(parents=True)
    (flat / "annotations" / "coco20k_trainval_gt.json").write_text("{}")
    assert registry.resolve("coco20k", flat)[1] == flat / "annotations" / "coco20k_trainval_gt.json"
    layout = tmp_path / "detectron2_datasets"
    kitti = layout / "kitti" / "annotations" / "trainval_cls_agnostic.json"
    kitti.parent.mkdir(parents=True)
    kitti.write_text("{}")
    monkeypatch.setenv(registry.ENV_VAR, str(layout))
    assert registry.resolve("kitti") == (registry.BENCHMARKS["kitti"], kitti)
    # the flag wins over the environment variable
    (flat / "kitti_trainval_cls_agnostic.json").write_text("{}")
    assert registry.resolve("kitti", flat)[1] == flat / "kitti_trainval_cls_agnostic.json"


@needs_data
def test_evaluate_with_a_short_name(small_gt, tmp_path, monkeypatch):
    (tmp_path / "coco_cls_agnostic_instances_val2017.json").write_text(json.dumps(small_gt))
    preds = perturbed_predictions(small_gt, shift=(4, 0), seed=0)
    by_name = evaluate("coco", preds, data_dir=tmp_path, verbose=False)
    by_path = evaluate(tmp_path / "coco_cls_agnostic_instances_val2017.json", preds, verbose=False)
    assert json.dumps(by_name) == json.dumps(by_path) and list(by_name) == ["segm", "bbox"]  # NaN-safe
    assert by_name.info["benchmark"] == "coco" and by_path.info["benchmark"] is None
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path))
    assert json.dumps(evaluate("coco_val2017", preds, verbose=False)) == json.dumps(by_path)
    with pytest.raises(EvalInputError, match="annotation file not found"):
        evaluate("uvo", preds, verbose=False)


@needs_data
def test_box_only_benchmark_defaults_to_bbox(small_gt, tmp_path):
    boxes_gt = dict(
        small_gt, annotations=[{k: v for k, v in a.items() if k != "segmentation"} for a in small_gt["annotations"]]
    )
    (tmp_path / "voc_2007_trainval_test_cls_agnostic.json").write_text(json.dumps(boxes_gt))
    preds = [
        {"image_id": a["image_id"], "bbox": a["bbox"], "score": 1.0}
        for a in small_gt["annotations"]
        if not a["iscrowd"]
    ]
    m = evaluate("voc", preds, data_dir=tmp_path, verbose=False)
    assert list(m) == ["bbox"] and m["bbox"]["AP"] == pytest.approx(100.0)


@needs_data
def test_lvis_defaults_to_300_detections(small_gt, tmp_path):
    (tmp_path / "lvis1.0_cocofied_val_cls_agnostic.json").write_text(json.dumps(small_gt))
    preds = perturbed_predictions(small_gt, seed=0)
    m = evaluate("lvis", preds, data_dir=tmp_path, verbose=False)
    assert m.info["max_dets"] == [1, 10, 300] and "AR300" in m["segm"]
    assert "AR100" in evaluate("lvis", preds, data_dir=tmp_path, max_dets=100, verbose=False)["segm"]
