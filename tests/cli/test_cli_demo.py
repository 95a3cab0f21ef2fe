"""`cuts3d demo --synthetic` end to end through the CLI, and the config file / override plumbing."""

import json

import pytest
import yaml

from cuts3d.cli import main
from cuts3d.config_io import parse_overrides
from cuts3d.cuts.config import load_cut_config


def test_demo_writes_figures_summary_and_config(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--synthetic", "--output", str(out), "--num-scenes", "3", "--figures", "2", "crf=false"]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["scene_0000.png", "scene_0001.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"maskcut", "cuts3d"}
    for v in summary.values():
        assert 0.0 <= v["AP"] <= v["AP50"] <= 100.0
    assert yaml.safe_load((out / "config.yaml").read_text())["crf"] is False
    printed = capsys.readouterr().out
    assert "| cuts3d |" in printed and "mask AP50" in printed
    note = "figures: 2 of 3 scenes drawn (scene_0000.png .. scene_0001.png); --figures N draws more"
    assert note in printed and note in (out / "summary.md").read_text()
    from PIL import Image

    assert Image.open(out / "scene_0000.png").size[0] >= 3 * 480  # three large panels per row


def test_config_file_and_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tau_knn: 0.1\nn_iters: 2\n")
    c = load_cut_config(cfg, ["n_iters=4", "sink=far"])
    assert (c.tau_knn, c.n_iters, c.sink) == (0.1, 4, "far")
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["tau_knn"])
    with pytest.raises(ValueError, match="unknown CutConfig keys"):
        load_cut_config(None, ["tau=1"])
    with pytest.raises(FileNotFoundError, match="--config"):
        load_cut_config(tmp_path / "missing.yaml")


def test_demo_on_real_images_writes_figures_and_json(tmp_path, monkeypatch):
    from pathlib import Path

    from matplotlib.text import Text

    import cuts3d.viz.panels as panels

    data = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "coco_val2017_dev128" / "images"
    if not data.is_dir():
        pytest.skip(f"real COCO images not found at {data}")
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(data.glob("*.jpg"))[:2]))
    out = tmp_path / "demo"
    args = ["demo", "--input", str(listing), "--output", str(out), "--backbone", "dino_vits16", "--weights", "none",
            "--depth-weights", "none", "size=128", "depth_overrides=tiny", "depth_input_size=56", "cut.crf=false"]
    figures_drawn = []
    real_scene_figure = panels.scene_figure

    def recording_scene_figure(*a, **kw):
        fig = real_scene_figure(*a, **kw)
        figures_drawn.append([t.get_text() for t in fig.findobj(Text)])
        return fig

    monkeypatch.setattr(panels, "scene_figure", recording_scene_figure)
    assert main(args) == 0
    # random backbone and depth weights: every figure's title carries the red warning banner
    assert len(figures_drawn) == 2
    assert all(any(panels.RANDOM_WEIGHTS_BANNER in t and "backbone, depth" in t for t in texts) for texts in figures_drawn)
    coco = json.loads((out / "annotations.json").read_text())
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == sorted(i["file_name"].rsplit(".", 1)[0] + ".png" for i in coco["images"]) and len(figures) == 2
