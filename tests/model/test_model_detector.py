"""Class-agnostic Cascade Mask R-CNN (spec 4.1) with DropLoss (4.2) and the SC mask loss (4.5), tiny backbone on CPU."""

import math
from collections.abc import Iterator

import pytest
import torch
from torchvision.models import resnet50
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import box_iou

from cuts3d.model.cascade import CascadeRoIHeads, cascade_stage_losses
from cuts3d.model.detector import build_detector, load_resnet50_weights

H, W = 112, 144  # resized to 128 x 164 by the transform (min_size 128), so targets and SC go through the resize
STAGE_KEYS = {f"loss_{kind}_stage{t}" for kind in ("cls", "box") for t in range(3)}
LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_loc", "loss_mask"} | STAGE_KEYS
# Small sample sizes keep RoIAlign's CPU backward cheap; the structure is the same as the full config.
FAST = {
    "min_size": 128,
    "max_size": 200,
    "pooler_sampling_ratio": 2,
    "batch_size_per_image": 128,
    "rpn_pre_nms_top_n_train": 300,
    "rpn_post_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 300,
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # The 2-core test machine is shared; intra-op threads oversubscribe it and make timings erratic.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(conf_value: float | None = 1.0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images with 1 and 2 bright rectangles (exact masks, tight boxes) on a dark noisy background."""
    g = torch.Generator().manual_seed(0)
    rects = [[(20, 25, 70, 85)], [(15, 15, 60, 50), (80, 40, 135, 100)]]
    images, targets = [], []
    for rs in rects:
        img = torch.rand(3, H, W, generator=g) * 0.2
        masks = torch.zeros(len(rs), H, W, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(rs):
            masks[k, y1:y2, x1:x2] = 1
            img[:, y1:y2, x1:x2] = 0.8
        t = {
            "boxes": torch.tensor(rs, dtype=torch.float32),
            "labels": torch.ones(len(rs), dtype=torch.int64),
            "masks": masks,
        }
        if conf_value is not None:
            t["confidence"] = torch.full((len(rs), H, W), conf_value)
        images.append(img)
        targets.append(t)
    return images, targets


def _model(**kw):
    torch.manual_seed(0)
    return build_detector("tiny", **{**FAST, **kw})


def test_train_forward_returns_all_finite_losses_and_every_head_gets_gradients():
    model = _model().train()
    images, targets = _data()
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    heads = {
        "backbone": model.backbone,
        "rpn": model.rpn.head,
        "mask_head": model.roi_heads.mask_head,
        "mask_predictor": model.roi_heads.mask_predictor,
    }
    for t in range(3):
        heads[f"box_head{t}"] = model.roi_heads.box_heads[t]
        heads[f"box_predictor{t}"] = model.roi_heads.box_predictors[t]
    for name, module in heads.items():
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name
    # The caller's targets are not modified (SC is popped from a copy).
    assert "confidence" in targets[0] and targets[0]["masks"].shape == (1, H, W)


def test_image_without_pseudo_masks_trains_without_error():
    model = _model(min_size=(112, 128)).train()  # multi-scale min size, as in spec 4.1
    images, targets = _data()
    targets[1] = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, H, W, dtype=torch.uint8),
        "confidence": torch.zeros(0, H, W),
    }
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_eval_outputs_have_torchvision_maskrcnn_format():
    model = _model(detections_per_img=7).eval()
    images, _ = _data()
    out = model(images)
    assert len(out) == 2
    for det in out:
        assert set(det) == {"boxes", "scores", "labels", "masks"}
        n = det["boxes"].shape[0]
        assert 0 < n <= 7
        assert det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert (det["labels"] == 1).all()
        assert det["masks"].shape == (n, 1, H, W)
        assert det["masks"].min() >= 0 and det["masks"].max() <= 1
        b = det["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= W).all() and (b[:, 3] <= H).all()
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()  # NMS output is score-sorted
    # A score threshold that rejects everything gives empty, well-shaped outputs.
    model.roi_heads.score_thresh = 1.0
    for det in model(images):
        assert det["boxes"].shape == (0, 4) and det["masks"].shape == (0, 1, H, W)


def test_each_stage_labels_with_its_own_iou_threshold():
    model = _model().train()
    images, targets = _data()
    model(images, targets)
    records = model.roi_heads.last_training_samples
    assert len(records) == 3
    # Ground truth in the transformed frame: boxes scale with the image (128 / 112).
    scale = 128 / H
    for thr, rec in zip((0.5, 0.6, 0.7), records):
        n_pos = 0
        for props, matched, labels, t in zip(rec["proposals"], rec["matched_idxs"], rec["labels"], targets):
            iou = box_iou(props, t["boxes"] * scale)
            pos = labels == 1
            n_pos += int(pos.sum())
            assert (iou[pos, matched[pos]] >= thr - 1e-3).all()
            assert (iou[~pos].max(dim=1).values < thr + 1e-3).all()
        assert n_pos > 0  # the appended GT boxes keep every stage populated
    assert records[0]["proposals"][0].shape[0] <= 128  # stage 0 samples batch_size_per_image


def test_droploss_ignores_proposals_far_from_every_gt_using_decoded_boxes():
    coder = det_utils.BoxCoder((10.0, 10.0, 5.0, 5.0))
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    near = torch.tensor([[12.0, 10.0, 50.0, 48.0], [0.0, 0.0, 30.0, 30.0]])
    far = torch.tensor([[200.0, 200.0, 240.0, 240.0]])

    def loss(props, labels, logits, deltas, droploss=True):
        matched = gt.expand(props.shape[0], 4)
        return cascade_stage_losses(logits, deltas, [props], [labels], [matched], [gt], coder, droploss=droploss)

    logits = torch.tensor([[0.3, 0.1], [0.2, 0.5], [1.0, -0.4]], requires_grad=True)
    deltas = torch.zeros(3, 4)
    labels = torch.tensor([1, 0, 0])
    cls_near, _ = loss(near, labels[:2], logits[:2], deltas[:2])
    cls_all, _ = loss(torch.cat([near, far]), labels, logits, deltas)
    # The far proposal adds nothing to the sum; it only enters the mean's denominator (spec 4.2).
    assert torch.allclose(cls_all * 3, cls_near * 2, atol=1e-6)
    cls_all.backward()
    assert logits.grad[2].abs().sum() == 0 and logits.grad[:2].abs().sum() > 0
    # Without DropLoss the far background proposal is a normal CE term.
    cls_plain, _ = loss(torch.cat([near, far]), labels, logits.detach(), deltas, droploss=False)
    assert not torch.allclose(cls_plain * 3, cls_near * 2)
    # The IoU test uses the *decoded* boxes: deltas moving the far proposal onto the GT keep its loss.
    to_gt = coder.encode_single(gt, far)
    moved = torch.cat([deltas[:2], to_gt])
    cls_moved, _ = loss(torch.cat([near, far]), labels, logits.detach(), moved)
    assert cls_moved * 3 > cls_near * 2 + 1e-3


def test_stage_box_loss_is_l1_on_positives_over_all_samples():
    coder = det_utils.BoxCoder((10.0, 10.0, 5.0, 5.0))
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    props = torch.tensor([[12.0, 10.0, 50.0, 48.0], [100.0, 100.0, 120.0, 120.0]])
    deltas = torch.zeros(2, 4)
    _, box = cascade_stage_losses(
        torch.zeros(2, 2), deltas, [props], [torch.tensor([1, 0])], [gt.expand(2, 4)], [gt], coder
    )
    expected = coder.encode_single(gt, props[:1]).abs().sum() / 2
    assert torch.allclose(box, expected)


def test_sc_loss_with_all_ones_confidence_equals_plain_bce_and_scales_with_sc():
    images, targets = _data(conf_value=1.0)
    _, targets_half = _data(conf_value=0.5)
    results = {}
    for name, sc_loss, tg in (("ones", True, targets), ("plain", False, targets), ("half", True, targets_half)):
        model = _model(sc_loss=sc_loss).train()
        torch.manual_seed(1)  # same RoI sampling in every run
        results[name] = model(images, tg)["loss_mask"].item()
    assert results["ones"] == pytest.approx(results["plain"], rel=1e-6)
    # Every positive RoI lies inside the image, so a constant SC of 0.5 halves Eq. 6 exactly.
    assert results["half"] == pytest.approx(0.5 * results["plain"], rel=1e-4)
    # No confidence in the targets at all -> plain BCE too.
    model = _model(sc_loss=True).train()
    torch.manual_seed(1)
    assert model(images, _data(conf_value=None)[1])["loss_mask"].item() == pytest.approx(results["plain"], rel=1e-6)


def test_confidence_is_resized_with_the_masks():
    model = _model().train()
    images, targets = _data()
    for t in targets:  # SC 0.5 on the top half of each mask, 1 elsewhere
        conf = torch.ones(t["masks"].shape)
        for k, (x1, y1, x2, y2) in enumerate(t["boxes"].int().tolist()):
            conf[k, y1 : (y1 + y2) // 2, x1:x2] = 0.5
        t["confidence"] = conf
    seen = []
    model.roi_heads.register_forward_pre_hook(lambda mod, args: seen.append(args[3]))
    model(images, targets)
    for t_in, t_out in zip(targets, seen[0]):
        assert t_out["confidence"].shape == t_out["masks"].shape  # (K, 128, 164): the transformed frame
        low = t_out["confidence"] < 1
        assert low.any() and (t_out["masks"][low] == 1).all()  # the low-SC area stays inside the mask
        frac_in = (t_in["confidence"] < 1).float().mean()
        assert (low.float().mean() - frac_in).abs() < 0.01  # nearest resize keeps the area fraction


def test_short_overfit_run_halves_the_total_loss():
    model = _model().train()
    images, targets = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = []
    for _ in range(60):
        total = sum(model(images, targets).values())
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # spec 4.1: gradient-norm clip 1.0
        opt.step()
        history.append(total.item())
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-5:]) / 5 < history[0] / 2, history


def test_unknown_config_key_and_backbone_raise():
    with pytest.raises(TypeError, match="unknown detector config"):
        build_detector("tiny", rpn_nms=0.7)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_detector("vit")


def test_r50_backbone_loads_torchvision_layout_checkpoint_strictly(tmp_path):
    torch.manual_seed(3)
    state = resnet50(weights=None).state_dict()
    ckpt = tmp_path / "rn50.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, ckpt)  # DINO-style: no classifier
    model = build_detector(
        "r50_fpn", backbone_weights=str(ckpt), representation_size=64, mask_head_layers=(8,), **FAST
    )
    assert isinstance(model.roi_heads, CascadeRoIHeads)
    assert torch.equal(model.backbone.body.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.backbone.body.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])
    assert all(p.requires_grad for p in model.backbone.body.parameters())  # FREEZE_AT 0
    # End to end on one small image: the R50-FPN feature names match the RPN/pooler levels.
    images, targets = _data()
    losses = model.train()(images[:1], targets[:1])
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
    det = model.eval()(images[:1])[0]
    assert det["masks"].shape[1:] == (1, H, W) and (det["labels"] == 1).all()

    bad = dict(state)
    bad["layer1.0.conv1.weightx"] = bad.pop("layer1.0.conv1.weight")
    torch.save(bad, ckpt)
    with pytest.raises(KeyError, match="missing"):
        load_resnet50_weights(resnet50(weights=None), ckpt)


def test_test_size_is_used_in_eval_and_training_sizes_in_training():
    import torch

    model = build_detector("tiny", min_size=(96, 128), max_size=4000, test_size=112)
    image = torch.rand(3, 50, 100)
    model.eval()
    batch, _ = model.transform([image])
    assert batch.image_sizes[0] == (112, 224)  # detectron2's MIN_SIZE_TEST, not the last training size (128)
    model.train()
    for _ in range(5):
        batch, _ = model.transform([image], [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}])
        assert batch.image_sizes[0][0] in (96, 128)
    torchvision_rule = build_detector("tiny", min_size=(96, 128), max_size=4000)
    torchvision_rule.eval()
    assert torchvision_rule.transform([image])[0].image_sizes[0] == (128, 256)
