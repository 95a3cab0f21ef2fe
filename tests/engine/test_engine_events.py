"""Training metrics (cuts3d.engine.events): smoothing windows, writers, log.txt, periodic validation."""

import json
import logging

import pytest
import torch
from test_engine_train import _cfg, _losses, _pseudo_dataset

from cuts3d.engine.events import (
    History,
    MetricsRecorder,
    Validator,
    format_metrics_line,
    preserved_rng,
    release_run_logger,
    setup_run_logger,
)
from cuts3d.engine.train import TrainConfig, train

LOSS_TERMS = {"loss_rpn_cls", "loss_rpn_loc", "loss_mask"} | {f"loss_{k}_stage{s}" for k in ("cls", "box") for s in range(3)}


def test_history_window_median_mean_and_global_average():
    h = History(max_length=5)
    for i, v in enumerate([4.0, 1.0, 3.0, 10.0, 2.0, 6.0], start=1):
        h.update(v, i)
    # the last 5 kept: [1, 3, 10, 2, 6]
    assert h.latest() == 6.0 and h.latest_iteration() == 6 and len(h) == 5
    assert h.median(3) == 6.0  # [10, 2, 6]
    assert h.median(4) == pytest.approx(4.5)  # [3, 10, 2, 6] -> (3 + 6) / 2
    assert h.avg(3) == pytest.approx(6.0) and h.avg(2) == pytest.approx(4.0)
    assert h.median(20) == 3.0  # a window longer than the history uses what there is: [1, 3, 10, 2, 6]
    assert h.global_avg() == pytest.approx(26.0 / 6)  # every value ever added, not only the kept ones
    restored = History(max_length=5)
    restored.load_state_dict(h.state_dict())
    assert restored.median(4) == h.median(4) and restored.global_avg() == h.global_avg()
    with pytest.raises(ValueError, match="empty"):
        History().median(3)


def test_recorder_smooths_every_term_and_the_total_as_detectron2():
    rec = MetricsRecorder(max_iter=10, window=3)
    steps = [{"loss_a": 1.0, "loss_b": 0.5}, {"loss_a": 3.0, "loss_b": 0.1}, {"loss_a": 2.0, "loss_b": 0.9},
             {"loss_a": 5.0, "loss_b": 0.2}]
    for i, losses in enumerate(steps, start=1):
        rec.put(i, losses, lr=0.01 * i, time=0.1 * i, data_time=0.01)
    r = rec.record()
    assert r["iteration"] == 4 and r["lr"] == pytest.approx(0.04)
    assert r["loss_a"] == 3.0 and r["loss_b"] == pytest.approx(0.2)  # medians of [3, 2, 5] and [0.1, 0.9, 0.2]
    assert r["total_loss"] == pytest.approx(3.1)  # median of the totals [3.1, 2.9, 5.2], not a sum of medians
    assert r["loss"] == pytest.approx(5.2) and r["last/loss_a"] == 5.0 and r["last/loss_b"] == pytest.approx(0.2)
    assert r["time"] == pytest.approx(0.3) and r["last/time"] == pytest.approx(0.4)  # median of [0.2, 0.3, 0.4]
    assert r["eta_seconds"] == pytest.approx(0.25 * 6)  # median time over up to 1000 iterations x 6 left
    line = format_metrics_line({**r, "max_mem_mb": 1234.4})
    assert line.startswith("eta: 0:00:01  iter: 4  total_loss: 3.1  loss_a: 3  loss_b: 0.2  time: 0.3000  last_time: 0.4000")
    assert "data_time: 0.0100" in line and "lr: 0.04" in line and line.endswith("max_mem: 1234M")
    # the windows continue across a checkpoint
    resumed = MetricsRecorder(max_iter=10, window=3)
    resumed.load_state_dict(rec.state_dict())
    for other in (rec, resumed):
        other.put(5, {"loss_a": 0.0, "loss_b": 0.0}, lr=0.05, time=0.5, data_time=0.01)
    assert resumed.record() == rec.record()


def test_run_logger_has_no_duplicate_handlers(tmp_path):
    for run in (tmp_path / "a", tmp_path / "a", tmp_path / "b"):
        logger = setup_run_logger(run, rank=0)
        logger.info("hello %s", run.name)
    ours = [h for h in logger.handlers if not type(h).__name__ == "LogCaptureHandler"]  # pytest's own: not ours
    assert len(ours) == 2 and sum(isinstance(h, logging.FileHandler) for h in ours) == 1 and not logger.propagate
    release_run_logger(logger)
    assert not [h for h in logger.handlers if not type(h).__name__ == "LogCaptureHandler"]
    assert (tmp_path / "a" / "log.txt").read_text().count("hello a") == 2  # appended, each line once
    assert (tmp_path / "b" / "log.txt").read_text().count("hello") == 1


def test_preserved_rng_restores_the_global_state():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    with preserved_rng():
        torch.rand(100)
    torch.testing.assert_close(torch.rand(4), expected)


class _RandomDetector(torch.nn.Module):
    """Stands in for the detector: one full-image mask per image with a random score (it draws from torch's RNG)."""

    def forward(self, images):
        assert not self.training
        return [{"masks": torch.ones(1, 1, *im.shape[-2:]), "scores": torch.rand(1)} for im in images]


def test_validator_restores_rng_and_mode_and_writes_predictions(tmp_path):
    data, images, coco = _pseudo_dataset(tmp_path, n=2)
    validator = Validator(data, images, tmp_path / "eval")
    model = _RandomDetector().train()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    record = validator(model, 7, "cpu")
    torch.testing.assert_close(torch.rand(3), expected)  # the training RNG is untouched
    assert model.training
    assert record["iteration"] == 7 and {"segm/AP", "segm/AP50", "segm/AP75", "bbox/AP"} <= set(record)
    assert all(0 <= record[k] <= 100 for k in record if "/" in k)
    preds = json.loads((tmp_path / "eval" / "iter_0000007.json").read_text())
    assert {p["image_id"] for p in preds} == {im["id"] for im in coco["images"]}
    with pytest.raises(FileNotFoundError, match="validation images are missing"):
        Validator(data, tmp_path, tmp_path / "eval")


def test_eval_period_needs_val_data():
    with pytest.raises(ValueError, match="needs val_data"):
        TrainConfig.from_dict({"eval_period": 10})


def test_tiny_run_logs_every_term_everywhere_and_eval_leaves_training_unchanged(tmp_path):
    data, images, _ = _pseudo_dataset(tmp_path, n=2)
    plain, with_eval = tmp_path / "plain", tmp_path / "eval"
    # 3 iterations, evaluation every 2: at iteration 2 (periodic) and 3 (after the last), as detectron2's EvalHook
    train(_cfg(data, images, plain, max_iter=3, log_period=1))
    train(_cfg(data, images, with_eval, max_iter=3, log_period=1, eval_period=2, val_data=str(data)))

    records = _losses(plain)
    assert [r["iteration"] for r in records] == [1, 2, 3]
    for r in records:
        assert LOSS_TERMS <= set(r) and {f"last/{k}" for k in LOSS_TERMS} <= set(r)
        assert {"total_loss", "loss", "lr", "time", "data_time", "eta_seconds"} <= set(r)
        assert r["loss"] == pytest.approx(sum(r[f"last/{k}"] for k in LOSS_TERMS), rel=1e-6)
    totals = [r["loss"] for r in records]
    assert records[2]["total_loss"] == pytest.approx(sorted(totals)[1], rel=1e-9)  # median of the window so far
    assert records[2]["loss_mask"] == pytest.approx(sorted(r["last/loss_mask"] for r in records)[1], rel=1e-9)
    log = (plain / "log.txt").read_text()
    assert "resolved config" in log and log.count("  iter: ") == 3 and "total_loss: " in log and "loss_mask: " in log
    assert list((plain / "tb").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set(EventAccumulator(str(plain / "tb")).Reload().Tags()["scalars"])
    assert {"total_loss", "loss_mask", "last/loss_mask", "lr"} <= tags

    lines = _losses(with_eval)
    evals = [r for r in lines if "segm/AP50" in r]
    assert [r["iteration"] for r in evals] == [2, 3]
    assert all(0 <= r[f"{t}/{m}"] <= 100 for r in evals for t in ("segm", "bbox") for m in ("AP", "AP50", "AP75"))
    assert sorted(p.name for p in (with_eval / "eval").iterdir()) == ["iter_0000002.json", "iter_0000003.json"]
    assert (with_eval / "log.txt").read_text().count("evaluation at iteration") == 2
    tags = set(EventAccumulator(str(with_eval / "tb")).Reload().Tags()["scalars"])
    assert {"segm/AP50", "bbox/AP"} <= tags
    # evaluation changes nothing in training: the same losses at the same iterations (raw and smoothed)
    train_lines = {r["iteration"]: r for r in lines if "loss" in r}
    assert sorted(train_lines) == [1, 2, 3]
    for it, r in train_lines.items():
        for key in [k for k in r if "loss" in k]:  # raw and smoothed total and terms
            assert r[key] == pytest.approx(records[it - 1][key], rel=1e-6, abs=1e-7), (it, key)
    # train() closed log.txt (pytest attaches its own capture handlers to non-propagating loggers: not counted)
    assert not [h for h in logging.getLogger("cuts3d").handlers if isinstance(h, logging.FileHandler)]
