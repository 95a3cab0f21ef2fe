"""Shard partition, crash-safe logs (torn last line) and merging with renumbered ids."""

import json

import pytest

from cuts3d.pipeline.shards import ShardLog, merge, parse_shard, read_log, shard_items, shard_log_path


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
    coco = merge([out1, out2], tmp_path / "m")
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
