"""Figure panels for pseudo-masks: instance overlays, depth maps and per-instance Spatial Confidence.

A figure is a grid of :class:`MapPanel` (an RGB image or a 2-D map with a colour bar) and :class:`MasksPanel`
(instances tinted and outlined over the image, numbered, with a legend of their scores), optionally followed by
a grid of per-instance Spatial Confidence maps (:class:`ConfidenceMaps`) with a shared colour bar and a caption.
Build it with :func:`scene_figure` and write it with :func:`save_figure`::

    fig = scene_figure([MapPanel("image", rgb), MasksPanel("CutS3D (3)", rgb, masks, scores)],
                       confidence=ConfidenceMaps(rgb, masks, maps), title="photo.jpg")
    save_figure(fig, "photo.png")

Instance colours come from :data:`PALETTE`, a fixed set of saturated colours; :func:`pick_colors` gives each
mask the unused palette colour farthest (CIELAB distance) from the image under and around it, so an outline
never disappears into the object it outlines. Outlines are drawn as vector contours (:data:`OUTLINE_PT` points
wide, with a dark halo) so their width does not depend on the image's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never needs a display
import matplotlib.patheffects as pe  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure, SubFigure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from scipy import ndimage  # noqa: E402

from cuts3d.masks.filters import upsample_nearest  # noqa: E402

#: (12, 3) float RGB in [0, 1]: saturated colours that are far apart from each other in CIELAB.
PALETTE: np.ndarray = np.array(
    [
        (1.00, 0.90, 0.00),  # yellow
        (0.20, 1.00, 0.20),  # lime
        (1.00, 0.10, 0.55),  # hot pink
        (0.00, 0.90, 1.00),  # cyan
        (1.00, 0.50, 0.00),  # orange
        (0.95, 0.00, 1.00),  # magenta
        (1.00, 1.00, 1.00),  # white
        (0.85, 0.00, 0.00),  # red
        (0.15, 0.30, 1.00),  # blue
        (0.00, 0.55, 0.30),  # dark green
        (0.55, 0.25, 0.05),  # brown
        (0.45, 0.10, 0.65),  # purple
    ]
)

#: Figure resolution (dots per inch) used by :func:`save_figure`.
DPI: int = 100
#: Width of one panel in inches (at :data:`DPI`: 520 px).
PANEL_INCH: float = 5.2
#: Width of an instance outline in points (about 2.8 px at :data:`DPI`), plus :data:`HALO_PT` of dark halo.
OUTLINE_PT: float = 2.0
HALO_PT: float = 1.5
#: Colour map of Spatial Confidence maps (0 = dark purple, 1 = yellow).
CONFIDENCE_CMAP: str = "plasma"
#: Banner shown in a figure's title when the backbone or depth weights are random.
RANDOM_WEIGHTS_BANNER: str = "RANDOM WEIGHTS: masks are meaningless (test mode)"
#: Caption under the per-instance Spatial Confidence maps.
CONFIDENCE_CAPTION: str = (
    "Spatial Confidence (SC) = fraction of the LocalCut thresholds whose cut kept the patch in the instance.\n"
    "1 (yellow) = certain; lower values (orange to purple) mark ill-defined 3D borders, where the cut depends on "
    "the threshold (floored at c_min).\n"
    "Grey image = outside the instance's region (no SC there). White outline = the instance's mask."
)


@dataclass
class MapPanel:
    """An RGB image or a 2-D map (drawn with a colour bar).

    Attributes:
        title: panel title.
        array: (H, W, 3) uint8 / float RGB in [0, 1], or (H, W) float map.
        cmap: colour map of a 2-D map (default ``viridis``).
        vmin, vmax: colour range of a 2-D map (default: its finite min / max).
        label: colour-bar label of a 2-D map.
    """

    title: str
    array: np.ndarray
    cmap: str | None = None
    vmin: float | None = None
    vmax: float | None = None
    label: str = ""


@dataclass
class MasksPanel:
    """Instances over an image: tinted, outlined, numbered 1..K in the given order, with a legend.

    Attributes:
        title: panel title.
        image: (H, W, 3) uint8 RGB.
        masks: K (H, W) bool masks, in discovery / rank order (instance k is labelled ``k``).
        scores: K floats shown in the legend as ``"k: score"`` (None: ``"k"`` only, e.g. ground truth).
        score_name: what the score is, shown in the legend title.
    """

    title: str
    image: np.ndarray
    masks: Sequence[np.ndarray]
    scores: Sequence[float] | None = None
    score_name: str = "score"


@dataclass
class ConfidenceMaps:
    """One Spatial Confidence map per instance (small multiples), the first ``max_maps`` of them.

    Attributes:
        image: (H, W, 3) uint8 RGB, shown in grey under each map.
        masks: K (H, W) bool instance masks.
        maps: K (h, w) float Spatial Confidence maps in [0, 1] (1 outside the instance's confidence region), or
            None for an instance without one (skipped).
        max_maps: at most this many maps are drawn; the figure says so when there are more.
        title: heading of the maps' section.
    """

    image: np.ndarray
    masks: Sequence[np.ndarray]
    maps: Sequence[np.ndarray | None]
    max_maps: int = 6
    title: str = "Spatial Confidence per instance"


# ----------------------------------------------------------------------------------------------- colours


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours.

    Args:
        rgb: (..., 3) float sRGB in [0, 1].

    Returns:
        (..., 3) float64 L*, a*, b* (L* in [0, 100]).
    """
    c = np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def color_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIELAB distance (Delta E 1976) between sRGB colours; (..., 3) floats in [0, 1], broadcast; about 2.3 is
    just noticeable, > 50 is a strong contrast."""
    return np.linalg.norm(rgb_to_lab(a) - rgb_to_lab(b), axis=-1)


def _as_float_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    return np.clip(image.astype(np.float64), 0.0, 1.0)


def pick_colors(image: np.ndarray, masks: Sequence[np.ndarray], palette: np.ndarray = PALETTE) -> np.ndarray:
    """A palette colour per mask that stands out from the image under it, distinct between masks.

    Masks are served in order: each takes the unused palette colour whose smallest CIELAB distance to the
    mean image colour inside the mask and to the mean colour of a thin ring just outside it is largest (so both
    the tint and the outline contrast with their surroundings). Colours repeat only when there are more masks
    than palette entries.

    Args:
        image: (H, W, 3) uint8 (or float in [0, 1]) RGB.
        masks: K (H, W) bool masks.
        palette: (P, 3) float RGB in [0, 1].

    Returns:
        (K, 3) float RGB in [0, 1].
    """
    img = _as_float_rgb(image)
    palette = np.asarray(palette, dtype=np.float64)
    fallback = img.reshape(-1, 3).mean(axis=0)
    chosen: list[np.ndarray] = []
    used: set[int] = set()
    for m in masks:
        m = np.asarray(m, dtype=bool)
        ring = ndimage.binary_dilation(m, iterations=3) & ~m if m.any() else m
        refs = [img[x].mean(axis=0) for x in (m, ring) if x.any()] or [fallback]
        score = np.min([color_distance(palette, r) for r in refs], axis=0)
        if len(used) == len(palette):
            used.clear()
        score[list(used)] = -np.inf
        k = int(np.argmax(score))
        used.add(k)
        chosen.append(palette[k])
    return np.array(chosen).reshape(len(chosen), 3)


def _text_color(rgb: np.ndarray) -> str:
    """Black or white, whichever is more legible on ``rgb``."""
    return "black" if rgb_to_lab(rgb)[0] > 55 else "white"


# ------------------------------------------------------------------------------------------ mask geometry


def overlay(image: np.ndarray, masks: Sequence[np.ndarray], colors: np.ndarray | None = None, alpha: float = 0.35) -> np.ndarray:
    """Image with each mask tinted in its colour (no outlines: :func:`draw_masks` adds vector outlines).

    Args:
        image: (H, W, 3) uint8 RGB.
        masks: K (H, W) bool masks, tinted in order.
        colors: (K, 3) float RGB in [0, 1] (default :func:`pick_colors`).
        alpha: tint strength in [0, 1].

    Returns:
        (H, W, 3) float64 RGB in [0, 1].
    """
    out = _as_float_rgb(image).copy()
    colors = pick_colors(image, masks) if colors is None else np.asarray(colors, dtype=np.float64)
    for m, c in zip(masks, colors):
        m = np.asarray(m, dtype=bool)
        out[m] = (1 - alpha) * out[m] + alpha * c
    return out


def label_point(mask: np.ndarray) -> tuple[float, float]:
    """(row, col) where to put a mask's number: its pixel farthest from the border (always inside the mask,
    unlike the centroid of a ring or a crescent); the image centre for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return (mask.shape[0] / 2, mask.shape[1] / 2)
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), mask.shape)
    return (float(r), float(c))


def _draw_outline(ax: Axes, mask: np.ndarray, color, linewidth: float = OUTLINE_PT, halo: str = "black") -> None:
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return
    # pad so masks touching the image border are closed there; shift the coordinates back
    padded = np.pad(m, 1).astype(np.float32)
    rows, cols = np.arange(-1, m.shape[0] + 1), np.arange(-1, m.shape[1] + 1)
    ax.contour(
        cols, rows, padded, levels=[0.5], colors=[color], linewidths=linewidth,
        path_effects=[pe.Stroke(linewidth=linewidth + 2 * HALO_PT, foreground=halo), pe.Normal()],
    )
    ax.set_xlim(-0.5, m.shape[1] - 0.5)
    ax.set_ylim(m.shape[0] - 0.5, -0.5)


# --------------------------------------------------------------------------------------------- drawing


def draw_map(ax: Axes, panel: MapPanel) -> None:
    """Draw a :class:`MapPanel` on ``ax`` (a 2-D map gets a colour bar)."""
    arr = np.asarray(panel.array)
    if arr.ndim == 3:
        ax.imshow(arr if arr.dtype == np.uint8 else np.clip(arr, 0, 1), interpolation="nearest")
    else:
        im = ax.imshow(arr, cmap=panel.cmap or "viridis", vmin=panel.vmin, vmax=panel.vmax, interpolation="nearest")
        bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        if panel.label:
            bar.set_label(panel.label)
    ax.set_title(panel.title, fontsize=12)
    ax.axis("off")


def draw_masks(ax: Axes, panel: MasksPanel, colors: np.ndarray | None = None) -> np.ndarray:
    """Draw a :class:`MasksPanel` on ``ax``: tint, outline (colour over a dark halo), number and legend.

    Returns:
        (K, 3) float RGB colours used, in the masks' order.
    """
    masks = [np.asarray(m, dtype=bool) for m in panel.masks]
    colors = pick_colors(panel.image, masks) if colors is None else np.asarray(colors, dtype=np.float64)
    ax.imshow(overlay(panel.image, masks, colors), interpolation="nearest")
    for k, (m, c) in enumerate(zip(masks, colors), start=1):
        _draw_outline(ax, m, c)
        r, col = label_point(m)
        ax.text(
            col, r, str(k), ha="center", va="center", fontsize=11, fontweight="bold", color=_text_color(c),
            bbox=dict(boxstyle="round,pad=0.25", fc=c, ec="black", lw=1.0),
        )
    ax.set_title(panel.title, fontsize=12)
    ax.axis("off")
    if masks:
        if panel.scores is not None:
            labels = [f"{k}: {s:.2f}" for k, s in enumerate(panel.scores, start=1)]
            heading = f"instance: {panel.score_name}"
        else:
            labels = [str(k) for k in range(1, len(masks) + 1)]
            heading = "instance"
        handles = [Patch(fc=c, ec="black", label=lab) for c, lab in zip(colors, labels)]
        ncol = min(len(handles), 4)
        # matplotlib fills the legend column by column; reorder so it reads 1 2 3 4 / 5 6 ... row by row
        handles = [h for j in range(ncol) for h in handles[j::ncol]]
        ax.legend(
            handles=handles, title=heading, loc="upper center", bbox_to_anchor=(0.5, -0.01),
            ncol=ncol, fontsize=10, title_fontsize=10, frameon=False,
            handlelength=1.2, columnspacing=1.2,
        )
    else:
        ax.text(0.5, -0.04, "no instances", transform=ax.transAxes, ha="center", va="top", fontsize=10)
    return colors


def draw_confidence_grid(fig: Figure | SubFigure, maps: ConfidenceMaps, ncols: int = 3) -> list[Axes]:
    """Per-instance Spatial Confidence maps in a grid on ``fig``, one axis per drawn map, with a shared 0..1
    colour bar, the section title (noting a cap) and :data:`CONFIDENCE_CAPTION`.

    Each map is shown over the grey image inside the instance's region (its mask and every patch with SC < 1),
    with the mask outlined; the axis title is ``"SC of instance k, mean s"`` (s = mean SC over the mask).

    Returns:
        The map axes, in instance order (at most ``maps.max_maps``).
    """
    items = [(k, m, sc) for k, (m, sc) in enumerate(zip(maps.masks, maps.maps), start=1) if sc is not None]
    shown = items[: max(0, maps.max_maps)]
    title = maps.title
    if len(items) > len(shown):
        title += f" (first {len(shown)} of {len(items)} instances shown)"
    fig.suptitle(title, fontsize=13)
    fig.supxlabel(CONFIDENCE_CAPTION, fontsize=10, ha="center")
    if not shown:
        ax = fig.subplots(1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, "no Spatial Confidence maps", ha="center", va="center", transform=ax.transAxes)
        return []
    ncols = max(1, ncols)
    nrows = -(-len(shown) // ncols)
    grid = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    img = _as_float_rgb(maps.image)
    grey = np.repeat((0.75 * img.mean(axis=2, keepdims=True) + 0.125), 3, axis=2)  # dimmed grey image
    cmap = plt.get_cmap(CONFIDENCE_CMAP)
    axes = []
    for ax, (k, m, sc) in zip(grid.flat, shown):
        m = np.asarray(m, dtype=bool)
        up = upsample_nearest(np.asarray(sc, dtype=np.float64), m.shape)
        region = m | (up < 1)
        rgba = np.zeros(m.shape + (4,))
        rgba[region] = cmap(np.clip(up[region], 0, 1))
        ax.imshow(grey, interpolation="nearest")
        ax.imshow(rgba, interpolation="nearest")
        _draw_outline(ax, m, "white")
        mean = float(up[m].mean()) if m.any() else float("nan")
        ax.set_title(f"SC of instance {k}, mean {mean:.2f}", fontsize=12)
        ax.axis("off")
        axes.append(ax)
    for ax in list(grid.flat)[len(shown):]:
        ax.axis("off")
    bar = fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(0, 1), cmap), ax=axes, fraction=0.04, pad=0.02)
    bar.set_label("Spatial Confidence (1 = certain)")
    return axes


def random_weights_banner(backbone_random: bool, depth_random: bool) -> str | None:
    """:data:`RANDOM_WEIGHTS_BANNER` naming what is random (e.g. ``"...  [random: backbone, depth]"``), or None
    when neither is."""
    parts = [name for name, flag in (("backbone", backbone_random), ("depth", depth_random)) if flag]
    return f"{RANDOM_WEIGHTS_BANNER}  [random: {', '.join(parts)}]" if parts else None


def scene_figure(
    panels: Sequence[MapPanel | MasksPanel],
    confidence: ConfidenceMaps | None = None,
    title: str = "",
    banner: str | None = None,
    ncols: int = 3,
    note: str = "",
) -> Figure:
    """A figure: ``panels`` in a grid of at most ``ncols`` per row, then the per-instance confidence maps.

    Args:
        panels: drawn row by row, each about :data:`PANEL_INCH` wide.
        confidence: per-instance Spatial Confidence maps, drawn below (None: none).
        title: figure title.
        banner: a warning drawn in bold red on a pale red box above the title (e.g. :func:`random_weights_banner`).
        ncols: panels per row.
        note: how to read the figure, written in the first empty grid cell (or under the panels).

    Returns:
        The figure (close it with ``plt.close(fig)``, or let :func:`save_figure` do it).
    """
    ncols = max(1, min(ncols, max(len(panels), 1)))
    nrows = max(1, -(-len(panels) // ncols))
    shapes = [np.asarray(p.array if isinstance(p, MapPanel) else p.image).shape[:2] for p in panels]
    aspect = max((h / w for h, w in shapes), default=1.0)  # height / width of the tallest panel
    row_h = PANEL_INCH * aspect + 1.3  # title and legend
    top_h = nrows * row_h + (0.9 if banner else 0.4)
    n_maps = 0 if confidence is None else min(confidence.max_maps, sum(sc is not None for sc in confidence.maps))
    map_cols = ncols  # same panel size as above
    if confidence is None:
        bottom_h = 0.0
    elif n_maps == 0:
        bottom_h = 2.2  # section title, "no maps" and the caption
    else:
        bottom_h = -(-n_maps // map_cols) * (PANEL_INCH * aspect + 0.5) + 1.4
    width = PANEL_INCH * ncols + 1.2
    fig = plt.figure(figsize=(width, top_h + bottom_h), layout="constrained")
    if confidence is not None:
        top, bottom = fig.subfigures(2, 1, height_ratios=[top_h, bottom_h])
    else:
        top, bottom = fig.subfigures(1, 1), None
    if banner:
        fig.suptitle(
            banner, color="#c00000", fontsize=16, fontweight="bold",
            bbox=dict(boxstyle="round,pad=0.4", fc="#ffe5e5", ec="#c00000", lw=2),
        )
    if title:
        top.suptitle(title, fontsize=14)
    grid = np.atleast_2d(top.subplots(nrows, ncols, squeeze=False))
    for ax, panel in zip(grid.flat, panels):
        if isinstance(panel, MasksPanel):
            draw_masks(ax, panel)
        else:
            draw_map(ax, panel)
    empty = list(grid.flat)[len(panels):]
    for ax in empty:
        ax.axis("off")
    if note and empty:
        empty[0].text(0.05, 0.5, note, transform=empty[0].transAxes, ha="left", va="center", fontsize=11, wrap=True,
                      bbox=dict(boxstyle="round,pad=0.6", fc="#f4f4f4", ec="#999999"))
    elif note:
        top.supxlabel(note, fontsize=11)
    if bottom is not None:
        draw_confidence_grid(bottom, confidence, ncols=map_cols)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG at ``dpi`` and close it; returns the path."""
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
