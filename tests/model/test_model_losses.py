"""DropLoss (spec 4.2), the Spatial Confidence mask loss (Eq. 6) and SC cropping into RoIs."""

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, roi_align

from cuts3d.model.losses import (
    crop_confidence_to_rois,
    droploss_cross_entropy,
    droploss_weights,
    sc_mask_loss,
)


def _boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_droploss_weight_threshold_is_inclusive():
    gt = _boxes([0, 0, 100, 1])  # area 100
    # Unit boxes inside the GT: IoU = 1/100 exactly (dropped), and 0 (disjoint, dropped).
    # Against a 99-wide GT a unit box has IoU 1/99 > 0.01 (kept).
    props = _boxes([0, 0, 1, 1], [200, 200, 201, 201])
    assert box_iou(props, gt)[0, 0].item() == torch.tensor(0.01, dtype=torch.float32).item()
    assert droploss_weights(props, gt).tolist() == [0.0, 0.0]
    assert droploss_weights(props, _boxes([0, 0, 99, 1])).tolist() == [1.0, 0.0]
    # The max over GT boxes decides: one overlapping GT is enough.
    assert droploss_weights(props, _boxes([0, 0, 99, 1], [500, 500, 600, 600])).tolist() == [1.0, 0.0]


def test_droploss_weights_without_gt_drop_everything():
    w = droploss_weights(_boxes([0, 0, 5, 5], [1, 1, 3, 3]), torch.zeros((0, 4)))
    assert w.tolist() == [0.0, 0.0]
    assert droploss_weights(torch.zeros((0, 4)), _boxes([0, 0, 1, 1])).shape == (0,)


def test_droploss_ce_equals_plain_ce_when_nothing_is_dropped():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 2, generator=g)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    props = _boxes(*[[i, i, i + 10, i + 10] for i in range(6)])
    gt = _boxes([0, 0, 15, 15])
    assert droploss_weights(props, gt).tolist() == [1.0] * 6
    torch.testing.assert_close(droploss_cross_entropy(logits, labels, props, gt), F.cross_entropy(logits, labels))


def test_droploss_ce_ignores_exactly_the_dropped_proposals_and_averages_over_all():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 2, generator=g, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 1])
    gt = _boxes([0, 0, 10, 10])
    props = _boxes([0, 0, 10, 10], [100, 100, 110, 110], [2, 2, 12, 12], [300, 300, 301, 301])
    loss = droploss_cross_entropy(logits, labels, props, gt)
    ce = F.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(loss, (ce[0] + ce[2]) / 4)  # denominator = all 4 proposals
    loss.backward()
    assert logits.grad[[1, 3]].abs().sum().item() == 0.0
    assert logits.grad[[0, 2]].abs().sum().item() > 0.0


def test_sc_loss_with_all_ones_map_is_plain_bce():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 28, 28, generator=g)
    targets = (torch.rand(3, 28, 28, generator=g) > 0.5).float()
    plain = F.binary_cross_entropy_with_logits(logits, targets)
    assert torch.equal(sc_mask_loss(logits, targets, None), plain)
    torch.testing.assert_close(sc_mask_loss(logits, targets, torch.ones(3, 28, 28)), plain, rtol=1e-6, atol=0)


def test_sc_loss_downweights_exactly_the_low_confidence_pixels():
    logits = torch.zeros(2, 4, 4, requires_grad=True)  # BCE = log 2 at every pixel
    targets = torch.zeros(2, 4, 4)
    targets[0, :2] = 1.0
    conf = torch.ones(2, 4, 4)
    conf[0, 0, :] = 0.5  # 4 pixels at half weight
    conf[1, 3, 3] = 0.5  # 1 pixel at half weight
    loss = sc_mask_loss(logits, targets, conf)
    n = 32
    expected = torch.log(torch.tensor(2.0)) * (n - 5 + 5 * 0.5) / n
    torch.testing.assert_close(loss, expected)
    loss.backward()
    # d/dlogit of BCE at 0 is sigmoid(0) - target = +-0.5; SC scales it per pixel.
    grad = logits.grad * n
    torch.testing.assert_close(grad[0, 0].abs(), torch.full((4,), 0.25))
    torch.testing.assert_close(grad[0, 1].abs(), torch.full((4,), 0.5))
    assert grad[1, 3, 3].abs().item() == 0.25 and grad[1, 3, 2].abs().item() == 0.5


def test_sc_loss_empty_is_zero_and_connected():
    logits = torch.zeros(0, 28, 28, requires_grad=True)
    loss = sc_mask_loss(logits, torch.zeros(0, 28, 28), torch.zeros(0, 28, 28))
    assert loss.item() == 0.0 and loss.requires_grad


def test_crop_keeps_ones_at_one_even_for_rois_leaving_the_image():
    conf = torch.ones(2, 20, 30)
    boxes = _boxes([-15, -10, 10, 12], [5, 5, 45, 40], [3, 4, 9, 8])
    out = crop_confidence_to_rois(conf, boxes, torch.tensor([0, 1, 1]))
    assert out.shape == (3, 28, 28) and out.dtype == torch.float32
    assert torch.equal(out, torch.ones(3, 28, 28))


def test_crop_matches_mask_target_geometry_inside_the_image():
    g = torch.Generator().manual_seed(3)
    conf = 0.5 + 0.5 * torch.rand(3, 24, 32, generator=g)
    boxes = _boxes([2.5, 1.0, 20.0, 18.5], [0, 0, 32, 24], [10.2, 4.4, 30.1, 22.7])
    matched = torch.tensor([2, 0, 1])
    out = crop_confidence_to_rois(conf, boxes, matched, size=14)
    rois = torch.cat([matched[:, None].float(), boxes], dim=1)
    # The mask target crop: RoIAlign (aligned=True) of the instance's map at the matched index.
    ref = roi_align(conf[:, None], rois, (14, 14), 1.0, 0, aligned=True)[:, 0]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # List input and a shared (H, W) map give the same crops.
    torch.testing.assert_close(crop_confidence_to_rois(list(conf), boxes, matched, size=14), out)
    shared = crop_confidence_to_rois(conf[1], boxes, matched, size=14)
    ref_shared = roi_align(conf[1][None, None].expand(1, 1, 24, 32), torch.cat([torch.zeros(3, 1), boxes], 1), (14, 14), 1.0, 0, aligned=True)
    torch.testing.assert_close(shared, ref_shared[:, 0], rtol=0, atol=1e-6)


def test_crop_low_confidence_patch_lands_where_the_mask_target_does():
    conf = torch.ones(1, 16, 16)
    conf[0, :, :8] = 0.5  # left half uncertain
    mask = torch.zeros(1, 16, 16)
    mask[0, :, :8] = 1.0
    boxes = _boxes([0, 0, 16, 16])
    sc = crop_confidence_to_rois(conf, boxes, torch.tensor([0]), size=8)
    tgt = roi_align(mask[:, None], torch.cat([torch.zeros(1, 1), boxes], 1), (8, 8), 1.0, 0, aligned=True)[:, 0]
    # SC = 1 - 0.5 * mask-crop, pixel for pixel.
    torch.testing.assert_close(sc, 1.0 - 0.5 * tgt)
    assert sc[0, :, :4].max().item() == 0.5 and sc[0, :, 4:].min().item() == 1.0
