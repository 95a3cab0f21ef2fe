"""Training metrics, their writers, the run's ``log.txt`` and periodic validation (detectron2's event system).

A single iteration's loss is noisy, and its sum of ten terms hides which term moves: the box-regression terms grow
as more proposals become positives while the model improves. So, as detectron2's ``EventStorage`` /
``CommonMetricPrinter`` / ``JSONWriter`` / ``TensorboardXWriter``, every iteration's loss terms, their total, the
iteration time and the data-loading time go into per-name histories, and each log record reports the median over
the last ``window`` iterations (detectron2: 20) next to the raw single-iteration values.

Pieces (used by :func:`cuts3d.engine.train.train`):

* :class:`History`: the last values of one scalar (median / mean over a window, global mean); state for checkpoints.
* :class:`MetricsRecorder`: per iteration :meth:`~MetricsRecorder.put`, per log step :meth:`~MetricsRecorder.record`
  (one flat dict, keys in its docstring); its state goes into checkpoints so ``--resume`` continues the same
  smoothing windows.
* Writers of a record: :class:`JSONLinesWriter` (``RUN/metrics.jsonl``), :class:`TensorBoardWriter` (``RUN/tb``),
  :class:`ConsoleWriter` (a detectron2-style line through the ``cuts3d`` logger: console and ``RUN/log.txt``).
* :func:`setup_run_logger`: the ``cuts3d`` logger with ``RUN/log.txt`` and a tqdm-safe console handler.
* :class:`Validator` / :func:`run_validation`: predicts on a validation COCO JSON with the model in memory and
  logs COCO AP (``segm/AP``, ``segm/AP50``, ``segm/AP75``, ``bbox/...``).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import random
import statistics
import sys
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

LOGGER_NAME = "cuts3d"
DEFAULT_WINDOW = 20  # detectron2's default_writers / CommonMetricPrinter window
ETA_WINDOW = 1000  # detectron2 estimates the ETA from the median iteration time over the last 1000 iterations
RAW_PREFIX = "last/"  # raw single-iteration values; detectron2's console calls the raw iteration time "last_time"
EVAL_METRICS = ("AP", "AP50", "AP75")


class History:
    """The recent values of one scalar, as fvcore's ``HistoryBuffer``: window statistics and a global mean.

    Only the last ``max_length`` values are kept (enough for every window used here) so the state stays small in
    checkpoints; the global mean is a running sum over every value ever added.
    """

    def __init__(self, max_length: int = ETA_WINDOW):
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length = max_length
        self._values: deque[tuple[float, int]] = deque(maxlen=max_length)
        self._total = 0.0
        self._count = 0

    def update(self, value: float, iteration: int) -> None:
        """Add the value of ``iteration``."""
        value = float(value)
        self._values.append((value, int(iteration)))
        self._total += value
        self._count += 1

    def _window(self, window: int) -> list[float]:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not self._values:
            raise ValueError("empty history: nothing was recorded yet")
        return [v for v, _ in list(self._values)[-window:]]

    def latest(self) -> float:
        """The last value added."""
        return self._window(1)[0]

    def latest_iteration(self) -> int:
        """The iteration of the last value added."""
        if not self._values:
            raise ValueError("empty history: nothing was recorded yet")
        return self._values[-1][1]

    def median(self, window: int) -> float:
        """Median of the last ``window`` values (fewer at the start of a run)."""
        return float(statistics.median(self._window(window)))

    def avg(self, window: int) -> float:
        """Mean of the last ``window`` values (fewer at the start of a run)."""
        values = self._window(window)
        return math.fsum(values) / len(values)

    def global_avg(self) -> float:
        """Mean of every value added since the run started (resumed runs included)."""
        if not self._count:
            raise ValueError("empty history: nothing was recorded yet")
        return self._total / self._count

    def __len__(self) -> int:
        return len(self._values)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values only, so ``torch.load(weights_only=True)`` accepts the checkpoint."""
        return {"values": [v for v, _ in self._values], "iterations": [i for _, i in self._values],
                "total": self._total, "count": self._count, "max_length": self.max_length}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.max_length = max(int(state.get("max_length", self.max_length)), self.max_length)
        self._values = deque(zip((float(v) for v in state["values"]), (int(i) for i in state["iterations"])),
                             maxlen=self.max_length)
        self._total = float(state["total"])
        self._count = int(state["count"])


class MetricsRecorder:
    """Histories of every per-iteration scalar of a training run and the log record built from them.

    Per iteration :meth:`put` takes the loss terms (their sum is ``total_loss``), the learning rate, the iteration
    time and the data-loading time. :meth:`record` returns, for the last iteration put:

    * ``iteration``, ``lr``;
    * ``total_loss`` and every loss term under its own name (``loss_...``), ``time`` and ``data_time``: the median
      over the last ``window`` iterations (detectron2's smoothing of its ``metrics.json`` and console);
    * ``loss``: the raw single-iteration total; ``last/<name>``: the raw single-iteration value of each other
      smoothed scalar (``last/loss_mask``, ``last/time``, ...);
    * ``eta_seconds``: median iteration time over the last 1000 iterations x the iterations left;
    * ``max_mem_mb`` on CUDA (peak allocated memory, as detectron2's ``max_mem``), when given.
    """

    def __init__(self, max_iter: int, window: int = DEFAULT_WINDOW):
        if window < 1:
            raise ValueError(f"log_window must be >= 1, got {window}")
        self.max_iter = max_iter
        self.window = window
        self._length = max(window, ETA_WINDOW)
        self._histories: dict[str, History] = {}
        self._loss_names: list[str] = []
        self._lr: float | None = None
        self._iteration: int | None = None

    def _history(self, name: str) -> History:
        if name not in self._histories:
            self._histories[name] = History(self._length)
        return self._histories[name]

    def put(self, iteration: int, losses: Mapping[str, float], lr: float, time: float, data_time: float) -> None:
        """Record iteration ``iteration`` (1-based: the number of iterations done)."""
        if not losses:
            raise ValueError("put: no loss terms")
        for name, value in losses.items():
            if name not in self._loss_names:
                self._loss_names.append(name)
            self._history(name).update(value, iteration)
        # The total is summed here (not taken from the caller) so that it is always the sum of the logged terms.
        self._history("total_loss").update(math.fsum(float(v) for v in losses.values()), iteration)
        self._history("time").update(time, iteration)
        self._history("data_time").update(data_time, iteration)
        self._lr = float(lr)
        self._iteration = int(iteration)

    @property
    def iteration(self) -> int | None:
        """The last iteration put (``None`` before the first)."""
        return self._iteration

    def smoothed(self, name: str) -> float:
        """Median of ``name`` over the window."""
        return self._histories[name].median(self.window)

    def history(self, name: str) -> History:
        """The history of ``name`` (``total_loss``, a loss term, ``time``, ``data_time``)."""
        return self._histories[name]

    def record(self, max_mem_mb: float | None = None) -> dict[str, Any]:
        """The log record of the last iteration put (see the class docstring for its keys)."""
        if self._iteration is None:
            raise ValueError("record: no iteration was put yet")
        smoothed_names = ["total_loss", *self._loss_names, "time", "data_time"]
        rec: dict[str, Any] = {"iteration": self._iteration}
        rec.update({name: self.smoothed(name) for name in smoothed_names})
        rec["loss"] = self._histories["total_loss"].latest()
        rec.update({RAW_PREFIX + name: self._histories[name].latest() for name in smoothed_names if name != "total_loss"})
        rec["lr"] = self._lr
        rec["eta_seconds"] = self._histories["time"].median(ETA_WINDOW) * max(self.max_iter - self._iteration, 0)
        if max_mem_mb is not None:
            rec["max_mem_mb"] = float(max_mem_mb)
        return rec

    def state_dict(self) -> dict[str, Any]:
        """Histories, loss-term order and last lr/iteration; plain Python values for ``weights_only`` loading."""
        return {"histories": {k: h.state_dict() for k, h in self._histories.items()},
                "loss_names": list(self._loss_names), "lr": self._lr, "iteration": self._iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the histories of a checkpoint (``--resume``), so the smoothing windows span the restart."""
        self._histories = {}
        for name, h in state["histories"].items():
            self._history(name).load_state_dict(h)
        self._loss_names = list(state["loss_names"])
        self._lr = state.get("lr")
        self._iteration = state.get("iteration")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class JSONLinesWriter:
    """One JSON object per line in ``path`` (appended, so a resumed run continues the file), flushed every write.

    ``--resume`` first cuts the file back to the checkpoint's iteration (cuts3d.engine.runs.truncate_metrics), so
    the iterations a crashed run logged after its last checkpoint are not there twice."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = self.path.open("a")

    def write(self, record: Mapping[str, Any]) -> None:
        # NaN / inf are not JSON: write null (e.g. an AP with no ground truth of that size).
        clean = {k: (v if _finite(v) or not isinstance(v, float) else None) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()  # a crashed or running job's metrics stay readable

    def close(self) -> None:
        self._file.close()


class TensorBoardWriter:
    """Every finite numeric value of a record as a TensorBoard scalar at step ``record["iteration"]``.

    Names with a ``/`` are grouped by TensorBoard (``last/...`` raw values, ``segm/...`` / ``bbox/...`` AP).
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        """``purge_step``: on ``--resume``, the first iteration the resumed run logs; TensorBoard drops the events
        at and after it that earlier event files hold (logged by the run that crashed after its checkpoint)."""
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def write(self, record: Mapping[str, Any]) -> None:
        step = int(record["iteration"])
        for key, value in record.items():
            if key != "iteration" and _finite(value) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def format_metrics_line(record: Mapping[str, Any]) -> str:
    """detectron2's console line: ``eta: .. iter: N total_loss: .. loss_x: .. time: .. last_time: .. data_time: ..
    last_data_time: .. lr: .. max_mem: ..M`` (losses and times: medians over the window)."""
    parts = []
    if "eta_seconds" in record:
        parts.append(f"eta: {datetime.timedelta(seconds=int(record['eta_seconds']))}")
    parts.append(f"iter: {record['iteration']}")
    parts += [f"{k}: {v:.4g}" for k, v in record.items() if "loss" in k and "/" not in k and k != "loss"]
    for name in ("time", "data_time"):
        if name in record:
            parts.append(f"{name}: {record[name]:.4f}")
            if RAW_PREFIX + name in record:
                parts.append(f"last_{name}: {record[RAW_PREFIX + name]:.4f}")
    if record.get("lr") is not None:
        parts.append(f"lr: {record['lr']:.5g}")
    if record.get("max_mem_mb") is not None:
        parts.append(f"max_mem: {record['max_mem_mb']:.0f}M")
    return "  ".join(parts)


class ConsoleWriter:
    """A record as one :func:`format_metrics_line` through ``logger`` (console and ``log.txt``)."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def write(self, record: Mapping[str, Any]) -> None:
        self.logger.info(format_metrics_line(record))

    def close(self) -> None:
        pass


class TqdmLoggingHandler(logging.StreamHandler):
    """Console handler that prints through ``tqdm.write``, so log lines appear above the progress bar instead of
    breaking it. The stream is looked up at each message (``sys.stderr`` may be replaced, e.g. by pytest)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except (OSError, ValueError):  # closed / broken stream: logging's own error report, as StreamHandler
            self.handleError(record)


_HANDLER_TAG = "_cuts3d_run_handler"


def setup_run_logger(run: str | Path | None, rank: int = 0) -> logging.Logger:
    """The ``cuts3d`` logger for one training run.

    Rank 0: ``run/log.txt`` (appended, DEBUG and up, with timestamps) and the console (INFO and up, tqdm-safe).
    Other ranks: the console for warnings and errors only (their metrics are rank 0's). Handlers added by an earlier
    call (``train()`` run twice in one process, another run folder) are removed and closed first, so lines are
    never duplicated. The logger does not propagate to the root logger, so an application's root handlers do not
    print every line a second time.
    """
    logger = logging.getLogger(LOGGER_NAME)
    release_run_logger(logger)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    console = TqdmLoggingHandler()
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(message)s", datefmt="%m/%d %H:%M:%S"))
    handlers: list[logging.Handler] = [console]
    if rank == 0 and run is not None:
        Path(run).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(run) / "log.txt", mode="a", encoding="utf-8")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s",
                                                    datefmt="%Y-%m-%d %H:%M:%S"))
        handlers.append(file_handler)
    for handler in handlers:
        setattr(handler, _HANDLER_TAG, True)
        logger.addHandler(handler)
    return logger


def release_run_logger(logger: logging.Logger | None = None) -> None:
    """Remove and close the handlers :func:`setup_run_logger` added (closes ``log.txt``)."""
    logger = logger or logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        if getattr(handler, _HANDLER_TAG, False):
            logger.removeHandler(handler)
            handler.close()


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the torch (CPU and CUDA), numpy and Python global RNG states on exit.

    Validation in the middle of training must not change what training draws next (proposal sampling uses
    torch's global RNG), so a run with evaluation makes the same training losses as one without.
    """
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(np_state)
        random.setstate(py_state)


class Validator:
    """Periodic evaluation of the model in memory on a validation COCO JSON (detectron2's ``EvalHook`` job).

    Args:
        val_data: COCO JSON with ground truth or pseudo-masks (``images`` with ``id`` and ``file_name``).
        val_images: the folder its ``file_name`` entries are relative to.
        out_dir: predictions are written to ``out_dir/iter_XXXXXXX.json``.

    Raises:
        FileNotFoundError: the JSON or one of its images is missing (checked at construction, so a bad path fails
            before training rather than at the first evaluation).
    """

    def __init__(self, val_data: str | Path, val_images: str | Path, out_dir: str | Path):
        self.val_data = Path(val_data)
        if not self.val_data.is_file():
            raise FileNotFoundError(f"val_data {self.val_data} not found; pass a COCO JSON with ground truth or pseudo-masks")
        images = json.loads(self.val_data.read_text())["images"]
        root = Path(val_images)
        self.paths = [root / im["file_name"] for im in images]
        self.ids = [int(im["id"]) for im in images]
        missing = [str(p) for p in self.paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(self.paths)} validation images are missing (e.g. "
                                    f"{missing[:3]}); set val_images to the folder {self.val_data.name}'s file_name "
                                    "entries are relative to")
        if not self.paths:
            raise ValueError(f"val_data {self.val_data} lists no images")
        self.out_dir = Path(out_dir)
        self.last_pred_file: Path | None = None

    def __call__(self, model: torch.nn.Module, iteration: int, device: torch.device | str,
                 logger: logging.Logger | None = None) -> dict[str, Any]:
        """Predict on every validation image with ``model`` (unwrapped, not DDP) in eval mode, score it and return
        a flat record ``{"iteration", "segm/AP", "segm/AP50", "segm/AP75", "bbox/AP", ...}`` (percent).

        The model is put back into its previous mode and the global RNG states are restored afterwards.
        """
        from cuts3d.engine.predict import predict
        from cuts3d.eval import evaluate

        logger = logger or logging.getLogger(LOGGER_NAME)
        was_training = model.training
        with preserved_rng():
            model.eval()
            try:
                preds = predict(model, self.paths, self.ids, str(device), progress=False)
            finally:
                model.train(was_training)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        pred_file = self.out_dir / f"iter_{iteration:07d}.json"
        pred_file.write_text(json.dumps(preds))
        self.last_pred_file = pred_file
        record: dict[str, Any] = {"iteration": int(iteration)}
        if not preds:
            # pycocotools refuses an empty result list; no detections means every instance is missed: AP 0.
            logger.warning("evaluation at iteration %d: the model predicts nothing on %d validation images; AP = 0",
                           iteration, len(self.paths))
            for iou_type in ("segm", "bbox"):
                record.update({f"{iou_type}/{m}": 0.0 for m in EVAL_METRICS})
            return record
        result = evaluate(str(self.val_data), preds, iou_types=None, verbose=False)
        for iou_type in ("segm", "bbox"):
            if iou_type in result:
                record.update({f"{iou_type}/{m}": float(result[iou_type][m]) for m in EVAL_METRICS})
        for warning in result.info.get("warnings", []):
            logger.warning("evaluation at iteration %d: %s", iteration, warning)
        return record


def format_eval_line(record: Mapping[str, Any], n_images: int, pred_file: str | Path | None = None) -> str:
    """``evaluation at iteration N (K images): segm AP .. AP50 .. AP75 .. | bbox AP .. ...``."""
    groups = []
    for iou_type in ("segm", "bbox"):
        vals = [f"{m} {record[f'{iou_type}/{m}']:.2f}" for m in EVAL_METRICS if f"{iou_type}/{m}" in record]
        if vals:
            groups.append(f"{iou_type} " + " ".join(vals))
    where = f"; predictions {pred_file}" if pred_file is not None else ""
    return f"evaluation at iteration {record['iteration']} ({n_images} images): " + " | ".join(groups) + where


def close_all(writers: Sequence[JSONLinesWriter | TensorBoardWriter | ConsoleWriter]) -> None:
    """Close every writer."""
    for writer in writers:
        writer.close()


def run_validation(validator: Validator, model: torch.nn.Module, iteration: int, device: torch.device | str,
                   writers: Sequence[JSONLinesWriter | TensorBoardWriter | ConsoleWriter],
                   logger: logging.Logger) -> dict[str, Any]:
    """Evaluate ``model`` with ``validator`` and send the record to the file writers (metrics.jsonl, TensorBoard)
    and one summary line to ``logger`` (console, log.txt). Returns the record."""
    record = validator(model, iteration, device, logger)
    logger.info(format_eval_line(record, len(validator.paths), validator.last_pred_file))
    for writer in writers:
        if not isinstance(writer, ConsoleWriter):  # the summary line above is the readable form
            writer.write(record)
    return record
