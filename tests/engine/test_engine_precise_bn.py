"""Precise BN (detectron2's PreciseBN, CutLER TEST.PRECISE_BN): running stats = true average over N batches."""

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from cuts3d.engine.precise_bn import update_bn_stats
from cuts3d.model.detector import build_detector


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.rand(3, 96, 128, generator=g), torch.rand(3, 128, 96, generator=g)] for _ in range(n)]


def test_running_stats_are_the_average_of_the_batch_statistics():
    torch.manual_seed(0)
    model = build_detector("tiny", min_size=(64, 96), max_size=160)
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns
    seen = {id(bn): [] for bn in bns}

    def record(module, inputs):
        x = inputs[0].double()
        seen[id(module)].append((x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)))

    hooks = [bn.register_forward_pre_hook(record) for bn in bns]
    momenta = [bn.momentum for bn in bns]
    n = update_bn_stats(model, _batches(5), num_iters=4)
    for h in hooks:
        h.remove()
    assert n == len(bns)
    for bn in bns:
        stats = seen[id(bn)]
        assert len(stats) == 4  # the 5th batch is not used
        mean = torch.stack([m for m, _ in stats]).mean(0)
        var = torch.stack([v for _, v in stats]).mean(0)
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-4, atol=1e-5)
    assert [bn.momentum for bn in bns] == momenta  # training's momentum is back
    assert model.training


def test_too_few_batches_is_an_error_and_zero_iters_is_off():
    model = build_detector("tiny", min_size=(64,), max_size=160)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert update_bn_stats(model, _batches(2), num_iters=0) == 0
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    with pytest.raises(ValueError, match="precise_bn_iters"):
        update_bn_stats(model, _batches(2), num_iters=3)
