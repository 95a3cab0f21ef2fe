"""Scene family ``blobs``: ellipsoids over a ground plane (the repository's first generator).

Usage::

    from cuts3d.synthetic.blobs import make_scene, touching_pair_scene
    scene = make_scene(seed=3)                 # random scene, seeded
    scene.features, scene.depth, scene.image, scene.masks

A scene is rendered with a z-buffer at pixel resolution (grid * patch pixels a side): a ground-plane background
whose depth grows towards the top of the image and whose semantics vary smoothly (a mixture of "stuff"
prototypes, so no background region forms one large cluster), plus ellipsoidal objects at smaller depths. Several objects share a class, and at
least one same-class pair overlaps in 2D while sitting at clearly different depths: the case that separates
CutS3D's LocalCut from MaskCut's 2D connected components (paper Sec. 3.2).

Patch features mix class prototypes by the pixel coverage of each patch, plus a small per-instance offset and
Gaussian noise, so NCut sees semantic groups but cannot tell same-class instances apart. The RGB image uses
per-class colours (same-class instances look alike) with noise. Depth carries a mild per-object slope.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cuts3d.synthetic.scene import Scene


@dataclass
class _Object:
    cls: int
    cy: float
    cx: float
    ry: float
    rx: float
    depth: float
    slope_y: float
    slope_x: float


# Number of background "stuff" prototypes mixed by a smooth random field: the background is semantically
# varied (no single large cluster), so NCut's most coherent group is an object class, as in real photos.
_N_BACKGROUND = 6


def _render(objects: list[_Object], size: int, backdrop: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer render: returns depth (H, W) and label (H, W) (-1 background, else object index).

    ``backdrop = (horizon, ratio)`` puts a far backdrop (sky, distant buildings) above the image row fraction
    ``horizon``, at ``ratio`` times the ground plane's farthest depth.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    # Background: a ground plane, depth 1.0 at the top to 0.65 at the bottom, with a gentle sideways tilt.
    depth = 1.0 - 0.35 * yy + 0.03 * (xx - 0.5)
    if backdrop is not None:
        horizon, ratio = backdrop
        depth[yy < horizon] = ratio * depth.max()
    label = np.full((size, size), -1, dtype=np.int64)
    for idx, o in enumerate(objects):
        inside = ((yy - o.cy) / o.ry) ** 2 + ((xx - o.cx) / o.rx) ** 2 <= 1.0
        z = o.depth + o.slope_y * (yy - o.cy) + o.slope_x * (xx - o.cx)
        closer = inside & (z < depth)
        depth[closer] = z[closer]
        label[closer] = idx
    return depth, label


def _smooth_weights(rng: np.random.Generator, k: int, size: int, scale: float) -> np.ndarray:
    """(size, size, k) convex weights varying smoothly in space (softmax of blurred noise)."""
    field = ndimage.gaussian_filter(rng.standard_normal((k, size, size)), sigma=(0, scale * size, scale * size), mode="wrap")
    field /= field.std(axis=(1, 2), keepdims=True) + 1e-12
    e = np.exp(1.0 * (field - field.max(axis=0, keepdims=True)))
    return (e / e.sum(axis=0, keepdims=True)).transpose(1, 2, 0)


def _scene_from_objects(
    objects: list[_Object],
    rng: np.random.Generator,
    grid: int,
    patch_size: int,
    channels: int,
    n_classes: int,
    feature_noise: float,
    background_noise: float,
    instance_offset: float,
    min_area: float,
    depth_blur: float,
    backdrop: tuple[float, float] | None = None,
) -> Scene:
    size = grid * patch_size
    depth, label = _render(objects, size, backdrop)
    # Monocular depth estimators blur depth edges; a crisp z-buffer would make every 3D border trivial.
    blurred_depth = ndimage.gaussian_filter(depth, sigma=depth_blur * patch_size, mode="nearest") if depth_blur > 0 else depth

    # Visible masks; objects that are (almost) fully hidden are not ground truth.
    masks, classes = [], []
    for idx, o in enumerate(objects):
        m = label == idx
        if m.mean() >= min_area:
            masks.append(m)
            classes.append(o.cls)

    # Features: background = smooth mixture of stuff prototypes; object = class prototype + instance offset.
    bg_protos = _unit_rows(rng.standard_normal((_N_BACKGROUND, channels)))
    cls_protos = _unit_rows(rng.standard_normal((n_classes, channels)))
    offsets = instance_offset * rng.standard_normal((len(objects), channels)) / np.sqrt(channels)
    object_rows = np.array([cls_protos[o.cls] for o in objects]).reshape(len(objects), channels) + offsets
    bg_weights = _smooth_weights(rng, _N_BACKGROUND, grid, 0.15)
    blocks = label.reshape(grid, patch_size, grid, patch_size).transpose(0, 2, 1, 3).reshape(grid, grid, -1)
    coverage = np.stack([(blocks == idx).mean(axis=2) for idx in range(len(objects))], axis=2) if objects else np.zeros((grid, grid, 0))
    feats = (1.0 - coverage.sum(axis=2, keepdims=True)) * (bg_weights @ bg_protos) + coverage @ object_rows
    # Background clutter is noisier than objects: DINO features of objects are tight clusters.
    noise = feature_noise * (1.0 + (background_noise - 1.0) * (1.0 - coverage.sum(axis=2, keepdims=True)))
    feats += noise * rng.standard_normal(feats.shape) / np.sqrt(channels)
    features = feats.transpose(2, 0, 1).astype(np.float32)

    # RGB: smooth background colours, one colour per class (instances of a class look alike), shading, noise.
    bg_palette = rng.integers(40, 216, size=(_N_BACKGROUND, 3)).astype(np.float64)
    cls_palette = rng.integers(30, 226, size=(n_classes, 3)).astype(np.float64)
    rgb = _smooth_weights(rng, _N_BACKGROUND, size, 0.15) @ bg_palette
    for idx, o in enumerate(objects):
        rgb[label == idx] = cls_palette[o.cls] + rng.normal(0, 6, size=3)
    rgb *= (1.15 - 0.3 * np.minimum(depth, 1.0))[..., None]
    rgb += rng.normal(0, 4, size=rgb.shape)
    image = np.clip(rgb, 0, 255).astype(np.uint8)

    masks_arr = np.stack(masks) if masks else np.zeros((0, size, size), dtype=bool)
    return Scene(features, blurred_depth.astype(np.float32), image, masks_arr, np.asarray(classes, dtype=np.int64), patch_size)


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def make_scene(
    seed: int,
    grid: int = 30,
    patch_size: int = 8,
    channels: int = 64,
    n_classes: int = 2,
    n_objects: tuple[int, int] = (2, 4),
    feature_noise: float = 0.8,
    background_noise: float = 2.0,
    instance_offset: float = 0.3,
    min_depth_gap: float = 0.15,
    min_area: float = 0.01,
    depth_blur: float = 0.25,
    far_backdrop: bool = False,
) -> Scene:
    """A random scene with at least one touching same-class pair at different depths.

    Args:
        seed: random seed; the same seed gives the same scene.
        grid: patches per side (h = w = grid); the image is grid * patch_size pixels a side.
        patch_size: pixels per patch side.
        channels: feature dimension C.
        n_classes: number of object classes.
        n_objects: inclusive range of the number of objects (>= 2: the first two form the touching pair).
        feature_noise: standard deviation of the object feature noise relative to a unit class prototype.
        background_noise: background noise as a multiple of ``feature_noise`` (clutter is less coherent).
        instance_offset: size of the per-instance feature offset relative to a unit prototype.
        min_depth_gap: minimum depth difference of the touching pair (scene units, background spans 0.35).
        min_area: objects whose visible area is below this image fraction are not ground truth.
        depth_blur: standard deviation of the Gaussian blur of the depth map, in patches (as a monocular
            depth estimator softens depth edges); 0 keeps the crisp z-buffer.
        far_backdrop: put a backdrop 20-60 times deeper than the ground plane above a random horizon (15-35 %
            of the image height), as metric depth and inverted disparity give for sky or a distant street.
            Objects, features and image are the same as without it (the random draws come last).
    """
    rng = np.random.default_rng(seed)
    count = int(rng.integers(max(2, n_objects[0]), max(2, n_objects[1]) + 1))
    objects: list[_Object] = []

    def random_object(cls: int) -> _Object:
        return _Object(
            cls=cls,
            cy=float(rng.uniform(0.3, 0.75)),
            cx=float(rng.uniform(0.2, 0.8)),
            ry=float(rng.uniform(0.09, 0.18)),
            rx=float(rng.uniform(0.08, 0.16)),
            depth=float(rng.uniform(0.2, 0.55)),
            slope_y=float(rng.uniform(-0.08, 0.08)),
            slope_x=float(rng.uniform(-0.08, 0.08)),
        )

    first_cls = int(rng.integers(n_classes))
    a = random_object(first_cls)
    b = random_object(first_cls)
    # Place b so that it overlaps a in 2D: centre at ~0.85 of the sum of radii along a random direction.
    angle = rng.uniform(0, 2 * np.pi)
    reach = 0.85 * (np.hypot(a.ry * np.sin(angle), a.rx * np.cos(angle)) + np.hypot(b.ry * np.sin(angle), b.rx * np.cos(angle)))
    b.cy = float(np.clip(a.cy + reach * np.sin(angle), 0.12, 0.88))
    b.cx = float(np.clip(a.cx + reach * np.cos(angle), 0.12, 0.88))
    gap = rng.uniform(min_depth_gap, min_depth_gap + 0.15)
    b.depth = a.depth + gap if a.depth + gap <= 0.6 else a.depth - gap
    objects += [a, b]
    for _ in range(count - 2):
        objects.append(random_object(int(rng.integers(n_classes))))
    backdrop = None
    if far_backdrop:
        # A separate stream, so the objects, features and colours equal those of the ordinary scene.
        far_rng = np.random.default_rng([seed, 1])
        backdrop = (float(far_rng.uniform(0.15, 0.35)), float(far_rng.uniform(20.0, 60.0)))
    return _scene_from_objects(
        objects, rng, grid, patch_size, channels, n_classes, feature_noise, background_noise, instance_offset, min_area, depth_blur, backdrop
    )


def touching_pair_scene(
    seed: int = 0,
    grid: int = 30,
    patch_size: int = 8,
    channels: int = 64,
    depths: tuple[float, float] = (0.3, 0.55),
    feature_noise: float = 0.8,
    depth_blur: float = 0.25,
) -> Scene:
    """Two same-class objects side by side, touching in 2D, at the given depths; nothing else.

    The left object's right edge meets the right object's left edge along a vertical line, so in 2D they
    form one connected semantic region; only depth separates them.
    """
    rng = np.random.default_rng(seed)
    cls = 0
    left = _Object(cls, 0.55, 0.33, 0.2, 0.17, depths[0], 0.0, 0.0)
    right = _Object(cls, 0.55, 0.65, 0.2, 0.17, depths[1], 0.0, 0.0)
    return _scene_from_objects([left, right], rng, grid, patch_size, channels, 1, feature_noise, 2.0, 0.2, 0.01, depth_blur)
