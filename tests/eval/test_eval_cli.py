"""`cuts3d eval` command: files written (metrics.json, metrics.md, pr_curve.png, eval_info.json)
hold the same numbers as the Python API; input errors exit with status 2 and a message."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from cuts3d.eval import cli, evaluate
from cuts3d.eval.perturb import perturbed_predictions

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
GT_PATH = DATA / "coco_val2017_dev128" / "annotations.json"
needs_data = pytest.mark.skipif(
    not GT_PATH.is_file(),
    reason=f"real COCO dev data not found at {GT_PATH} (expected ../shared/data beside the repository)",
)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cuts3d eval")
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def pred_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("preds") / "shifted.json"
    path.write_text(json.dumps(perturbed_predictions(GT_PATH, shift=(8, 0), seed=0, category_id=0)))
    return path


@needs_data
def test_cli_writes_metrics_markdown_and_pr_curve(pred_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(["--gt", str(GT_PATH), "--pred", str(pred_file), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| IoU type | AP | AP50 | AP75 | APs | APm | APl | AR1 | AR10 | AR100 |" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    want = evaluate(GT_PATH, pred_file, verbose=False)
    assert list(metrics) == ["segm", "bbox"]
    for t in ("segm", "bbox"):
        assert list(metrics[t]) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"]
        for k, v in metrics[t].items():
            assert v == pytest.approx(want[t][k], abs=1e-4)
    md = (out / "metrics.md").read_text()
    assert f"| segm | {want['segm']['AP']:.2f} | {want['segm']['AP50']:.2f} |" in md
    info = json.loads((out / "eval_info.json").read_text())
    assert info["score_field"] == "score" and info["prediction_category_ids"] == [0]
    from PIL import Image

    with Image.open(out / "pr_curve.png") as im:
        assert im.format == "PNG" and im.size[0] > 2 * im.size[1] > 400  # two panels side by side


@needs_data
def test_cli_options_and_quiet(pred_file, capsys):
    argv = ["--gt", str(GT_PATH), "--pred", str(pred_file), "--iou-type", "bbox", "--max-dets", "300", "--quiet"]
    assert run_cli(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == "| IoU type | AP | AP50 | AP75 | APs | APm | APl | AR1 | AR10 | AR300 |"
    assert len(out) == 3 and out[2].startswith("| bbox |")


@needs_data
def test_cli_input_error_exits_2_with_message(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]))
    assert run_cli(["--gt", str(GT_PATH), "--pred", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cuts3d eval: error: predictions {bad} refer to 1 image id that is not in the ground truth")
    assert ": 1 (1 in all)" in err
    assert "Traceback" not in err


def test_cli_requires_gt_and_pred(capsys):
    assert run_cli(["--gt", "x.json"]) == 2
    assert "--gt and --pred are required" in capsys.readouterr().err


def test_cli_list_datasets(tmp_path, capsys):
    (tmp_path / "kitti_trainval_cls_agnostic.json").write_text("{}")
    assert run_cli(["--list-datasets", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "`lvis`" in out and "| 300 |" in out
    kitti_row = next(line for line in out.splitlines() if "`kitti`" in line)
    assert kitti_row.endswith("kitti_trainval_cls_agnostic.json |")
    coco_row = next(line for line in out.splitlines() if "`coco`" in line)
    assert coco_row.endswith("missing |")


def test_registered_in_the_project_cli():
    from cuts3d.cli import COMMANDS

    assert COMMANDS["eval"][0] == "cuts3d.eval.cli"
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--gt", "coco", "--pred", "p.json", "--backend", "faster", "--data-dir", "/d"])
    assert (args.gt, args.backend, args.data_dir, args.iou_type, args.max_dets) == ("coco", "faster", "/d", None, None)
