"""Shard partition, crash-safe logs (torn last line, retries), the shard lock and merging (renumbered ids, partial
merges refused, images no longer in the input dropped, run info kept, names that are not UTF-8)."""

import json
import os

import pytest

from cuts3d.pipeline.shards import (
    IncompleteMergeError,
    ShardLockedError,
    ShardLog,
    collect,
    display_name,
    json_line,
    merge,
    parse_shard,
    read_log,
    shard_items,
    shard_log_path,
    write_inputs,
)


def _record(rel, n_ann=1, issues=()):
    return {
        "rel": rel,
        "image": {"width": 4, "height": 3},
        "annotations": [{"category_id": 1, "bbox": [0, 0, 1, 1], "area": 1.0, "score": 0.5}] * n_ann,
        "issues": list(issues),
    }


def test_parse_and_partition():
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError, match="i/n|0 <= i < n"):
            parse_shard(bad)
    items = list(range(10))
    parts = [shard_items(items, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == items and parts[1] == [1, 4, 7]


def test_torn_last_line_is_dropped_and_repaired(tmp_path):
    path = tmp_path / "s.jsonl"
    with ShardLog(path) as log:
        log.append(_record("a.jpg"))
        log.append(_record("b.jpg"))
    with path.open("ab") as f:
        f.write(b'{"rel": "c.jpg", "ima')  # killed mid-write
    assert [r["rel"] for r in read_log(path)] == ["a.jpg", "b.jpg"]
    with ShardLog(path) as log:  # a restart repairs the file and appends after it
        assert log.done == {"a.jpg", "b.jpg"}
        log.append(_record("c.jpg"))
    assert [r["rel"] for r in read_log(path)] == ["a.jpg", "b.jpg", "c.jpg"]
    assert path.read_bytes().endswith(b"\n")


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(_record("a.jpg")) + "\nnot json\n" + json.dumps(_record("b.jpg")) + "\n")
    with pytest.raises(ValueError, match="line 2"):
        read_log(path)


def test_merge_renumbers_dedupes_and_collects_issues(tmp_path):
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    with ShardLog(shard_log_path(out1, 0, 2)) as log:
        log.append(_record("z.jpg", 2))
        log.append(_record("a.jpg", 1, [{"stage": "depth", "level": "warning", "reason": "constant depth"}]))
    with ShardLog(shard_log_path(out2, 1, 2)) as log:
        log.append({"rel": "bad.jpg", "image": None, "annotations": [], "issues": [{"stage": "load", "level": "error", "reason": "empty file"}]})
        log.append(_record("a.jpg", 3))  # duplicate of o1's record: first one wins
    coco = merge([out1, out2], tmp_path / "m").coco
    assert [i["file_name"] for i in coco["images"]] == ["a.jpg", "z.jpg"]
    assert [i["id"] for i in coco["images"]] == [1, 2]  # ids follow the sorted relative paths
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3]
    assert [a["image_id"] for a in coco["annotations"]] == [1, 2, 2]
    written = json.loads((tmp_path / "m" / "annotations.json").read_text())
    assert written == coco
    errors = [json.loads(line) for line in (tmp_path / "m" / "errors.jsonl").read_text().splitlines()]
    assert {(e["image"], e["stage"]) for e in errors} == {("a.jpg", "depth"), ("bad.jpg", "load")}
    with pytest.raises(FileNotFoundError, match="cuts3d extract"):
        merge([tmp_path / "nothing"], tmp_path / "m2")


def test_extract_cli_reports_setup_errors_without_traceback(tmp_path, capsys):
    from cuts3d.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["extract", "--images", str(tmp_path / "empty"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no images" in err and str(tmp_path / "empty") in err and "Traceback" not in err
    assert main(["extract", "--images", str(tmp_path / "nope"), "--output", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- issue 11: retries, lock, partial merges, info, odd names -------------------------------------------------------

def _failed(rel, stage="load"):
    return {"rel": rel, "image": {"width": 4, "height": 3}, "annotations": [],
            "issues": [{"stage": stage, "level": "error", "reason": "boom"}]}


def test_failures_are_retried_and_the_last_record_of_a_log_counts(tmp_path):
    path = shard_log_path(tmp_path, 0, 1)
    with ShardLog(path) as log:
        log.append(_record("a.jpg"))
        log.append(_failed("b.jpg", "depth"))
    with ShardLog(path) as log:
        assert log.done == {"a.jpg"} and log.failed == {"b.jpg"}  # b is retried, a is not
        log.append(_record("b.jpg", 2))
        assert log.done == {"a.jpg", "b.jpg"} and not log.failed
    assert collect([tmp_path])["b.jpg"]["annotations"]  # the retry supersedes the failure
    # across logs a success beats a failure, whichever folder comes first
    other = tmp_path / "other"
    with ShardLog(shard_log_path(other, 0, 1)) as log:
        log.append(_failed("a.jpg"))
    assert collect([other, tmp_path])["a.jpg"]["issues"] == []


def test_failed_images_are_errors_not_images_with_no_masks(tmp_path):
    with ShardLog(shard_log_path(tmp_path, 0, 1)) as log:
        log.append(_record("a.jpg"))
        log.append(_failed("b.jpg", "depth"))  # loaded (it has a size) but its depth failed
    result = merge([tmp_path], tmp_path)
    assert [i["file_name"] for i in result.coco["images"]] == ["a.jpg"]
    assert result.failed == ["b.jpg"] and [e["image"] for e in result.issues] == ["b.jpg"]


def test_a_second_writer_is_refused_and_closing_releases_the_lock(tmp_path):
    path = shard_log_path(tmp_path, 3, 8)
    with ShardLog(path):
        with pytest.raises(ShardLockedError, match=rf"shard-00003-of-00008.jsonl: .*already being written by host .* pid {os.getpid()}"):
            ShardLog(path)
    with ShardLog(path) as log:  # released on close
        log.append(_record("a.jpg"))


def test_merge_names_missing_and_unfinished_shards(tmp_path):
    out = tmp_path / "o"
    for i, rels in enumerate([["a.jpg", "d.jpg"], ["b.jpg"]]):
        path = shard_log_path(out, i, 3)
        with ShardLog(path) as log:
            write_inputs(path, f"{i}/3", rels)
            for rel in rels[:1]:
                log.append(_record(rel))
    with pytest.raises(IncompleteMergeError) as err:
        merge([out], tmp_path / "m")
    text = str(err.value)
    assert "shard 2/3: no log" in text and "shard 0/3" in text and "1 of 2 images without a record" in text
    assert "\n" not in text and "--allow-partial" in text and "shard 1/3" not in text
    result = merge([out], tmp_path / "m", allow_partial=True)
    assert [i["file_name"] for i in result.coco["images"]] == ["a.jpg", "b.jpg"] and len(result.incomplete) == 2
    # the driver knows the input: images without a record are missing, records of other images are dropped
    with pytest.raises(IncompleteMergeError, match="1 input images without a record"):
        merge([out], tmp_path / "m", expected=["a.jpg", "b.jpg", "c.jpg"])
    result = merge([out], tmp_path / "m", expected=["b.jpg"])
    assert [i["file_name"] for i in result.coco["images"]] == ["b.jpg"] and result.dropped == ["a.jpg"]
    assert "dropped 1 images that are no longer in the input: a.jpg" in result.warnings[0]


def test_merge_drops_images_that_left_the_recorded_inputs(tmp_path):
    path = shard_log_path(tmp_path, 0, 1)
    with ShardLog(path) as log:
        for rel in ("a.jpg", "b.jpg"):
            log.append(_record(rel))
        write_inputs(path, "0/1", ["b.jpg"])  # a later run no longer had a.jpg
    result = merge([tmp_path], tmp_path)
    assert [i["file_name"] for i in result.coco["images"]] == ["b.jpg"] and result.dropped == ["a.jpg"]


def test_merge_keeps_the_run_info_and_refuses_mixed_settings(tmp_path):
    import yaml

    outs = []
    for i, backbone in enumerate(["dino_vits16", "dino_vits16", "dino_vitb8"]):
        out = tmp_path / f"o{i}"
        with ShardLog(shard_log_path(out, i, 3)) as log:
            log.append(_record(f"{i}.jpg"))
        cfg = {"backbone": backbone, "depth": "zoedepth", "cut": {"method": "cuts3d", "confidence_floor": 0.5}}
        (out / "config.yaml").write_text(yaml.safe_dump(cfg))
        outs.append(out)
    with pytest.raises(ValueError, match="differ in backbone"):
        merge(outs, tmp_path / "m")
    (outs[2] / "config.yaml").unlink()
    info = merge(outs, tmp_path / "m").coco["info"]
    assert info == {"description": "cuts3d pseudo-masks", "method": "cuts3d", "backbone": "dino_vits16",
                    "depth": "zoedepth", "confidence_floor": 0.5}


def test_names_that_are_not_utf8_stay_valid_json_and_round_trip(tmp_path):
    rel = os.fsdecode(b"caf\xe9 \xc3\xa9.png")  # a Latin-1 byte, then a valid UTF-8 'é'
    line = json_line({"rel": rel})
    assert "\\udce9" in line and "é" in line
    line.encode("utf-8")  # writable as UTF-8
    assert json.loads(line)["rel"] == rel
    assert display_name(rel) == "caf\\xe9 é.png"
    with ShardLog(shard_log_path(tmp_path, 0, 1)) as log:
        log.append(_record(rel))
    coco = merge([tmp_path], tmp_path).coco
    assert json.loads((tmp_path / "annotations.json").read_text(encoding="utf-8"))["images"][0]["file_name"] == rel
    assert coco["images"][0]["file_name"] == rel


# --- issue 12 (3): merging and bookkeeping in memory bounded by the names ----------------------------------------

def _reference_coco(outputs, info=None, expected=None):
    """The merged COCO dict as the in-memory merge of issue 11 built it (every record loaded): the streaming
    merge must write exactly ``json.dumps`` of this."""
    records = collect(outputs)
    wanted = set(expected) if expected is not None else None
    dropped = set(records) - wanted if wanted is not None else set()
    images, annotations, issues = [], [], []
    for rel in sorted(set(records) - dropped):
        r = records[rel]
        issues += [{"image": rel, **i} for i in r.get("issues", [])]
        if r.get("image") is None or any(i.get("level") == "error" for i in r.get("issues", [])):
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": rel, **r["image"]})
        for ann in r["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    coco = {"info": info or {"description": "cuts3d pseudo-masks"}, "licenses": [], "images": images,
            "annotations": annotations, "categories": [{"id": 1, "name": "object", "supercategory": "object"}]}
    return coco, issues


def _rle_record(rel, masks, size=200):
    """A record shaped like extract's: RLE masks of ``size`` characters and confidence codes."""
    return {"rel": rel, "image": {"width": 640, "height": 480},
            "annotations": [{"category_id": 1, "bbox": [1.5, 2, 30, 40], "area": 1200.0, "score": 0.25 * k,
                             "segmentation": {"size": [480, 640], "counts": f"{rel}{k}" + "Q" * size},
                             "confidence": {"size": [480, 640], "counts": "c" * size}} for k in range(masks)],
            "issues": []}


def test_streaming_merge_writes_the_bytes_of_the_in_memory_merge(tmp_path):
    o1, o2 = tmp_path / "o1", tmp_path / "o2"
    odd = os.fsdecode(b"caf\xe9 \xc3\xa9.png")  # not UTF-8: escaped as \udce9 in the JSON
    with ShardLog(shard_log_path(o1, 0, 2)) as log:
        log.append(_rle_record("z.jpg", 3))
        log.append(_failed("x.jpg", "depth"))  # o2 has x.jpg succeed then fail: this failure stays
        log.append(_failed("y.jpg", "load"))  # o2 has y.jpg succeed: the success wins
        log.append(_rle_record(odd, 2))
        log.append({**_rle_record("w.jpg", 1), "image": {"height": 480, "width": 640, "extra": "kept"}})
        log.append(_failed("r.jpg"))
        log.append(_rle_record("r.jpg", 2))  # a retry in the same log: the last record counts
        log.append(_rle_record("gone.jpg", 1))
    with ShardLog(shard_log_path(o2, 1, 2)) as log:
        log.append(_rle_record("x.jpg", 2))
        log.append({**_failed("x.jpg", "cut"), "image": None})
        log.append(_rle_record("y.jpg", 1))
        log.append({**_rle_record("a.jpg", 0), "issues": [{"stage": "depth", "level": "warning", "reason": "flat"}]})
        log.append(_rle_record(odd, 1))  # o1's success came first
    info = {"description": "cuts3d pseudo-masks", "method": "cuts3d", "backbone": "é"}
    expected = ["z.jpg", "x.jpg", "y.jpg", odd, "w.jpg", "r.jpg", "a.jpg"]
    result = merge([o1, o2], tmp_path / "m", info=info, expected=expected)
    coco, issues = _reference_coco([o1, o2], info, expected)
    assert (tmp_path / "m" / "annotations.json").read_bytes() == json.dumps(coco).encode("utf-8")
    assert result.issues == issues and result.failed == ["x.jpg"] and result.dropped == ["gone.jpg"]
    assert (result.num_images, result.num_annotations) == (len(coco["images"]), len(coco["annotations"])) == (6, 9)
    assert result.coco == coco  # read back from the file on demand
    errors = (tmp_path / "m" / "errors.jsonl").read_text(encoding="utf-8")
    assert errors == "".join(json_line(i) + "\n" for i in issues)


def _big_logs(out, images=60, size=60_000):
    """Shard logs of ``images`` records with 2 masks of ``size`` characters each (~14 MB)."""
    for i in range(2):
        path = shard_log_path(out, i, 2)
        with ShardLog(path) as log:
            rels = [f"{k:04d}.jpg" for k in range(i, images, 2)]
            write_inputs(path, f"{i}/2", rels)
            for rel in rels:
                log.append(_rle_record(rel, 2, size))
    return [f"{k:04d}.jpg" for k in range(images)]


def _peak_bytes(fn):
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_merge_and_bookkeeping_do_not_hold_the_records(tmp_path):
    from cuts3d.pipeline.extract import shards_complete
    from cuts3d.pipeline.shards import logged_status

    class Rec:
        def __init__(self, rel):
            self.rel = rel

    rels = _big_logs(tmp_path)
    total = sum(shard_log_path(tmp_path, i, 2).stat().st_size for i in range(2))
    assert total > 14e6
    # A few records at a time (each ~0.25 MB), never the logs' ~14 MB.
    assert _peak_bytes(lambda: merge([tmp_path], tmp_path / "m")) < 3e6
    assert _peak_bytes(lambda: shards_complete(tmp_path, [Rec(r) for r in rels], 2)) < 3e6
    assert _peak_bytes(lambda: ShardLog(shard_log_path(tmp_path, 0, 2)).close()) < 3e6
    assert set(logged_status(shard_log_path(tmp_path, 1, 2))) == set(rels[1::2])
    assert shards_complete(tmp_path, [Rec(r) for r in rels], 2)
    assert not shards_complete(tmp_path, [Rec(r) for r in rels + ["new.jpg"]], 2)
    assert merge([tmp_path], tmp_path / "m").num_annotations == 2 * len(rels)
