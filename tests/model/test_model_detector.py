"""Class-agnostic Cascade Mask R-CNN (spec 4.1) with DropLoss (4.2) and the SC mask loss (4.5), tiny backbone on CPU;
the R50 backbone's start weights (DINO RN50 by name, torchvision .pth or detectron2 .pkl, offline errors, sha256)."""

import io
import json
import math
import os
import pickle
import re
import shutil
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet50
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import box_iou

from cuts3d.engine.events import release_run_logger
from cuts3d.features.weights import KNOWN_SHA256, CheckpointError, WeightsUnavailableError, sha256_file
from cuts3d.model.backbone_weights import (
    BackboneWeightsRecord,
    _NumpyOnlyUnpickler,
    detectron2_to_torchvision_key,
    load_resnet50_weights,
    read_resnet50_state,
    resolve_resnet50_weights,
    torchvision_to_detectron2_key,
)
from cuts3d.model.cascade import CascadeRoIHeads, cascade_stage_losses
from cuts3d.model.detector import DetectorConfig, build_backbone, build_detector

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


def test_r50_backbone_loads_torchvision_layout_checkpoint_strictly(rn50_state, dino_file):
    model = build_detector(
        "r50_fpn", backbone_weights=str(dino_file), representation_size=64, mask_head_layers=(8,), **FAST
    )
    assert isinstance(model.roi_heads, CascadeRoIHeads)
    assert torch.equal(model.backbone.body.conv1.weight, rn50_state["conv1.weight"])
    assert torch.equal(model.backbone.body.layer4[2].bn3.running_var, rn50_state["layer4.2.bn3.running_var"])
    assert model.backbone_weights_record.sha256 == sha256_file(dino_file)
    assert all(p.requires_grad for p in model.backbone.body.parameters())  # FREEZE_AT 0
    # End to end on one small image: the R50-FPN feature names match the RPN/pooler levels.
    images, targets = _data()
    losses = model.train()(images[:1], targets[:1])
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
    det = model.eval()(images[:1])[0]
    assert det["masks"].shape[1:] == (1, H, W) and (det["labels"] == 1).all()


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


# ------------------------------------------------------------------ ResNet-50 start weights (issue 10 item 6)
# One random ResNet-50 state dict (~100 MB) for the whole module, saved once in each layout.

DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth"


@pytest.fixture(scope="module")
def rn50_state() -> dict[str, torch.Tensor]:
    """A torchvision ResNet-50 state dict as DINO ships it (no ``fc``), with non-default BatchNorm statistics."""
    torch.manual_seed(3)
    state = {k: v for k, v in resnet50(weights=None).state_dict().items() if not k.startswith("fc.")}
    g = torch.Generator().manual_seed(4)
    for k, v in state.items():
        if k.endswith(("running_mean", "running_var", "bn1.weight", "bn2.bias")):
            state[k] = torch.rand(v.shape, generator=g) + 0.5  # so a value left at its init would show
        elif k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
    return state


@pytest.fixture(scope="module")
def dino_file(rn50_state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rn50") / "dino_resnet50_pretrain.pth"
    torch.save(rn50_state, path)
    return path


@pytest.fixture(scope="module")
def d2_file(rn50_state, tmp_path_factory) -> Path:
    """The same weights as CutLER's dino_RN50_pretrain_d2_format.pkl stores them: numpy arrays, detectron2 keys."""
    path = tmp_path_factory.mktemp("rn50_d2") / "dino_RN50_pretrain_d2_format.pkl"
    model = {torchvision_to_detectron2_key(k): v.numpy() for k, v in rn50_state.items()
             if not k.endswith("num_batches_tracked")}  # detectron2's BatchNorm has no step counter
    with open(path, "wb") as fh:
        pickle.dump({"model": model, "__author__": "DINO", "matching_heuristics": True}, fh)
    return path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """No network and an empty torch hub cache under tmp_path; returns the URLs a download was tried for."""
    calls: list[str] = []

    def fail(url: str, dst: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return calls


def _body_state(weights: str | Path, **kw) -> tuple[dict[str, torch.Tensor], object]:
    fpn = build_backbone("r50_fpn", DetectorConfig(backbone_weights=str(weights), **kw))
    return fpn.body.state_dict(), fpn.weights_record


# Key pairs written out by hand by applying the rules of MoCo's detection/convert-pretrain-to-detectron2.py (which
# CutLER's README points to for dino_RN50_pretrain_d2_format.pkl): "stem." for keys outside the layers,
# layerN -> res{N+1}, bnK -> convK.norm, downsample.0 -> shortcut, downsample.1 -> shortcut.norm.
CUTLER_PAIRS = [
    ("conv1.weight", "stem.conv1.weight"),
    ("bn1.weight", "stem.conv1.norm.weight"),
    ("bn1.running_var", "stem.conv1.norm.running_var"),
    ("layer1.0.conv1.weight", "res2.0.conv1.weight"),
    ("layer1.0.bn3.bias", "res2.0.conv3.norm.bias"),
    ("layer1.0.downsample.0.weight", "res2.0.shortcut.weight"),
    ("layer1.0.downsample.1.running_mean", "res2.0.shortcut.norm.running_mean"),
    ("layer2.3.bn1.running_mean", "res3.3.conv1.norm.running_mean"),
    ("layer3.5.bn2.weight", "res4.5.conv2.norm.weight"),
    ("layer4.2.conv3.weight", "res5.2.conv3.weight"),
    ("layer4.0.downsample.1.num_batches_tracked", "res5.0.shortcut.norm.num_batches_tracked"),
]


def test_key_mapping_matches_cutlers_conversion_and_inverts(rn50_state):
    for tv, d2 in CUTLER_PAIRS:
        assert torchvision_to_detectron2_key(tv) == d2
        assert detectron2_to_torchvision_key(d2) == tv
    # A detectron2 model's own state dict prefixes the ResNet with backbone.bottom_up.; a third-party converter
    # also leaves the stem without "stem.".
    assert detectron2_to_torchvision_key("backbone.bottom_up.res3.0.shortcut.norm.weight") == "layer2.0.downsample.1.weight"
    assert detectron2_to_torchvision_key("backbone.bottom_up.conv1.norm.bias") == "bn1.bias"
    d2_keys = [torchvision_to_detectron2_key(k) for k in rn50_state]
    assert len(set(d2_keys)) == len(d2_keys)
    assert not [k for k in d2_keys if re.search(r"layer|bn\d|downsample", k) or not re.match(r"(stem|res[2-5])\.", k)]
    assert [detectron2_to_torchvision_key(k) for k in d2_keys] == list(rn50_state)


def test_dino_style_pth_loads_every_body_weight(rn50_state, dino_file):
    body, record = _body_state(dino_file)
    assert set(body) == set(rn50_state)  # the body has no fc (the FPN extractor drops it)
    assert all(torch.equal(body[k], v) for k, v in rn50_state.items())
    assert record == BackboneWeightsRecord("file", str(dino_file.resolve()), sha256_file(dino_file), None, "torchvision")


def test_detectron2_pkl_loads_identical_tensors(rn50_state, d2_file):
    model = resnet50(weights=None)
    record = load_resnet50_weights(model, d2_file)
    state = model.state_dict()
    for k, v in rn50_state.items():
        if k.endswith("num_batches_tracked"):
            assert int(state[k]) == 0  # absent from detectron2 files: the model's own counter stays
        else:
            assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
    assert record.layout == "detectron2" and record.sha256 == sha256_file(d2_file) and record.name == "file"


def test_pkl_unpickler_reads_only_numpy_arrays(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array(3, dtype=np.int64), "c": np.float64(2.5)}
    for protocol in (2, 4, 5):  # 2 stores bytes via _codecs.encode, 5 arrays via _frombuffer
        loaded = _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps({"model": arrays}, protocol=protocol))).load()["model"]
        assert all(np.array_equal(loaded[k], v) and loaded[k].dtype == np.asarray(v).dtype for k, v in arrays.items())

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())  # harmless if it ran; any callable but numpy's array builders must be refused

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"conv1.weight": Payload()}}))
    with pytest.raises(CheckpointError, match=r"posix\.getcwd is not allowed|os\.getcwd is not allowed|not allowed"):
        load_resnet50_weights(resnet50(weights=None), evil)


def test_wrong_files_are_checkpoint_errors_naming_file_and_fix(tmp_path, rn50_state, dino_file):
    fix = "backbone_weights=PATH"
    partial = tmp_path / "partial.pth"
    torch.save({"conv1.weight": rn50_state["conv1.weight"], "head.weight": torch.zeros(2)}, partial)
    with pytest.raises(CheckpointError, match="missing keys: bn1.bias.*unexpected keys: head.weight") as info:
        load_resnet50_weights(resnet50(weights=None), partial)
    assert str(partial) in str(info.value) and fix in str(info.value)

    full = tmp_path / "checkpoint.pth"  # DINO's training checkpoint, not the backbone-only file
    torch.save({"student": {"conv1.weight": torch.zeros(1)}, "teacher": {"conv1.weight": torch.zeros(1)}, "epoch": 3}, full)
    with pytest.raises(CheckpointError, match="full DINO training checkpoint.*backbone-only file.*dino_resnet50_pretrain.pth"):
        load_resnet50_weights(resnet50(weights=None), full)

    # Shapes are checked against the model (a small stand-in model keeps the file small).
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, wrong)
    with pytest.raises(CheckpointError, match=r"wrong shapes.*conv1.weight \(64, 3, 3, 3\) != \(64, 3, 7, 7\)"):
        read_resnet50_state(wrong, {"conv1.weight": torch.zeros(64, 3, 7, 7)})

    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot read .*garbage.pkl"):
        load_resnet50_weights(resnet50(weights=None), garbage)
    text = tmp_path / "text.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="weights-only torch file"):
        load_resnet50_weights(resnet50(weights=None), text)

    with pytest.raises(FileNotFoundError, match="neither a file nor one of dino_resnet50"):
        load_resnet50_weights(resnet50(weights=None), tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        _body_state(dino_file, backbone_weights_sha256="0" * 64)
    assert _body_state(dino_file, backbone_weights_sha256=sha256_file(dino_file).upper())[1].name == "file"
    with pytest.raises(ValueError, match="tiny backbone has no pretrained weights"):
        build_backbone("tiny", DetectorConfig(backbone_weights=str(dino_file)))
    with pytest.raises(ValueError, match="backbone_weights_sha256 was given"):
        build_backbone("r50_fpn", DetectorConfig(backbone_weights="none", backbone_weights_sha256="0" * 64))


def test_dino_resnet50_offline_is_weights_unavailable_naming_url(offline, tmp_path):
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("r50_fpn", DetectorConfig(backbone_weights="dino_resnet50"))
    message = str(info.value)
    assert offline == [DINO_URL] and DINO_URL in message
    assert "backbone_weights=PATH/dino_resnet50_pretrain.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "\n" not in message


def test_dino_resnet50_uses_the_cached_file_and_checks_known_hash(offline, tmp_path, rn50_state, dino_file, monkeypatch):
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    cached = cache / "dino_resnet50_pretrain.pth"
    try:
        os.link(dino_file, cached)  # no 100 MB copy when the file system allows it
    except OSError:
        shutil.copyfile(dino_file, cached)
    body, record = _body_state("dino_resnet50")
    assert offline == []  # no download tried
    assert all(torch.equal(body[k], v) for k, v in rn50_state.items())
    assert record == BackboneWeightsRecord("dino_resnet50", str(cached.resolve()), sha256_file(dino_file), DINO_URL,
                                           "torchvision")
    monkeypatch.setitem(KNOWN_SHA256, "dino_resnet50", "f" * 64)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        _body_state("dino_resnet50")
    monkeypatch.setitem(KNOWN_SHA256, "dino_resnet50", record.sha256)
    assert _body_state("dino_resnet50")[1].sha256 == record.sha256


def test_dino_resnet50_download_goes_to_the_cache_once(monkeypatch, tmp_path, dino_file):
    calls: list[str] = []

    def fake_download(url: str, dst: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        shutil.copyfile(dino_file, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    path, record = resolve_resnet50_weights("dino_resnet50", cache_dir=tmp_path)
    assert path == tmp_path / "dino_resnet50_pretrain.pth" and calls == [DINO_URL]
    assert resolve_resnet50_weights("dino_resnet50", cache_dir=tmp_path)[1] == record and calls == [DINO_URL]


def test_training_defaults_presets_and_paths_that_must_not_download(offline, tmp_path, dino_file, monkeypatch):
    from cuts3d.engine.cli_train import preset_or_file
    from cuts3d.engine.train import TrainConfig, build_model, resolve_train_config, train

    assert TrainConfig().backbone_weights == "dino_resnet50"
    for preset, expected in (("paper", "dino_resnet50"), ("one_gpu", "dino_resnet50"), ("tiny_cpu", "none")):
        assert resolve_train_config({}, [preset_or_file(preset)], []).backbone_weights == expected
    with pytest.raises(ValueError, match="tiny backbone has no pretrained weights.*backbone_weights=none"):
        resolve_train_config({}, [], ["backbone=tiny"])
    small = {"representation_size": 16, "mask_head_layers": [8]}
    # predict (backbone_weights None) and init_from (the checkpoint replaces every weight) build without a download.
    assert build_model(TrainConfig(backbone_weights=None, detector=small)).backbone_weights_record.name == "none"
    cfg = TrainConfig(init_from=str(tmp_path / "prev"), backbone_weights_sha256="0" * 64, detector=small)
    assert build_model(cfg).backbone_weights_record.name == "none" and offline == []

    # train() writes the start weights and their sha256 into the run folder before anything else happens.
    class Stop(Exception):
        pass

    def stop(*args: object, **kwargs: object) -> None:
        raise Stop

    monkeypatch.setattr(torch.optim, "SGD", stop)
    run = tmp_path / "run"
    from cuts3d.synthetic.detection import write_detection_set

    data, images = write_detection_set(tmp_path / "data", range(1))  # train() checks its inputs before any model
    cfg = TrainConfig(data=str(data), images=str(images), output=str(run), backbone_weights=str(dino_file),
                      device="cpu", detector=small)
    try:
        with pytest.raises(Stop):
            train(cfg)
    finally:
        release_run_logger()
    record = json.loads((run / "backbone_weights.json").read_text())
    assert record == {"backbone": "r50_fpn", "name": "file", "path": str(dino_file.resolve()),
                      "sha256": sha256_file(dino_file), "url": None, "layout": "torchvision", "init_from": None}


def test_train_cli_offline_exits_with_the_message_and_no_traceback(offline, tmp_path, capsys):
    from cuts3d.cli import main

    from cuts3d.synthetic.detection import write_detection_set

    data, images = write_detection_set(tmp_path / "data", range(1))  # the data is checked before the weights
    try:
        code = main(["train", "--data", str(data), "--images", str(images), "--output",
                     str(tmp_path / "run"), "--config", "one_gpu", "device=cpu"])
    finally:
        release_run_logger()
    err = capsys.readouterr().err  # the run's start-up log lines come first
    last = err.rstrip("\n").splitlines()[-1]
    assert code == 2 and last.startswith("cuts3d train: error: cannot download backbone weights from " + DINO_URL)
    assert "Traceback" not in err and "backbone_weights=PATH/dino_resnet50_pretrain.pth" in last
