"""Figure panels: contrasting instance colours, outlines, legends, per-instance SC maps, random-weights banner."""

from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pytest

from cuts3d.viz.panels import (
    DPI,
    PALETTE,
    RANDOM_WEIGHTS_BANNER,
    ConfidenceMaps,
    MapPanel,
    MasksPanel,
    color_distance,
    draw_confidence_grid,
    label_point,
    pick_colors,
    random_weights_banner,
    save_figure,
    scene_figure,
)

BLUE = np.array([30, 50, 230], dtype=np.uint8)


def _disc(shape, center, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def _texts(fig):
    """Every text string drawn in a figure (titles, suptitles, legends, labels), subfigures included."""
    return [t.get_text() for t in fig.findobj(plt.Text)]


def test_palette_colours_are_distinct():
    d = color_distance(PALETTE[:, None], PALETTE[None])
    np.fill_diagonal(d, np.inf)
    assert d.min() > 30  # Delta E: clearly different colours


def test_pick_colors_stand_out_from_blue_objects_and_from_each_other():
    image = np.empty((60, 80, 3), dtype=np.uint8)
    image[:] = (70, 80, 160)  # bluish background
    masks = [_disc(image.shape[:2], (15, 15 + 17 * i), 7) for i in range(4)]
    for m in masks:
        image[m] = BLUE  # blue objects, as in the synthetic scenes
    colors = pick_colors(image, masks)
    assert colors.shape == (4, 3) and colors.min() >= 0 and colors.max() <= 1
    assert (color_distance(colors, BLUE / 255.0) > 100).all()  # no blue on blue
    d = color_distance(colors[:, None], colors[None])
    np.fill_diagonal(d, np.inf)
    assert d.min() > 30
    # a yellow object gets a colour far from yellow, not the palette's first (yellow) entry
    yellow = np.full((20, 20, 3), (250, 230, 0), dtype=np.uint8)
    (c,) = pick_colors(yellow, [np.ones((20, 20), bool)])
    assert color_distance(c, np.array([250, 230, 0]) / 255.0) > 100


def test_pick_colors_repeats_only_after_the_palette_is_used_up():
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    masks = [np.zeros((10, 10), bool) for _ in range(len(PALETTE) + 2)]
    colors = pick_colors(image, masks)
    assert len({tuple(c) for c in colors[: len(PALETTE)]}) == len(PALETTE)
    assert pick_colors(image, []).shape == (0, 3)


def test_label_point_lies_inside_a_ring():
    ring = _disc((50, 50), (25, 25), 20) & ~_disc((50, 50), (25, 25), 10)
    r, c = label_point(ring)
    assert ring[int(r), int(c)]


def test_masks_are_outlined_in_their_colour_with_a_dark_halo_and_numbered_in_the_legend():
    image = np.full((120, 120, 3), 128, dtype=np.uint8)
    mask = np.zeros((120, 120), bool)
    mask[30:90, 30:90] = True
    fig = scene_figure([MasksPanel("masks", image, [mask], [0.93], "mean SC")])
    fig.canvas.draw()
    ax = next(a for a in fig.findobj(plt.Axes) if a.get_title() == "masks")
    (color,) = pick_colors(image, [mask])
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255.0
    height = pixels.shape[0]

    def at(x, y):  # pixel (row, col) of data point (x = column, y = row)
        px, py = ax.transData.transform((x, y))
        return int(round(height - py)), int(round(px))

    # crossing the left edge (x = 29.5) along row 60: colour line, with dark halo on both sides
    row, col = at(29.5, 60)
    line = pixels[row, col - 8 : col + 9]
    is_color = color_distance(line, color) < 10
    is_dark = line.max(axis=1) < 0.2
    assert is_color.sum() >= 2  # >= 2 px thick at the saved resolution
    first, last = np.flatnonzero(is_color)[[0, -1]]
    assert is_dark[:first].any() and is_dark[last + 1 :].any()
    # the other three edges too, and no outline colour far from the mask
    for x, y in [(89.5, 60), (60, 29.5), (60, 89.5)]:
        r, c = at(x, y)
        patch = pixels[r - 4 : r + 5, c - 4 : c + 5].reshape(-1, 3)
        assert (color_distance(patch, color) < 10).any()
    r, c = at(8, 8)
    assert color_distance(pixels[r, c], np.full(3, 128 / 255)) < 3
    texts = _texts(fig)
    assert "1: 0.93" in texts and "1" in texts  # legend entry and the label on the mask
    plt.close(fig)


def test_panels_are_large_and_laid_out_in_rows(tmp_path):
    rgb = np.zeros((240, 240, 3), dtype=np.uint8)
    panels = [MapPanel("image", rgb), MapPanel("depth", np.random.rand(240, 240), cmap="viridis")]
    panels += [MasksPanel(f"m{i}", rgb, []) for i in range(3)]
    fig = scene_figure(panels, ncols=3)
    fig.canvas.draw()
    boxes = {a.get_title(): a.get_window_extent() for a in fig.findobj(plt.Axes) if a.get_title()}
    assert min(b.width for b in boxes.values()) >= 480 / 100 * fig.dpi
    assert boxes["image"].y0 == pytest.approx(boxes["m0"].y0) and boxes["m1"].y0 < boxes["image"].y0  # 2 rows
    path = save_figure(fig, tmp_path / "f.png")
    from PIL import Image

    assert Image.open(path).size[0] >= 3 * 480 * DPI / 100


def test_confidence_grid_has_one_axis_per_mask_capped():
    image = np.full((64, 64, 3), 100, dtype=np.uint8)
    masks = [_disc((64, 64), (8 + 6 * i, 32), 4) for i in range(8)]
    maps = [np.full((8, 8), 0.5 + 0.05 * i, dtype=np.float32) for i in range(8)]
    maps[1] = None  # an instance without a map is skipped
    fig = plt.figure()
    axes = draw_confidence_grid(fig, ConfidenceMaps(image, masks, maps, max_maps=6))
    assert len(axes) == 6
    titles = [a.get_title() for a in axes]
    assert titles[0] == "SC of instance 1, mean 0.50" and titles[1].startswith("SC of instance 3, mean 0.60")
    assert "first 6 of 7 instances shown" in fig.get_suptitle()
    assert "Spatial Confidence" in fig._supxlabel.get_text() and "1 (yellow) = certain" in fig._supxlabel.get_text()
    plt.close(fig)
    # uncapped inside a full figure: one SC axis per map, and the caption
    fig = scene_figure([MapPanel("image", image)], ConfidenceMaps(image, masks[:2], maps[:1] + [maps[2]]))
    sc_axes = [a for a in fig.findobj(plt.Axes) if a.get_title().startswith("SC of instance")]
    assert len(sc_axes) == 2 and not any("shown" in t for t in _texts(fig))
    plt.close(fig)


def test_random_weights_banner_is_in_the_title_in_red():
    assert random_weights_banner(False, False) is None
    banner = random_weights_banner(True, False)
    assert banner.startswith(RANDOM_WEIGHTS_BANNER) and "backbone" in banner and "depth" not in banner
    assert RANDOM_WEIGHTS_BANNER == "RANDOM WEIGHTS: masks are meaningless (test mode)"
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    fig = scene_figure([MapPanel("image", rgb)], title="photo.jpg", banner=banner)
    (text,) = [t for t in fig.findobj(plt.Text) if RANDOM_WEIGHTS_BANNER in t.get_text()]
    r, g, b, _ = plt.matplotlib.colors.to_rgba(text.get_color())
    assert r > 0.6 and g < 0.2 and b < 0.2
    assert "photo.jpg" in _texts(fig)
    plt.close(fig)
    fig = scene_figure([MapPanel("image", rgb)], title="photo.jpg")
    assert not any(RANDOM_WEIGHTS_BANNER in t for t in _texts(fig))
    plt.close(fig)


def test_demo_detects_random_weights_from_config_and_run_meta():
    from cuts3d.demo import _figures_note, _random_weights

    cfg = SimpleNamespace(weights=None, depth_weights=None, depth="depth_anything_v2_small")
    assert _random_weights(cfg, {"backbone_weights": "https://x/dino.pth", "depth_weights": "org/model"}) == (False, False)
    assert _random_weights(cfg, {"backbone_weights": "random", "depth_weights": "random"}) == (True, True)
    assert _random_weights(SimpleNamespace(weights="none", depth_weights="none", depth="precomputed:/d"), {}) == (True, False)
    assert _figures_note(12, 4, 0) == "figures: 4 of 12 scenes drawn (scene_0000.png .. scene_0003.png); --figures N draws more"
    assert _figures_note(3, 5, 7) == "figures: 3 of 3 scenes drawn (scene_0007.png .. scene_0009.png)"


def test_legend_lists_instances_with_scores_row_by_row():
    image = np.full((40, 40, 3), 90, dtype=np.uint8)
    masks = [np.zeros((40, 40), bool) for _ in range(6)]
    for i, m in enumerate(masks):
        m[5 * i : 5 * i + 4, 2:10] = True
    fig = scene_figure([MasksPanel("m", image, masks, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], "mean SC")])
    (legend,) = [lg for lg in fig.findobj(plt.matplotlib.legend.Legend)]
    texts = [t.get_text() for t in legend.get_texts()]
    # 4 columns filled column by column: 1 5 | 2 6 | 3 | 4, which reads 1 2 3 4 / 5 6
    assert texts == ["1: 0.90", "5: 0.50", "2: 0.80", "6: 0.40", "3: 0.70", "4: 0.60"]
    assert legend.get_title().get_text() == "instance: mean SC"
    plt.close(fig)
