"""Training-side ablation switches of Table 5b-d: config round trip, validation, and their way into the data."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

import cuts3d.engine.train as train_mod
from cuts3d.engine.cli_train import preset_or_file
from cuts3d.engine.train import TrainConfig, TrainSamples, resolve_train_config, train
from cuts3d.masks.coco import encode_confidence, mask_annotation

ABLATION = {"alpha_mode": "scalar", "confidence_floor": 0.67, "confidence_align": "mask"}


def _data(tmp_path, floor=0.5):
    """Two 32 x 32 images with two masks each, SC maps on a 4 x 4 patch grid, extraction floor in `info`."""
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    sc = np.ones((4, 4), np.float32)
    sc[1, 1:3] = 0.5
    for i in (1, 2):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 32, "height": 32})
        for j, sl in enumerate((np.s_[4:20, 4:20], np.s_[22:30, 2:30])):
            m = np.zeros((32, 32), bool)
            m[sl] = True
            anns.append(mask_annotation(m, i, 0.9 - 0.1 * j, id=len(anns) + 1, iscrowd=0,
                                        confidence=encode_confidence(sc), confidence_score=0.8))
    coco = {"info": {"confidence_floor": floor}, "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "object"}]}
    path = tmp_path / "pseudo.json"
    path.write_text(json.dumps(coco))
    return path, tmp_path / "imgs"


def test_defaults_are_the_papers_choices():
    cfg = TrainConfig()
    assert (cfg.alpha_mode, cfg.confidence_floor, cfg.confidence_align) == ("spatial", None, "patch")


def test_ablation_fields_round_trip_through_dict_yaml_and_overrides():
    cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **ABLATION})
    d = cfg.to_dict()
    assert {k: d[k] for k in ABLATION} == ABLATION
    assert TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(d, sort_keys=False))) == cfg  # config.yaml
    over = resolve_train_config({}, [], ["alpha_mode=scalar", "confidence_floor=0.67", "confidence_align=mask"])
    assert over == cfg
    assert resolve_train_config({}, [], ["confidence_floor=null"]).confidence_floor is None
    one = resolve_train_config({}, [], ["confidence_floor=1"]).confidence_floor
    assert one == 1.0 and isinstance(one, float)


@pytest.mark.parametrize("override, message", [
    ("alpha_mode=mean", r"alpha_mode='mean'; choose one of \('spatial', 'scalar'\)"),
    ("confidence_align=border", r"confidence_align='border'; choose one of \('patch', 'mask'\)"),
    ("confidence_floor=1.5", r"confidence_floor=1.5; choose null .* \[0, 1\]"),
    ("confidence_floor=true", r"confidence_floor=True is not a number or null"),
    ("confidence_floor=high", r"confidence_floor='high' is not a number or null"),
])
def test_bad_values_name_the_key_and_the_choices(override, message):
    with pytest.raises(ValueError, match=message):
        resolve_train_config({}, [], [override])


def test_train_samples_pass_alpha_mode_to_copy_paste(tmp_path, monkeypatch):
    path, images = _data(tmp_path)
    seen = []
    real = train_mod.copy_paste

    def spy(*args, **kwargs):
        seen.append(kwargs.get("alpha_mode"))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "copy_paste", spy)
    for mode in ("scalar", "spatial"):
        cfg = TrainConfig(data=str(path), images=str(images), alpha_mode=mode, max_iter=1, batch_size=2)
        TrainSamples(train_mod.PseudoMaskDataset(path, images), cfg)[0]
    assert seen == ["scalar", "spatial"]


def test_train_builds_the_dataset_with_floor_and_alignment(tmp_path, monkeypatch):
    path, images = _data(tmp_path)
    built = {}

    class Stop(Exception):
        pass

    def fake_dataset(json_path, image_root, **kwargs):
        built.update(kwargs)
        raise Stop  # the model and config.yaml are done by now; the loop itself is not under test here

    monkeypatch.setattr(train_mod, "PseudoMaskDataset", fake_dataset)
    cfg = resolve_train_config({"data": str(path), "images": str(images), "output": str(tmp_path / "run")},
                               [preset_or_file("tiny_cpu")], [f"{k}={v}" for k, v in ABLATION.items()])
    with pytest.raises(Stop):
        train(cfg)
    assert built == {"confidence_floor": 0.67, "confidence_align": "mask"}
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert TrainConfig.from_dict(saved) == cfg


def test_training_floor_below_the_extraction_floor_stops_the_run(tmp_path):
    path, images = _data(tmp_path, floor=0.67)
    cfg = resolve_train_config({"data": str(path), "images": str(images), "output": str(tmp_path / "run")},
                               [preset_or_file("tiny_cpu")], ["confidence_floor=0.5", "max_iter=1"])
    with pytest.raises(ValueError, match="extracted with floor 0.67.*re-extract"):
        train(cfg)


def test_cli_refuses_a_floor_below_the_extraction_floor_in_one_line(tmp_path, capsys):
    from cuts3d.cli import main

    path, images = _data(tmp_path, floor=0.67)
    args = ["train", "--data", str(path), "--images", str(images), "--output", str(tmp_path / "run"),
            "--config", "tiny_cpu", "confidence_floor=0.5", "max_iter=1"]
    assert main(args) == 2
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("cuts3d train: error:")]
    assert len(err) == 1 and "re-extract" in err[0]
    assert "Traceback" not in stderr
