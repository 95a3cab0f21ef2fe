"""Precise BatchNorm statistics after training (detectron2's ``PreciseBN`` hook; CutLER: TEST.PRECISE_BN, 200 iters).

During training each BatchNorm layer's running mean / variance is an exponential average (momentum 0.1) of the
last few batches, taken while the weights were still moving. detectron2 (and CutLER's config, which enables it
with 200 iterations) re-estimates them at the end of training: the weights are frozen, the running statistics
reset, and the *true average* of the per-batch statistics over N training batches is taken. PyTorch's BatchNorm
computes exactly that cumulative average when ``momentum`` is None (factor 1 / batches seen), so that is how
it is done here. Only the backbone and the FPN hold BatchNorm layers (the heads have none), so the batches go
through the model's transform and backbone alone: no targets or losses are needed.

Usage::

    n = update_bn_stats(model, batches_of_images, num_iters=200)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def update_bn_stats(model: nn.Module, batches: Iterable[list[Tensor]], num_iters: int, use_amp: bool = False) -> int:
    """Recompute the running statistics of ``model``'s BatchNorm layers over ``num_iters`` batches.

    Args:
        model: a :class:`cuts3d.model.detector.CascadeMaskRCNN` (uses ``model.transform`` and ``model.backbone``),
            on the device the images are on. It is put in train mode (multi-scale resizing, batch statistics)
            for the passes and left in train mode.
        batches: lists of (3, H, W) float images in [0, 1] on the model's device; training batches (augmented)
            as detectron2 takes them from the training loader.
        num_iters: batches to average over; fewer batches than this is an error (the estimate would be
            silently worse than configured).
        use_amp: run the passes under CUDA autocast, as training did.

    Returns:
        The number of BatchNorm layers updated (0 if there are none: nothing is run).

    Raises:
        ValueError: ``batches`` ran out before ``num_iters``.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns or num_iters <= 0:
        return 0
    momenta = [bn.momentum for bn in bns]
    model.train()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: every batch weighs 1 / num_iters, as detectron2's update_bn_stats
    done = 0
    try:
        with torch.no_grad():
            for images in batches:
                if done == num_iters:
                    break
                device = images[0].device
                with torch.autocast(device.type, enabled=use_amp and device.type == "cuda"):
                    image_list, _ = model.transform(images)
                    model.backbone(image_list.tensors)
                done += 1
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
    if done < num_iters:
        raise ValueError(f"precise BN: only {done} of {num_iters} batches were available; lower precise_bn_iters")
    return len(bns)


def bn_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Copies of every BatchNorm buffer (running mean / var, batch count) by ``state_dict`` key.

    The final checkpoint keeps the training-time values beside the precise ones, so that ``--resume`` from it
    (training for longer) continues from exactly the state an uninterrupted run had at that iteration.
    """
    return {
        f"{name}.{buf}" if name else buf: tensor.detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm)
        for buf, tensor in module.named_buffers(recurse=False)
        if tensor is not None
    }
