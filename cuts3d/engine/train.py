"""Training the class-agnostic detector on pseudo-masks (paper Sec. 3.4 / 4; spec 4.1-4.5).

Usage::

    cuts3d train --data OUT/annotations.json --images DIR --output RUN [--config configs/one_gpu.yaml] [key=value ...]
    torchrun --nproc_per_node 8 -m cuts3d train --data ... --output RUN --config configs/paper.yaml

A straight loop: SGD with linear warm-up and step decay, gradient-norm clipping, AMP on CUDA, DDP when started by
torchrun (gloo on CPU, nccl on GPU). Augmentation (CutLER copy-paste with the CutS3D confident selection and
Spatial Confidence alpha blending, horizontal flip) runs in data-loader workers; multi-scale resizing is done by
the model's transform. Sample ``g`` of the run (iteration ``g // batch_size``) is a pure function of the seed and
``g``, and checkpoints hold the model, optimizer, schedule and torch RNG state, so ``--resume`` continues the exact
loss sequence. Scalars go to TensorBoard (``RUN/tb``) and ``RUN/metrics.jsonl``; ``RUN/config.yaml`` is the
resolved config.
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

from cuts3d.config_io import check_keys, load_yaml_mapping, parse_overrides
from cuts3d.data.augment import copy_paste
from cuts3d.data.dataset import PseudoMaskDataset, to_detection_sample
from cuts3d.model.detector import build_detector
from cuts3d.pipeline.shards import atomic_write_text

PAPER_MIN_SIZES = (240, 320, 480, 640, 672, 704, 736, 768, 800, 1024)


@dataclass
class TrainConfig:
    """Settings of one training run (defaults: the paper's / CutLER's schedule, spec 4.1).

    Attributes:
        data, images, output: pseudo-mask COCO JSON, its image folder, the run folder.
        backbone: "r50_fpn" (paper) or "tiny" (CPU tests). backbone_weights: self-supervised ResNet-50 file.
        init_from: a run folder or checkpoint to start from (self-training); only the model weights are taken.
        droploss, sc_loss: DropLoss (spec 4.2) and the Spatial Confidence mask loss (Eq. 6).
        copy_paste, confident_copy_paste, alpha_blend: copy-paste augmentation and the two CutS3D changes
            (Table 7's switches). copy_paste_scale: U[a, b] of the pasted image's scale (self-training: 0.5-1).
        min_sizes, max_size: multi-scale training sizes (shorter side, sampled per image) and the cap.
        test_size: shorter side for prediction (detectron2 INPUT.MIN_SIZE_TEST; CutLER 800).
        batch_size: images per iteration over all processes (paper: 16).
        lr, momentum, weight_decay, max_iter, steps, gamma, warmup_iters, warmup_factor: the SGD schedule.
        weight_decay_norm: weight decay of normalisation layers' parameters (detectron2 WEIGHT_DECAY_NORM: 0).
        clip_grad: gradient-norm clip (1.0). clip_type: ``"norm"`` clips each parameter tensor's gradient norm
            separately, as detectron2's CLIP_TYPE "norm" does in CutLER's config; ``"full_model"`` clips the
            norm of all gradients together. amp: mixed precision on CUDA.
        checkpoint_period, log_period: in iterations. num_workers: data-loader workers per process.
        seed: data order, augmentation and initialisation. device: "auto", "cpu", "cuda".
        detector: extra DetectorConfig fields (e.g. detections_per_img).
    """

    data: str = ""
    images: str = ""
    output: str = ""
    backbone: str = "r50_fpn"
    backbone_weights: str | None = None
    init_from: str | None = None
    droploss: bool = True
    sc_loss: bool = True
    copy_paste: bool = True
    confident_copy_paste: bool = True
    alpha_blend: bool = True
    copy_paste_scale: tuple[float, float] = (0.3, 1.0)
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
        if d.get("clip_type", "norm") not in ("norm", "full_model"):
            raise ValueError(f"clip_type={d['clip_type']!r}; choose norm (per parameter, CutLER) or full_model")
        d = dict(d)
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
                alpha_blend=self.cfg.alpha_blend, target_conf=item["confidence"],
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


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(cfg.device)


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    return build_detector(
        cfg.backbone, droploss=cfg.droploss, sc_loss=cfg.sc_loss, min_size=tuple(cfg.min_sizes),
        max_size=cfg.max_size, test_size=cfg.test_size, backbone_weights=cfg.backbone_weights, **cfg.detector,
    )


def checkpoint_path(run: Path, it: int) -> Path:
    return run / f"model_{it:07d}.pth"


def latest_checkpoint(run: Path) -> Path | None:
    """The checkpoint named in ``run/last_checkpoint``, if any."""
    marker = run / "last_checkpoint"
    if not marker.is_file():
        return None
    path = run / marker.read_text().strip()
    return path if path.is_file() else None


def _save(run: Path, it: int, model, optimizer, cfg: TrainConfig, final: bool = False) -> Path:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "iteration": it,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "config": cfg.to_dict(),
    }
    path = run / "model_final.pth" if final else checkpoint_path(run, it)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash never leaves a truncated checkpoint
    atomic_write_text(run / "last_checkpoint", path.name)
    return path


def load_model_weights(model: torch.nn.Module, source: str | Path) -> None:
    """Model weights from a run folder (its last checkpoint) or a checkpoint file; strict key check."""
    source = Path(source)
    path = latest_checkpoint(source) if source.is_dir() else source
    if path is None or not path.is_file():
        raise FileNotFoundError(f"no checkpoint found at {source}; pass a run folder with last_checkpoint or a .pth file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"] if "model" in state else state)


def _init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Run (or resume) training; returns ``output/model_final.pth``."""
    rank, world, local_rank = _init_distributed()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {world}")
    run = Path(cfg.output)
    device = _device(cfg, local_rank)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    if cfg.init_from:
        load_model_weights(model, cfg.init_from)
    groups = param_groups(model, cfg.weight_decay, cfg.weight_decay_norm)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    start = 0
    if resume:
        ckpt = latest_checkpoint(run)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {run} (missing {run / 'last_checkpoint'})")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    if use_sync_bn(device, world):
        # CutLER's RESNETS.NORM and FPN.NORM are SyncBN: statistics over all GPUs' images (2 per GPU otherwise)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model

    dataset = PseudoMaskDataset(cfg.data, cfg.images)
    plain = dataset.images_without_confidence() if cfg.copy_paste and cfg.confident_copy_paste else 0
    if plain and rank == 0:
        print(f"{plain} of {len(dataset)} images have pseudo-masks without Spatial Confidence (MaskCut's or predictions): "
              "copy-paste picks their masks at random, as CutLER does, instead of by confidence")
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
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb"))
    metrics = (run / "metrics.jsonl").open("a") if rank == 0 else None

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
        if rank == 0:
            bar.update(1)
            if it % cfg.log_period == 0 or it == cfg.max_iter:
                record = {"iteration": it, "loss": float(total.detach()), "lr": optimizer.param_groups[0]["lr"],
                          "data_time": data_time, **{k: float(v.detach()) for k, v in losses.items()}}
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                for k, v in record.items():
                    if k != "iteration":
                        writer.add_scalar(k, v, it)
                bar.set_postfix(loss=f"{float(total.detach()):.3f}")
            if it % cfg.checkpoint_period == 0 and it < cfg.max_iter:
                _save(run, it, model, optimizer, cfg)
        t_data = time.perf_counter()
    final = run / "model_final.pth"
    if rank == 0:
        bar.close()
        final = _save(run, it, model, optimizer, cfg, final=True)
        writer.close()
        metrics.close()
    if world > 1:
        dist.barrier()
    return final
