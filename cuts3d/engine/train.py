"""Training the class-agnostic detector on pseudo-masks (paper Sec. 3.4 / 4; spec 4.1-4.5).

Usage::

    cuts3d train --data OUT/annotations.json --images DIR --output RUN [--config configs/one_gpu.yaml] [key=value ...]
    torchrun --nproc_per_node 8 -m cuts3d train --data ... --output RUN --config configs/paper.yaml

A straight loop: SGD with linear warm-up and step decay, gradient-norm clipping, AMP on CUDA, DDP when started by
torchrun (gloo on CPU, nccl on GPU). Augmentation (CutLER copy-paste with the CutS3D confident selection and
Spatial Confidence alpha blending, horizontal flip) runs in data-loader workers; multi-scale resizing is done by
the model's transform. Sample ``g`` of the run (iteration ``g // batch_size``) is a pure function of the seed and
``g``, and checkpoints hold the model, optimizer, schedule and torch RNG state, so ``--resume`` continues the exact
loss sequence.

What is logged where (cuts3d.engine.events; detectron2's EventStorage and writers): every iteration each loss
term, their sum, the iteration time and the data time go into histories; every ``log_period`` iterations (and at
the last) one record is written to ``RUN/metrics.jsonl`` (one JSON object per line, appended on resume),
TensorBoard (``RUN/tb``) and the console + ``RUN/log.txt`` as detectron2's line (``eta: .. iter: N total_loss: ..
loss_..: .. time: .. last_time: .. data_time: .. lr: .. max_mem: ..M``). ``total_loss``, each ``loss_*`` term,
``time`` and ``data_time`` are medians over the last ``log_window`` (20) iterations; ``loss`` is the raw
single-iteration total and ``last/<name>`` the raw value of each; the histories are saved in checkpoints, so a
resumed run writes the same records. Under DDP the loss terms are averaged over the processes. With ``val_data``
and ``eval_period`` > 0 the model is evaluated (COCO AP, rank 0, the others wait) every ``eval_period`` iterations
and after the last: predictions go to ``RUN/eval/iter_XXXXXXX.json``, ``segm/AP``, ``segm/AP50``, ``segm/AP75``
and ``bbox/...`` to metrics.jsonl (own lines with the iteration), TensorBoard and log.txt. ``RUN/log.txt`` also
holds the start-of-run messages and the resolved config (``RUN/config.yaml``).

Restarts (cuts3d.engine.runs, cuts3d.engine.checkpoints): before any model is built, the data JSON, every annotated
image, ``val_data``, ``init_from``, the run folder and the checkpoint to resume are checked (one-line errors).
``--resume`` refuses a checkpoint whose settings fingerprint differs from the new config (``force`` continues);
training into a folder holding a run needs ``overwrite``. Checkpoints are fsynced before their rename and carry a
sha256 sidecar that every load verifies.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from cuts3d.config_io import check_keys, coerce_fields, load_yaml_mapping, parse_overrides
from cuts3d.data.augment import ALPHA_MODES, copy_paste
from cuts3d.data.dataset import CONFIDENCE_ALIGNS, PseudoMaskDataset, to_detection_sample
from cuts3d.devices import resolve_device
from cuts3d.engine.checkpoints import (
    checkpoint_path,
    latest_checkpoint,
    load_weights_into,
    read_checkpoint,
    remove_stale_temps,
    save_checkpoint,
    sidecar_path,
)
from cuts3d.engine.events import (
    ConsoleWriter,
    JSONLinesWriter,
    MetricsRecorder,
    TensorBoardWriter,
    Validator,
    close_all,
    preserved_rng,
    release_run_logger,
    run_validation,
    setup_run_logger,
)
from cuts3d.engine.precise_bn import bn_buffers, update_bn_stats
from cuts3d.engine.runs import (
    TrainSetupError,
    check_training_data,
    check_writable,
    clear_run,
    existing_run_files,
    existing_run_message,
    fingerprint,
    fingerprint_differences,
    truncate_metrics,
)
from cuts3d.features.weights import CheckpointError
from cuts3d.model.backbone_weights import DEFAULT_RESNET50_WEIGHTS, is_random
from cuts3d.model.detector import build_detector
from cuts3d.pipeline.shards import atomic_write_text

PAPER_MIN_SIZES = (240, 320, 480, 640, 672, 704, 736, 768, 800, 1024)


@dataclass
class TrainConfig:
    """Settings of one training run (defaults: the paper's / CutLER's schedule, spec 4.1).

    Attributes:
        data, images, output: pseudo-mask COCO JSON, its image folder, the run folder.
        backbone: "r50_fpn" (paper) or "tiny" (CPU tests).
        backbone_weights: the ResNet-50's start: "dino_resnet50" (default, CutLER's: DINO's self-supervised RN50,
            downloaded once into the torch hub cache), a .pth (torchvision layout) or .pkl (detectron2 layout)
            file, or "none" / null for random weights (the only choice for "tiny"); see
            cuts3d.model.backbone_weights. backbone_weights_sha256: the file's expected sha256 (optional).
            Ignored with ``init_from``, whose checkpoint replaces every weight.
        init_from: a run folder or checkpoint to start from (self-training); only the model weights are taken.
        droploss, sc_loss: DropLoss (spec 4.2) and the Spatial Confidence mask loss (Eq. 6).
        copy_paste, confident_copy_paste, alpha_blend: copy-paste augmentation and the two CutS3D changes
            (Table 7's switches). copy_paste_scale: U[a, b] of the pasted image's scale (self-training: 0.5-1).
        alpha_mode: Eq. 5's alpha inside a pasted mask: ``"spatial"`` (the SC map, paper) or ``"scalar"`` (the
            mask's mean SC, constant over it); Table 5b.
        confidence_floor: None (SC maps as extracted) or c_min: SC <- max(SC, c_min) at load time (Table 5c:
            0.5 / 0.67 / 0.83); below the extraction's own floor is refused. Per-mask scores stay as extracted.
        confidence_align: ``"patch"`` (nearest-upsampled patch SC, paper) or ``"mask"`` (SC steps moved onto the
            pseudo-mask border); Table 5d.
        min_sizes, max_size: multi-scale training sizes (shorter side, sampled per image) and the cap.
        test_size: shorter side for prediction (detectron2 INPUT.MIN_SIZE_TEST; CutLER 800).
        batch_size: images per iteration over all processes (paper: 16).
        lr, momentum, weight_decay, max_iter, steps, gamma, warmup_iters, warmup_factor: the SGD schedule.
        weight_decay_norm: weight decay of normalisation layers' parameters (detectron2 WEIGHT_DECAY_NORM: 0).
        clip_grad: gradient-norm clip (1.0). clip_type: ``"norm"`` clips each parameter tensor's gradient norm
            separately, as detectron2's CLIP_TYPE "norm" does in CutLER's config; ``"full_model"`` clips the
            norm of all gradients together. amp: mixed precision on CUDA.
        checkpoint_period, log_period: in iterations. num_workers: data-loader workers per process.
        log_window: iterations the logged losses and times are median-smoothed over (detectron2: 20).
        val_data: COCO JSON (ground truth or pseudo-masks) to evaluate on during training; val_images: its image
            folder (None: ``images``). eval_period: evaluate every this many iterations and after the last
            (0: never).
        precise_bn_iters: after the last iteration, BatchNorm statistics are recomputed as the true average over
            this many training batches with the final weights (detectron2's PreciseBN; CutLER: 200); 0: off.
        seed: data order, augmentation and initialisation. device: "auto", "cpu", "cuda".
        detector: extra DetectorConfig fields (e.g. detections_per_img).
    """

    data: str = ""
    images: str = ""
    output: str = ""
    backbone: str = "r50_fpn"
    backbone_weights: str | None = DEFAULT_RESNET50_WEIGHTS
    backbone_weights_sha256: str | None = None
    init_from: str | None = None
    droploss: bool = True
    sc_loss: bool = True
    copy_paste: bool = True
    confident_copy_paste: bool = True
    alpha_blend: bool = True
    copy_paste_scale: tuple[float, float] = (0.3, 1.0)
    alpha_mode: str = "spatial"
    confidence_floor: float | None = None
    confidence_align: str = "patch"
    flip: bool = True
    min_sizes: tuple[int, ...] = PAPER_MIN_SIZES
    test_size: int = 800
    max_size: int = 1333
    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-5
    weight_decay_norm: float = 0.0
    max_iter: int = 160_000
    steps: tuple[int, ...] = (80_000,)
    gamma: float = 0.02
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    clip_grad: float = 1.0
    clip_type: str = "norm"
    amp: bool = True
    checkpoint_period: int = 5000
    log_period: int = 20
    log_window: int = 20
    val_data: str | None = None
    val_images: str | None = None
    eval_period: int = 0
    precise_bn_iters: int = 200
    num_workers: int = 4
    seed: int = 0
    device: str = "auto"
    detector: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("copy_paste_scale", "min_sizes", "steps"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        check_keys(cls, d, "training settings")
        d = coerce_fields(cls, d, "training settings")  # max_iter=abc is a one-line error, not a crash inside tqdm
        if d.get("clip_type", "norm") not in ("norm", "full_model"):
            raise ValueError(f"clip_type={d['clip_type']!r}; choose norm (per parameter, CutLER) or full_model")
        if d.get("backbone", cls.backbone) == "tiny" and not is_random(d.get("backbone_weights", cls.backbone_weights)):
            raise ValueError(f"backbone_weights={d.get('backbone_weights', cls.backbone_weights)!r} is a ResNet-50; "
                             "the tiny backbone has no pretrained weights: set backbone_weights=none (tiny_cpu does)")
        if int(d.get("eval_period", 0)) < 0 or int(d.get("log_window", 20)) < 1:
            raise ValueError(f"eval_period={d.get('eval_period')} must be >= 0 and log_window={d.get('log_window')} >= 1")
        if int(d.get("eval_period", 0)) > 0 and not d.get("val_data"):
            raise ValueError(f"eval_period={d['eval_period']} needs val_data=FILE (a COCO JSON to evaluate on)")
        if d.get("alpha_mode", "spatial") not in ALPHA_MODES:
            raise ValueError(f"alpha_mode={d['alpha_mode']!r}; choose one of {ALPHA_MODES} (Table 5b)")
        if d.get("confidence_align", "patch") not in CONFIDENCE_ALIGNS:
            raise ValueError(f"confidence_align={d['confidence_align']!r}; choose one of {CONFIDENCE_ALIGNS} (Table 5d)")
        floor = d.get("confidence_floor")
        if floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 1):
            raise ValueError(f"confidence_floor={floor!r}; choose null (maps as extracted) or a number in [0, 1] (Table 5c)")
        d = dict(d)
        if floor is not None:
            d["confidence_floor"] = float(floor)
        for k in ("copy_paste_scale", "min_sizes", "steps"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def resolve_train_config(base: dict[str, Any], files: Sequence[str | Path], overrides: Sequence[str]) -> TrainConfig:
    """Defaults < YAML files (in order) < flags (``base``) < ``key=value`` overrides."""
    values = TrainConfig().to_dict()
    for f in files:
        values.update(load_yaml_mapping(f, "training settings (presets: paper, one_gpu, tiny_cpu)"))
    values.update({k: v for k, v in base.items() if v is not None})
    for key, value in parse_overrides(overrides).items():
        if key.startswith("detector."):
            values["detector"][key[9:]] = value
        else:
            values[key] = value
    return TrainConfig.from_dict(values)


class TrainSamples(torch.utils.data.Dataset):
    """Augmented training samples, indexed by the run-wide sample number ``g``.

    Sample g uses image ``perm_e[g mod N]`` of epoch e = g // N (a seeded permutation) and, as the copy-paste
    source, the next image of that permutation (CutLER pastes from another image of the batch); all randomness
    comes from ``np.random.default_rng([seed, g])``, so any worker, process or resumed run makes the same sample.
    """

    def __init__(self, dataset: PseudoMaskDataset, cfg: TrainConfig):
        self.dataset = dataset
        self.cfg = cfg
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.cfg.max_iter * self.cfg.batch_size

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.dataset))}
        return self._perms[epoch]

    def __getitem__(self, g: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = len(self.dataset)
        perm = self._perm(g // n)
        item = self.dataset.load_numpy(int(perm[g % n]))
        rng = np.random.default_rng([self.cfg.seed, g, 1])
        if self.cfg.copy_paste and n > 1:
            src = self.dataset.load_numpy(int(perm[(g + 1) % n]))
            # Confident selection needs Spatial Confidence; masks without it (MaskCut's, a detector's predictions
            # in self-training) would all score 1.0 and "top-k" would mean "the first k": pick at random there,
            # as CutLER does.
            confident = self.cfg.confident_copy_paste and bool(np.all(src["has_confidence"]))
            image, masks, conf, info = copy_paste(
                item["image"], item["masks"], src["image"], src["masks"], src["confidence"], src["scores"], rng,
                scale=tuple(self.cfg.copy_paste_scale), confident=confident,
                alpha_blend=self.cfg.alpha_blend, target_conf=item["confidence"], alpha_mode=self.cfg.alpha_mode,
            )
            scores = np.concatenate([item["scores"][info["target_keep"]], src["scores"][info["pasted"]]])
            item = {**item, "image": image, "masks": masks, "confidence": conf, "scores": scores}
        if self.cfg.flip and rng.random() < 0.5:
            flip = np.ascontiguousarray  # torch cannot wrap the negative strides of a numpy flip
            item = {**item, "image": flip(item["image"][:, ::-1]), "masks": flip(item["masks"][:, :, ::-1]),
                    "confidence": flip(item["confidence"][:, :, ::-1])}
        return to_detection_sample(item)


def _collate(batch: list) -> tuple[list, list]:
    return [b[0] for b in batch], [b[1] for b in batch]


class _Range(torch.utils.data.Sampler):
    """Sample numbers of this process: iterations [start, max_iter), this rank's share of each batch."""

    def __init__(self, start_iter: int, cfg: TrainConfig, rank: int, world: int):
        self.start, self.cfg, self.rank, self.world = start_iter, cfg, rank, world

    def __iter__(self):
        per_rank = self.cfg.batch_size // self.world
        for it in range(self.start, self.cfg.max_iter):
            base = it * self.cfg.batch_size + self.rank * per_rank
            yield from range(base, base + per_rank)

    def __len__(self) -> int:
        return (self.cfg.max_iter - self.start) * (self.cfg.batch_size // self.world)


def use_sync_bn(device: torch.device, world_size: int) -> bool:
    """SyncBatchNorm for DDP on several GPUs, as CutLER; one device keeps BatchNorm (SyncBN would equal it) and
    CPU (gloo) runs keep it too (torch's SyncBatchNorm needs CUDA)."""
    return device.type == "cuda" and world_size > 1


_NORM_LAYERS = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.LocalResponseNorm)


def param_groups(model: torch.nn.Module, weight_decay: float, weight_decay_norm: float) -> list[dict[str, Any]]:
    """SGD parameter groups as detectron2's ``get_default_optimizer_params``: normalisation layers' weights and
    biases get ``weight_decay_norm`` (detectron2 and CutLER: 0), every other trainable parameter ``weight_decay``.
    A group without parameters is left out."""
    norm, other, seen = [], [], set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (norm if isinstance(module, _NORM_LAYERS) else other).append(p)
    groups = [{"params": other, "weight_decay": weight_decay}, {"params": norm, "weight_decay": weight_decay_norm}]
    return [g for g in groups if g["params"]]


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float, clip_type: str = "norm") -> None:
    """Gradient clipping as detectron2 does it (SOLVER.CLIP_GRADIENTS; CutLER: type "norm", value 1.0).

    ``"norm"``: every parameter tensor's gradient is scaled to norm <= ``max_norm`` on its own (detectron2's
    per-parameter clipper); ``"full_model"``: the norm of all gradients together. ``max_norm <= 0``: no clipping.
    """
    if max_norm <= 0:
        return
    if clip_type == "full_model":
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    elif clip_type == "norm":
        for p in params:
            if p.grad is not None:
                torch.nn.utils.clip_grad_norm_(p, max_norm)
    else:
        raise ValueError(f"unknown clip_type {clip_type!r}; choose norm or full_model")


def lr_factor(it: int, cfg: TrainConfig) -> float:
    """Linear warm-up from ``warmup_factor`` then x ``gamma`` at every step (detectron2's WarmupMultiStepLR)."""
    factor = cfg.gamma ** sum(it >= s for s in cfg.steps)
    if it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    # With init_from every weight comes from that checkpoint: fetching DINO's RN50 first would only cost a
    # download (or fail offline) for weights that are overwritten.
    random_init = bool(cfg.init_from) or is_random(cfg.backbone_weights)
    return build_detector(
        cfg.backbone, droploss=cfg.droploss, sc_loss=cfg.sc_loss, min_size=tuple(cfg.min_sizes),
        max_size=cfg.max_size, test_size=cfg.test_size, backbone_weights=None if random_init else cfg.backbone_weights,
        backbone_weights_sha256=None if random_init else cfg.backbone_weights_sha256, **cfg.detector,
    )


def _save(run: Path, it: int, model, optimizer, cfg: TrainConfig, run_fingerprint: dict[str, Any], final: bool = False,
          metrics_history: dict[str, Any] | None = None, training_bn: dict[str, torch.Tensor] | None = None) -> Path:
    """Checkpoint of iteration ``it`` (``model_final.pth`` with ``final``), durable, with its sha256 sidecar, and
    ``last_checkpoint`` pointing at it (see cuts3d.engine.checkpoints)."""
    state = {
        # BatchNorm buffers as training left them, when "model" holds precise-BN statistics (final checkpoint):
        # --resume restores these so that training on continues as an uninterrupted run would
        "training_bn_buffers": training_bn,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "iteration": it,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "config": cfg.to_dict(),
        # the settings that made these weights: --resume refuses to continue with others (cuts3d.engine.runs)
        "fingerprint": run_fingerprint,
        # the logged losses' smoothing windows (MetricsRecorder), so --resume writes the same records
        "metrics_history": metrics_history,
    }
    path = run / "model_final.pth" if final else checkpoint_path(run, it)
    save_checkpoint(state, path)
    return path


def resolve_checkpoint(source: str | Path) -> Path:
    """A run folder's last checkpoint, or ``source`` itself when it is a file.

    Raises:
        CheckpointError: a folder without ``last_checkpoint`` or one that names a missing file; a missing file.
    """
    source = Path(source)
    path = latest_checkpoint(source) if source.is_dir() else source
    if path is None:
        raise CheckpointError(f"no checkpoint in {source} (no {source / 'last_checkpoint'}); pass a run folder of a "
                              "finished `cuts3d train` or a model_XXXXXXX.pth file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run folder with last_checkpoint or a .pth file")
    return path


def model_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's state dict from a checkpoint of this package (``state["model"]``) or a plain state dict."""
    weights = state["model"] if "model" in state else state
    return weights


def load_model_weights(model: torch.nn.Module, source: str | Path) -> Path:
    """Model weights from a run folder (its last checkpoint) or a checkpoint file, verified against the sha256
    sidecar; strict key check. Returns the checkpoint read.

    Raises:
        CheckpointError: no checkpoint, a damaged one, or one of another architecture (names the file).
    """
    path = resolve_checkpoint(source)
    load_weights_into(model, model_weights(read_checkpoint(path)), path)
    return path


def _init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def _barrier(device: torch.device) -> None:
    # NCCL needs the caller's GPU named, or it guesses one from the global rank (wrong on multi-node runs).
    dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


def _evaluate(validator: Validator | None, model: torch.nn.Module, it: int, device: torch.device, writers: list,
              logger, world: int) -> None:
    """Validation on rank 0 (``validator`` is None elsewhere) with the unwrapped model; the others wait."""
    if validator is not None:
        run_validation(validator, model, it, device, writers, logger)
    if world > 1:
        _barrier(device)


def _check_validation(cfg: TrainConfig, run: Path) -> Validator:
    """The validator of ``val_data``, built before any model so a bad file stops the run at once."""
    try:
        return Validator(cfg.val_data, cfg.val_images or cfg.images, run / "eval")
    except FileNotFoundError as err:
        raise TrainSetupError(str(err)) from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        # json's errors, or a JSON that is not a COCO mapping with images (id, file_name)
        raise TrainSetupError(f"val_data {cfg.val_data}: not a COCO JSON with images ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); pass a ground-truth or "
                              "pseudo-mask COCO JSON") from None


def _preflight(cfg: TrainConfig, run: Path, resume: bool, force: bool, overwrite: bool,
               rank: int) -> tuple[dict[str, Any], dict[str, Any] | None, Path | None, list[str]]:
    """Every check that needs no model, in the order a user fixes things: data, run folder, checkpoints.

    Returns:
        (fingerprint of this run, the resumed checkpoint's state or None, that checkpoint's path or None, notes
        for log.txt).

    Raises:
        TrainSetupError, CheckpointError: one line naming the file and the fix.
    """
    if resume and overwrite:
        raise TrainSetupError(f"--resume continues {run} and --overwrite deletes it: pass only one of them")
    if force and not resume:
        raise TrainSetupError("--force continues a run whose settings changed and needs --resume; to start over in "
                              f"{run} use --overwrite")
    data_sha256 = check_training_data(cfg.data, cfg.images)
    run_fingerprint = fingerprint(cfg.to_dict(), data_sha256)
    notes: list[str] = []
    if cfg.eval_period > 0 and rank == 0:
        _check_validation(cfg, run)
    if cfg.init_from:
        resolve_checkpoint(cfg.init_from)  # read (and verified) after the model is built; here only its existence
    if not resume:
        found = existing_run_files(run)
        if found and not overwrite:
            raise TrainSetupError(existing_run_message(run, found))
        if found and rank == 0:
            notes.append(f"--overwrite: removed the earlier run's {', '.join(clear_run(run))}")
        return run_fingerprint, None, None, notes
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        also = " (it holds an earlier run's logs: add --overwrite)" if existing_run_files(run) else ""
        raise TrainSetupError(f"--resume: {run} has no checkpoint (no {run / 'last_checkpoint'}); drop --resume to "
                              f"start the run{also}")
    state = read_checkpoint(ckpt)
    if not sidecar_path(ckpt).is_file():
        notes.append(f"{ckpt.name} has no checksum file {sidecar_path(ckpt).name} (an older run): loaded unverified")
    if "iteration" not in state or "model" not in state or "optimizer" not in state:
        raise CheckpointError(f"checkpoint {ckpt} is not a training checkpoint (no model, optimizer or iteration); "
                              "--resume needs one written by `cuts3d train`")
    old = state.get("fingerprint") or fingerprint(state.get("config") or {}, None)
    diffs = fingerprint_differences(old, run_fingerprint)
    if diffs and not force:
        raise TrainSetupError(f"--resume: {ckpt} was trained with other settings ({'; '.join(diffs)}); resume with "
                              "the same settings, add --force to continue with the new ones, or --overwrite to start over")
    if diffs:
        notes.append(f"--force: continuing {ckpt.name} with changed settings: {'; '.join(diffs)}")
    return run_fingerprint, state, ckpt, notes


def train(cfg: TrainConfig, resume: bool = False, force: bool = False, overwrite: bool = False) -> Path:
    """Run (or resume) training; returns ``output/model_final.pth``.

    Args:
        cfg: the resolved settings.
        resume: continue from ``output/last_checkpoint``; refused when the checkpoint's settings fingerprint
            (cuts3d.engine.runs.fingerprint) differs from ``cfg``'s, unless ``force``.
        force: with ``resume``, continue although settings changed (the differences go to log.txt).
        overwrite: start over in a folder that holds a run: its checkpoints, metrics, TensorBoard, eval and log
            files are deleted first. Without it (and without ``resume``) such a folder is refused.

    Raises:
        TrainSetupError, CheckpointError, DeviceError: set-up problems, before any model is built (one line).
    """
    rank, world, local_rank = _init_distributed()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {world}")
    run = Path(cfg.output)
    device = resolve_device(cfg.device, local_rank)
    run_fingerprint, state, ckpt, notes = _preflight(cfg, run, resume, force, overwrite, rank)
    start = int(state["iteration"]) if state is not None else 0
    if rank == 0:
        check_writable(run)
        stale = remove_stale_temps(run)
        if stale:
            notes.append(f"removed temporary files a kill left: {', '.join(stale)}")
        if resume:
            # records after the checkpoint were written by the crashed run; the resumed one writes them again
            dropped = truncate_metrics(run / "metrics.jsonl", start)
            if dropped:
                notes.append(f"metrics.jsonl: dropped {dropped} record(s) after iteration {start} (re-run now)")
        atomic_write_text(run / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    logger = setup_run_logger(run, rank)
    logger.info("%s run %s on %s, %d process(es); resolved config: %s", "resuming" if resume else "starting",
                run, device, world, run / "config.yaml")
    for note in notes:
        logger.info(note)
    logger.debug("config:\n%s", yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())

    # The data set is read before the model (its JSON errors stop the run before weights are fetched).
    dataset = PseudoMaskDataset(cfg.data, cfg.images, confidence_floor=cfg.confidence_floor,
                                confidence_align=cfg.confidence_align)
    if not len(dataset):
        raise TrainSetupError(f"--data {cfg.data}: no image has a non-empty pseudo-mask; nothing to train on")
    validator = None
    if cfg.eval_period > 0 and rank == 0:
        validator = _check_validation(cfg, run)
        logger.info("validation on %s (%d images) every %d iterations and after the last", cfg.val_data,
                    len(validator.paths), cfg.eval_period)
    elif cfg.val_data and rank == 0:
        logger.warning("val_data is set but eval_period=0: no validation during training")

    torch.manual_seed(cfg.seed)
    # Under torchrun, each node's first process fetches the backbone weights while the others wait, so they read
    # the cached file instead of all downloading it at once.
    first = local_rank == 0
    if world > 1 and not first:
        _barrier(device)
    model = build_model(cfg).to(device)
    if world > 1 and first:
        _barrier(device)
    if rank == 0:
        record = {"backbone": cfg.backbone, **model.backbone_weights_record.to_dict(), "init_from": cfg.init_from}
        atomic_write_text(run / "backbone_weights.json", json.dumps(record, indent=2) + "\n")
        logger.info("backbone weights: %s", json.dumps(record))
    if cfg.init_from:
        logger.info("model weights from %s", load_model_weights(model, cfg.init_from))
    groups = param_groups(model, cfg.weight_decay, cfg.weight_decay_norm)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    recorder = MetricsRecorder(cfg.max_iter, cfg.log_window)
    if state is not None:
        load_weights_into(model, state["model"], ckpt)
        if state.get("training_bn_buffers"):
            model.load_state_dict({**model.state_dict(), **state["training_bn_buffers"]})
        optimizer.load_state_dict(state["optimizer"])
        if state.get("metrics_history"):
            recorder.load_state_dict(state["metrics_history"])
        logger.info("resumed from %s at iteration %d", ckpt, start)
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        state = None  # the optimizer holds its own copy; free the checkpoint's
    if use_sync_bn(device, world):
        # CutLER's RESNETS.NORM and FPN.NORM are SyncBN: statistics over all GPUs' images (2 per GPU otherwise)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model

    plain = dataset.images_without_confidence() if cfg.copy_paste and cfg.confident_copy_paste else 0
    if plain and rank == 0:
        logger.info(f"{plain} of {len(dataset)} images have pseudo-masks without Spatial Confidence (MaskCut's or "
                    "predictions): copy-paste picks their masks at random, as CutLER does, instead of by confidence")
    samples = TrainSamples(dataset, cfg)
    per_rank = cfg.batch_size // world
    loader = torch.utils.data.DataLoader(
        samples, batch_size=per_rank, sampler=_Range(start, cfg, rank, world), num_workers=cfg.num_workers,
        collate_fn=_collate, persistent_workers=cfg.num_workers > 0,
        # The loader draws its worker seed from this generator, not the global RNG that --resume restores.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    # TensorBoard hides the steps after the checkpoint that the crashed run logged (purge_step), as metrics.jsonl
    # was cut back above: a resumed run shows each iteration once.
    writers = [JSONLinesWriter(run / "metrics.jsonl"), TensorBoardWriter(run / "tb", purge_step=start + 1 if start else None),
               ConsoleWriter(logger)] if rank == 0 else []

    model.train()
    it = start
    bar = tqdm(total=cfg.max_iter, initial=start, desc="train", unit="it", disable=rank != 0)
    t_data = time.perf_counter()
    for images, targets in loader:
        data_time = time.perf_counter() - t_data
        for g in optimizer.param_groups:
            g["lr"] = cfg.lr * lr_factor(it, cfg)
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=use_amp):
            losses = ddp(images, targets)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"iteration {it}: loss is {total.detach().item()} ({ {k: float(v) for k, v in losses.items()} }); lower lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
        clip_gradients(params, cfg.clip_grad, cfg.clip_type)
        scaler.step(optimizer)
        scaler.update()
        it += 1
        # Every iteration's loss terms feed the smoothing windows (detectron2 puts them each iteration); averaged
        # over the processes as detectron2 does, with one device-to-host copy for all terms.
        term_values = torch.stack([v.detach().float() for v in losses.values()])
        if world > 1:
            dist.all_reduce(term_values)
            term_values /= world
        if rank == 0:
            recorder.put(it, dict(zip(losses, term_values.tolist())), optimizer.param_groups[0]["lr"],
                         time=time.perf_counter() - t_data, data_time=data_time)
            bar.update(1)
            if it % cfg.log_period == 0 or it == cfg.max_iter:
                max_mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
                record = recorder.record(max_mem_mb=max_mem)
                for w in writers:
                    w.write(record)
                bar.set_postfix(loss=f"{record['total_loss']:.3f}")
            if it % cfg.checkpoint_period == 0 and it < cfg.max_iter:
                _save(run, it, model, optimizer, cfg, run_fingerprint, metrics_history=recorder.state_dict())
        if cfg.eval_period > 0 and it % cfg.eval_period == 0 and it < cfg.max_iter:
            _evaluate(validator, model, it, device, writers, logger, world)
        t_data = time.perf_counter()
    if rank == 0:
        bar.close()
    training_bn = None
    if cfg.precise_bn_iters > 0 and it == cfg.max_iter:
        # CutLER's TEST.PRECISE_BN: true-average BN statistics of the final weights over fresh training batches
        # (sample numbers after the run's last, so a resumed run uses the same ones).
        extra = _Range(cfg.max_iter, dataclasses.replace(cfg, max_iter=cfg.max_iter + cfg.precise_bn_iters), rank, world)
        bn_loader = torch.utils.data.DataLoader(samples, batch_size=per_rank, sampler=extra, num_workers=cfg.num_workers,
                                                collate_fn=_collate)
        training_bn = bn_buffers(model)
        with preserved_rng():  # its random resizes must not move the RNG state the final checkpoint saves for --resume
            n_bn = update_bn_stats(model, ([im.to(device) for im in ims] for ims, _ in bn_loader), cfg.precise_bn_iters, use_amp)
        logger.info("precise BN: statistics of %d BatchNorm layers recomputed over %d batches", n_bn, cfg.precise_bn_iters)
    final = run / "model_final.pth"
    if rank == 0:
        final = _save(run, it, model, optimizer, cfg, run_fingerprint, final=True, metrics_history=recorder.state_dict(),
                      training_bn=training_bn)
        logger.info("wrote %s (iteration %d)", final, it)
    if cfg.eval_period > 0:
        _evaluate(validator, model, it, device, writers, logger, world)  # after the last iteration, as detectron2
    if rank == 0:
        close_all(writers)
    if world > 1:
        dist.barrier()
    release_run_logger(logger)
    return final
