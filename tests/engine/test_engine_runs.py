"""cuts3d.engine.runs: the settings fingerprint, run-folder detection and clean-up, metrics truncation, input checks."""

from __future__ import annotations

import json

import pytest

from cuts3d.engine.runs import (
    NOT_FINGERPRINTED,
    TrainSetupError,
    check_training_data,
    clear_run,
    existing_run_files,
    fingerprint,
    fingerprint_differences,
    truncate_metrics,
)
from cuts3d.engine.train import TrainConfig


def test_fingerprint_keeps_what_changes_the_weights_and_not_what_may_change_on_resume():
    base = TrainConfig(data="a.json", images="imgs", output="run", detector={"batch_size_per_image": 64})
    fp = fingerprint(base.to_dict(), "ab" * 32)
    assert {"lr", "batch_size", "copy_paste", "alpha_blend", "backbone", "seed", "steps", "amp"} <= set(fp)
    assert fp["detector.batch_size_per_image"] == 64 and fp["data_sha256"] == "ab" * 32
    assert not NOT_FINGERPRINTED & set(fp)
    legit = TrainConfig(data="moved/a.json", images="elsewhere", output="run2", max_iter=5, num_workers=9,
                        device="cpu", log_period=1, checkpoint_period=3, detector={"batch_size_per_image": 64})
    assert fingerprint_differences(fp, fingerprint(legit.to_dict(), "ab" * 32)) == []
    changed = TrainConfig(lr=0.02, min_sizes=(128,), detector={"batch_size_per_image": 32, "extra": 1})
    diffs = fingerprint_differences(fp, fingerprint(changed.to_dict(), "cd" * 32))
    assert "lr 0.01 -> 0.02" in diffs and "detector.extra (unset) -> 1" in diffs
    assert "detector.batch_size_per_image 64 -> 32" in diffs and any(d.startswith("min_sizes [") for d in diffs)
    assert "data_sha256 abababababab... -> cdcdcdcdcdcd..." in diffs


def test_fingerprint_of_a_yaml_round_trip_equals_the_original():
    import yaml

    cfg = TrainConfig(copy_paste_scale=(0.5, 1.0), steps=(10, 20))
    again = TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert fingerprint_differences(fingerprint(cfg.to_dict(), None), fingerprint(again.to_dict(), None)) == []
    # an older checkpoint without the data hash (or a field added later) is compared on what both know
    assert fingerprint_differences({"lr": 0.01}, {"lr": 0.01, "data_sha256": "x", "new_field": 1}) == []


def test_truncate_metrics_drops_later_records_and_a_cut_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"iteration": i, "loss": 1.0}) for i in range(1, 7)] + [json.dumps({"iteration": 4, "segm/AP": 1})]
    path.write_text("\n".join(lines) + '\n{"iteration": 7, "lo')  # the last line cut by a kill
    assert truncate_metrics(path, 4) == 3
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [1, 2, 3, 4, 4]
    assert truncate_metrics(path, 4) == 0 and truncate_metrics(tmp_path / "none.jsonl", 4) == 0


def test_existing_run_detection_and_clear_run_keeps_other_files(tmp_path):
    assert existing_run_files(tmp_path / "new") == [] and existing_run_files(tmp_path) == []
    (tmp_path / "metrics.jsonl").write_text("")  # a run that died before its first record: nothing to protect
    assert existing_run_files(tmp_path) == []
    for name in ("model_0000005.pth", "model_0000005.pth.sha256", "model_final.pth", "last_checkpoint",
                 "metrics.jsonl", "log.txt", "config.yaml", "backbone_weights.json", "notes.md",
                 "selftrain_annotations.json"):
        (tmp_path / name).write_text("x")
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "events").write_text("x")
    assert existing_run_files(tmp_path) == ["last_checkpoint", "model_final.pth", "metrics.jsonl", "model_0000005.pth"]
    removed = clear_run(tmp_path)
    assert "tb/" in removed and "model_0000005.pth.sha256" in removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md", "selftrain_annotations.json"]


def test_check_training_data_ignores_images_without_masks_and_hashes_the_json(tmp_path):
    from cuts3d.features.weights import sha256_file
    from cuts3d.synthetic.detection import write_detection_set

    data, images = write_detection_set(tmp_path, range(1))
    coco = json.loads(data.read_text())
    coco["images"].append({"id": 99, "file_name": "removed.png", "width": 8, "height": 8})  # no annotation: unused
    data.write_text(json.dumps(coco))
    assert check_training_data(data, images) == sha256_file(data)
    coco["annotations"] = []
    data.write_text(json.dumps(coco))
    with pytest.raises(TrainSetupError, match="no image has a pseudo-mask"):
        check_training_data(data, images)
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1}]}))
    with pytest.raises(TrainSetupError, match="--images .*nope: no such folder"):
        check_training_data(one, tmp_path / "nope")


def test_hostile_json_is_one_error(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(TrainSetupError, match="nested too deeply|not a COCO mapping"):
        check_training_data(deep, tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [{"id": 1}], "annotations": [{"image_id": 1}]}')
    with pytest.raises(TrainSetupError, match="lacks 'file_name'"):
        check_training_data(broken, tmp_path)
