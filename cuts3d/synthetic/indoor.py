"""Synthetic scene family "indoor": a perspective view into a room with furniture-like objects.

A pinhole camera (50-65 degree field of view, 1.1-1.6 m high, tilted 5-15 degrees down) looks into a room made
of a floor, a back wall, a ceiling, optionally one side wall, a skirting board and a rug. One to five objects stand
on the floor 1.5-5 m away: boxes (fronto-parallel or turned, so their faces are slanted in depth), upright
cylinders and rounded ellipsoids. Every pixel is ray-cast against all surfaces (a z-buffer at pixel resolution),
so occlusion, foreshortening and curved depth are exact; depth is metric camera z-depth in metres.

What each modality emulates:

* **features** stand in for DINO ViT keys. Each scene has two object classes whose unit prototypes have a
  cosine similarity of 0.12-0.3; same-class instances add a small per-instance offset (cosine 0.9-0.97 to the
  prototype). The background "stuff" (floor, walls, ceiling, rug, skirting) has prototypes that resemble each
  other (cosine 0.3-0.6; the two walls ~0.9, being the same paint), as DINO's backgrounds do, and all
  prototypes share a weak common component (cosine 0.05-0.11). Texture is
  a smooth random field attached to the 3D surfaces (so it is foreshortened like the real thing), strongest on
  the floor and rug, plus a far-vs-near drift along the floor, a face-orientation term on objects and a weak
  positional term. Patch features are the pixel-coverage-weighted mean of pixel features within each patch,
  slightly smoothed across patches (the ViT's context) and given isotropic Gaussian noise.
* **depth** mimics a metric monocular estimator: soft edges (Gaussian blur of 0.2-0.5 patch), spatially
  correlated multiplicative noise of 1-3 %, a smooth low-frequency bias of several per cent and a global
  scale error of up to 15 %.
* **image** is a shaded RGB rendering: per-class colours with texture, Lambertian shading that darkens with
  distance, contact shadows, planked/tiled/carpeted floors and plain walls.

In most scenes with two or more objects, two objects of the same class are placed so that they touch or overlap
in the image while lying at clearly different depths (visible median depth ratio 1.15-1.55): the case a 3D cut
has to separate. Ground truth holds the visible mask and class of every object; placement keeps each object at
>= 1.3 % of the image, so no rendered object is missing from the ground truth.

With ``far_backdrop=True`` the upper part of the back wall becomes a window onto a backdrop 20-60 times as deep
as the objects' median depth. Its parameters come from a separate random stream, and only ``depth`` changes:
features, image and masks are those of ``far_backdrop=False`` (so the image still shows the wall there).

Usage::

    from cuts3d.synthetic.indoor import make_indoor_scene
    scene = make_indoor_scene(seed=7, far_backdrop=True)
    scene.features.shape, scene.depth.shape, scene.masks.shape, scene.classes
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cuts3d.synthetic.scene import Scene

# Stuff labels; object i gets label _N_STUFF + i.
_FLOOR, _WALL, _SIDE, _CEIL, _RUG, _SKIRT = range(6)
_N_STUFF = 6

# Ground truth keeps objects from this visible share of the image; placement asks for a margin above it so that
# every rendered object is also a ground-truth object.
_MIN_AREA = 0.01
_PLACE_AREA = 0.013
# A placed object must keep this share of its own unoccluded area, so that none is a sliver behind another.
_MIN_VISIBLE_SHARE = 0.25
# Range of the visible median depth ratio of a deliberately touching same-class pair.
_PAIR_RATIO = (1.15, 1.55)
# Object centres lie this far from the camera (metres, along the floor).
_Z_RANGE = (1.9, 4.7)
_MAX_OBJECTS = 5
# Texture fields: random Fourier features per field.
_N_TEX = 3
_N_WAVES = 12


@dataclass
class _Camera:
    size: int
    fpx: float
    pitch: float
    height: float

    def rays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ray directions scaled so that the ray parameter t is the camera z-depth of the hit point."""
        c = (np.arange(self.size) + 0.5 - self.size / 2) / self.fpx
        xc, yc = np.meshgrid(c, -c)
        sp, cp = np.sin(self.pitch), np.cos(self.pitch)
        return xc, -sp + yc * cp, cp + yc * sp

    def project(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 3) world points to (column, row, z-depth)."""
        sp, cp = np.sin(self.pitch), np.cos(self.pitch)
        rx, ry, rz = pts[:, 0], pts[:, 1] - self.height, pts[:, 2]
        zc = -sp * ry + cp * rz
        yc = cp * ry + sp * rz
        zs = np.maximum(zc, 1e-6)
        return rx / zs * self.fpx + self.size / 2, -yc / zs * self.fpx + self.size / 2, zc

    def column_to_x(self, col: float, z: float, y: float) -> float:
        """World x of a point at floor distance z and height y that projects to image column ``col``."""
        zc = -np.sin(self.pitch) * (y - self.height) + np.cos(self.pitch) * z
        return (col - self.size / 2) / self.fpx * zc


@dataclass
class _Object:
    kind: str  # "box", "cylinder" or "ellipsoid"
    cls: int
    x: float
    z: float
    sx: float  # half extent along the object's x (radius for round shapes)
    sz: float  # half extent along the object's z
    height: float
    yaw: float = 0.0

    def footprint(self) -> np.ndarray:
        """Convex polygon (N, 2) of the object's footprint on the floor, in world (x, z)."""
        if self.kind == "box":
            loc = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * [self.sx, self.sz]
        else:
            a = np.linspace(0, 2 * np.pi, 16, endpoint=False)
            loc = np.stack([np.cos(a) * self.sx, np.sin(a) * self.sz], 1)
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.stack([self.x + c * loc[:, 0] + s * loc[:, 1], self.z - s * loc[:, 0] + c * loc[:, 1]], 1)

    def corners(self) -> np.ndarray:
        fp = self.footprint()
        lo = np.c_[fp[:, 0], np.zeros(len(fp)), fp[:, 1]]
        hi = np.c_[fp[:, 0], np.full(len(fp), self.height), fp[:, 1]]
        return np.concatenate([lo, hi])

    def floor_distance(self, px: np.ndarray, pz: np.ndarray) -> np.ndarray:
        """Distance on the floor from points (px, pz) to the footprint (0 inside)."""
        dx, dz = px - self.x, pz - self.z
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        lx, lz = c * dx - s * dz, s * dx + c * dz
        if self.kind == "box":
            ox, oz = np.maximum(np.abs(lx) - self.sx, 0), np.maximum(np.abs(lz) - self.sz, 0)
            return np.hypot(ox, oz)
        return np.maximum(np.hypot(lx / self.sx, lz / self.sz) - 1, 0) * min(self.sx, self.sz)


def _separated(a: np.ndarray, b: np.ndarray, margin: float) -> bool:
    """Whether two convex polygons are at least ``margin`` apart along some separating axis."""
    for poly in (a, b):
        edges = np.roll(poly, -1, 0) - poly
        normals = np.stack([-edges[:, 1], edges[:, 0]], 1)
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        pa, pb = a @ normals.T, b @ normals.T
        gap = np.maximum(pb.min(0) - pa.max(0), pa.min(0) - pb.max(0))
        if np.any(gap > margin):
            return True
    return False


def _intersect(obj: _Object, cam: _Camera, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray):
    """Ray parameter (inf on a miss) and world normals of ``obj`` for the rays (dx, dy, dz) from the camera."""
    # Work in the object's frame: origin at its base centre, turned by its yaw.
    c, s = np.cos(obj.yaw), np.sin(obj.yaw)
    o = (-c * obj.x + s * obj.z, cam.height, -s * obj.x - c * obj.z)
    d = (c * dx - s * dz, dy, s * dx + c * dz)
    if obj.kind == "box":
        lo, hi = (-obj.sx, 0.0, -obj.sz), (obj.sx, obj.height, obj.sz)
        tmin, tmax = np.full(dx.shape, -np.inf), np.full(dx.shape, np.inf)
        axis = np.zeros(dx.shape, int)
        for k in range(3):
            dk = np.where(np.abs(d[k]) < 1e-12, 1e-12, d[k])
            t1, t2 = (lo[k] - o[k]) / dk, (hi[k] - o[k]) / dk
            tn = np.minimum(t1, t2)
            upd = tn > tmin
            tmin, axis = np.where(upd, tn, tmin), np.where(upd, k, axis)
            tmax = np.minimum(tmax, np.maximum(t1, t2))
        t = np.where((tmax >= tmin) & (tmin > 1e-6), tmin, np.inf)
        nl = np.stack([np.where(axis == k, -np.sign(d[k]), 0.0) for k in range(3)], -1)
    elif obj.kind == "cylinder":
        r, h = obj.sx, obj.height
        a = d[0] ** 2 + d[2] ** 2
        b = 2 * (o[0] * d[0] + o[2] * d[2])
        disc = b**2 - 4 * a * (o[0] ** 2 + o[2] ** 2 - r**2)
        ts = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
        ys = o[1] + ts * d[1]
        t = np.where((disc >= 0) & (ys >= 0) & (ys <= h) & (ts > 0), ts, np.inf)
        nl = np.stack([(o[0] + ts * d[0]) / r, np.zeros_like(ts), (o[2] + ts * d[2]) / r], -1)
        if o[1] > h:  # the camera sees the lid only from above
            with np.errstate(divide="ignore", invalid="ignore"):
                tc = np.where(d[1] < 0, (h - o[1]) / d[1], np.inf)
            cap = (d[1] < 0) & ((o[0] + tc * d[0]) ** 2 + (o[2] + tc * d[2]) ** 2 <= r**2) & (tc < t)
            t = np.where(cap, tc, t)
            nl[cap] = (0.0, 1.0, 0.0)
    else:  # ellipsoid resting on the floor, semi-axes (sx, height / 2, sz)
        ax = (obj.sx, obj.height / 2, obj.sz)
        ou = (o[0] / ax[0], (o[1] - ax[1]) / ax[1], o[2] / ax[2])
        du = tuple(d[k] / ax[k] for k in range(3))
        a = sum(v**2 for v in du)
        b = 2 * sum(ou[k] * du[k] for k in range(3))
        disc = b**2 - 4 * a * (sum(v**2 for v in ou) - 1)
        t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
        t = np.where((disc >= 0) & (t > 0), t, np.inf)
        tf = np.where(np.isfinite(t), t, 0.0)
        nl = np.stack([(ou[k] + tf * du[k]) / ax[k] for k in range(3)], -1)
        nl /= np.maximum(np.linalg.norm(nl, axis=-1, keepdims=True), 1e-9)
    normal = np.stack([c * nl[..., 0] + s * nl[..., 2], nl[..., 1], -s * nl[..., 0] + c * nl[..., 2]], -1)
    return t, normal


def _render_object(obj: _Object, cam: _Camera, rays) -> tuple[np.ndarray, np.ndarray]:
    """Full-image (t, normal) of one object, ray-cast only inside its projected bounding box (for speed)."""
    n = cam.size
    t, normal = np.full((n, n), np.inf), np.zeros((n, n, 3))
    col, row, zc = cam.project(obj.corners())
    if np.all(zc > 0.05):
        c0, c1 = int(np.clip(np.floor(col.min()) - 2, 0, n)), int(np.clip(np.ceil(col.max()) + 3, 0, n))
        r0, r1 = int(np.clip(np.floor(row.min()) - 2, 0, n)), int(np.clip(np.ceil(row.max()) + 3, 0, n))
    else:
        c0, c1, r0, r1 = 0, n, 0, n
    if c1 <= c0 or r1 <= r0:
        return t, normal
    win = (slice(r0, r1), slice(c0, c1))
    t[win], normal[win] = _intersect(obj, cam, rays[0][win], rays[1][win], rays[2][win])
    return t, normal


def _visible(ts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest object per pixel (-1 for none) and its t."""
    stack = np.stack(ts)
    idx = np.argmin(stack, 0)
    tmin = np.take_along_axis(stack, idx[None], 0)[0]
    return np.where(np.isfinite(tmin), idx, -1), tmin


def _sample_object(rng: np.random.Generator, cls: int, box_prob: float, cam: _Camera,
                   z: float | None = None, col: float | None = None) -> _Object:
    if rng.random() < box_prob:
        kind = "box"
        sx, sz, h = rng.uniform(0.15, 0.5), rng.uniform(0.15, 0.4), rng.uniform(0.3, 1.2)
        # A third of the boxes face the camera squarely; the rest are turned, so their faces slant in depth.
        yaw = 0.0 if rng.random() < 0.35 else rng.uniform(-0.9, 0.9)
    elif rng.random() < 0.7:
        kind, yaw = "cylinder", 0.0
        sx = rng.uniform(0.12, 0.4)
        sz, h = sx, rng.uniform(0.3, 1.2)
    else:
        kind, yaw = "ellipsoid", rng.uniform(0, np.pi)
        sx, sz, h = rng.uniform(0.2, 0.45), rng.uniform(0.2, 0.45), rng.uniform(0.35, 0.9)
    z = rng.uniform(*_Z_RANGE) if z is None else z
    col = rng.uniform(0.1, 0.9) * cam.size if col is None else col
    return _Object(kind, cls, cam.column_to_x(col, z, h / 2), z, sx, sz, h, yaw)


class _Placement:
    """Objects placed so far with their renderings, and the checks a new object must pass."""

    def __init__(self, cam: _Camera, rays):
        self.cam, self.rays = cam, rays
        self.objects: list[_Object] = []
        self.renders: list[tuple[np.ndarray, np.ndarray]] = []
        self.pair: tuple[int, int] | None = None

    def try_add(self, obj: _Object, pair_with: int | None = None) -> bool:
        fp = obj.footprint()
        if any(not _separated(fp, o.footprint(), 0.03) for o in self.objects):
            return False  # objects must not interpenetrate
        rend = _render_object(obj, self.cam, self.rays)
        own = np.isfinite(rend[0])
        npx = self.cam.size**2
        if own.sum() < _PLACE_AREA * npx:
            return False
        idx, _ = _visible([r[0] for r in self.renders] + [rend[0]])
        for i, r in enumerate(self.renders + [rend]):
            vis = (idx == i).sum()
            if vis < _PLACE_AREA * npx or vis < _MIN_VISIBLE_SHARE * np.isfinite(r[0]).sum():
                return False
        new = len(self.objects)
        pair = (pair_with, new) if pair_with is not None else self.pair
        if pair is not None:
            a, b = idx == pair[0], idx == pair[1]
            if not (ndimage.binary_dilation(a, iterations=2) & b).any():
                return False
            if pair_with is not None:
                t = [self.renders[pair_with][0], rend[0]]
                ma, mb = np.median(t[0][a]), np.median(t[1][b])
                ratio = max(ma, mb) / min(ma, mb)
                if not _PAIR_RATIO[0] <= ratio <= _PAIR_RATIO[1]:
                    return False
        self.objects.append(obj)
        self.renders.append(rend)
        self.pair = pair
        return True


def _place_objects(rng: np.random.Generator, cam: _Camera, rays) -> _Placement:
    n = int(rng.choice(np.arange(1, _MAX_OBJECTS + 1), p=[0.14, 0.2, 0.22, 0.22, 0.22]))
    want_pair = n >= 2 and rng.random() < 0.9
    box_prob = rng.uniform(0.15, 0.85, size=2)
    first_cls = int(rng.integers(2))
    pl = _Placement(cam, rays)
    for _ in range(40):
        if pl.try_add(_sample_object(rng, first_cls, box_prob[first_cls], cam)):
            break
    if not pl.objects:  # a large box near the centre always fits
        pl.try_add(_Object("box", first_cls, 0.0, 2.8, 0.45, 0.35, 1.0))
    if want_pair:
        a = pl.objects[0]
        cols = np.nonzero(np.isfinite(pl.renders[0][0]).any(0))[0]
        for _ in range(30):
            ratio = rng.uniform(1.2, 1.5)
            options = [z for z in (a.z * ratio, a.z / ratio) if _Z_RANGE[0] <= z <= _Z_RANGE[1] + 0.3]
            if not options:
                break
            z = options[int(rng.integers(len(options)))]
            side = 1 if rng.random() < 0.5 else -1
            edge = cols.max() if side > 0 else cols.min()
            # Half-width of the new object in pixels is unknown before sampling; sample first, then shift it.
            probe = _sample_object(rng, first_cls, box_prob[first_cls], cam, z=z, col=float(edge))
            half = max(probe.sx, probe.sz) * cam.fpx / z
            col = edge + side * half * rng.uniform(-0.4, 0.9)
            probe.x = cam.column_to_x(col, z, probe.height / 2)
            if pl.try_add(probe, pair_with=0):
                break
    for _ in range(len(pl.objects), n):
        # The other class comes first, so that scenes with three or more objects show both classes.
        present = {o.cls for o in pl.objects}
        cls = 1 - first_cls if 1 - first_cls not in present else int(rng.integers(2))
        for _ in range(25):
            if pl.try_add(_sample_object(rng, cls, box_prob[cls], cam)):
                break
    return pl


def _basis(rng: np.random.Generator, n: int, channels: int) -> np.ndarray:
    """(n, channels) unit vectors, mutually orthogonal where the dimension allows."""
    g = rng.standard_normal((channels, n))
    if n <= channels:
        return np.linalg.qr(g)[0].T
    return (g / np.linalg.norm(g, axis=0)).T


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


class _Fields:
    """Smooth random scalar fields over 3D space (random Fourier features), for texture on surfaces."""

    def __init__(self, rng: np.random.Generator, n_fields: int, length: float):
        self.n_fields = n_fields
        self.omega = (rng.standard_normal((n_fields * _N_WAVES, 3)) / length).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, n_fields * _N_WAVES).astype(np.float32)

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        """(N, n_fields) unit-variance field values at (N, 3) points."""
        p = pts.astype(np.float32)
        # Broadcasting beats a (N, 3) @ (3, M) matmul here: BLAS is slow for an inner dimension of 3.
        arg = p[:, :1] * self.omega[:, 0] + p[:, 1:2] * self.omega[:, 1] + p[:, 2:] * self.omega[:, 2] + self.phase
        waves = np.cos(arg)
        return waves.reshape(len(pts), self.n_fields, _N_WAVES).sum(-1) * np.float32(np.sqrt(2.0 / _N_WAVES))


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """(n, n) Gaussian noise smoothed at ``sigma`` pixels (periodic, filtered in Fourier space), unit variance."""
    f = np.fft.fftfreq(n)
    gain = np.exp(-2 * (np.pi * sigma) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    out = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * gain).real
    return (out - out.mean()) / (out.std() + 1e-12)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def make_indoor_scene(seed: int, grid: int = 30, patch_size: int = 8, channels: int = 64,
                      far_backdrop: bool = False) -> Scene:
    """Indoor scene ``seed`` (see the module docstring); images are ``grid * patch_size`` pixels square."""
    rng = np.random.default_rng(seed)
    n = grid * patch_size
    fov = np.deg2rad(rng.uniform(50, 65))
    cam = _Camera(n, n / 2 / np.tan(fov / 2), np.deg2rad(rng.uniform(5, 15)), rng.uniform(1.1, 1.6))
    rays = cam.rays()
    dx, dy, dz = rays

    pl = _place_objects(rng, cam, rays)
    objs = pl.objects

    # Room: the back wall 1.2-2.5x the farthest object point, optionally a side wall beyond the objects.
    far = max(o.footprint()[:, 1].max() for o in objs)
    z_wall = far * rng.uniform(1.2, 2.5)
    ceil_h = rng.uniform(2.5, 3.1)
    side, x_side = 0, np.inf
    if rng.random() < 0.6:
        side = 1 if rng.random() < 0.5 else -1
        reach = max((side * o.footprint()[:, 0]).max() for o in objs)
        x_side = side * (reach + rng.uniform(0.4, 1.5))
    skirt_h = rng.uniform(0.06, 0.14) if rng.random() < 0.7 else 0.0

    with np.errstate(divide="ignore", invalid="ignore"):
        t_stuff = np.stack([
            np.where(dy < 0, -cam.height / dy, np.inf),
            z_wall / dz,
            np.where(side * dx > 0, x_side / dx, np.inf) if side else np.full(dx.shape, np.inf),
            np.where(dy > 0, (ceil_h - cam.height) / dy, np.inf),
        ])
    label = np.argmin(t_stuff, 0)
    t = np.take_along_axis(t_stuff, label[None], 0)[0]
    hit = np.stack([dx * t, cam.height + dy * t, dz * t], -1)
    normal = np.array([(0, 1, 0), (0, 0, -1), (-side, 0, 0), (0, -1, 0)], float)[label]

    has_rug = rng.random() < 0.5
    if has_rug:
        xs = np.array([o.x for o in objs])
        zs = np.array([o.z for o in objs])
        rug_x = np.sort(xs.mean() + rng.uniform(0.6, 1.6) * np.array([-1, 1]) + rng.uniform(-0.5, 0.5))
        rug_z = np.array([max(zs.min() - rng.uniform(0.3, 1.0), 1.0), zs.max() + rng.uniform(0.3, 1.5)])
        rug_z[1] = min(rug_z[1], z_wall - 0.3)
        on_rug = ((label == _FLOOR) & (hit[..., 0] > rug_x[0]) & (hit[..., 0] < rug_x[1])
                  & (hit[..., 2] > rug_z[0]) & (hit[..., 2] < rug_z[1]))
        label[on_rug] = _RUG
    if skirt_h:
        label[((label == _WALL) | (label == _SIDE)) & (hit[..., 1] < skirt_h)] = _SKIRT
    # Distance to the nearest room edge (floor-wall, wall-wall, wall-ceiling), for ambient occlusion.
    corner = np.minimum.reduce([hit[..., 1], ceil_h - hit[..., 1], z_wall - hit[..., 2],
                                np.abs(x_side - hit[..., 0]) if side else np.full(dx.shape, np.inf)])

    idx, t_obj = _visible([r[0] for r in pl.renders])
    front = idx >= 0
    label[front] = _N_STUFF + idx[front]
    t = np.where(front, t_obj, t)
    hit = np.stack([dx * t, cam.height + dy * t, dz * t], -1)
    for i, (_, nrm) in enumerate(pl.renders):
        normal[idx == i] = nrm[idx == i]

    # Ground truth: every placed object clears the area threshold, the filter is a guard.
    keep = [i for i in range(len(objs)) if (idx == i).mean() >= _MIN_AREA]
    masks = np.stack([idx == i for i in keep]) if keep else np.zeros((0, n, n), bool)
    classes = np.array([objs[i].cls for i in keep], np.int64)

    features = _features(rng, cam, objs, label, hit, normal, t, grid, patch_size, channels)
    image = _image(rng, cam, objs, label, hit, normal, t, corner, (rug_x, rug_z) if has_rug else None)

    # A separate stream for the backdrop, so that far_backdrop changes nothing but depth.
    rng_far = np.random.default_rng([seed, 1])
    ratio = rng_far.uniform(20, 60)
    q = rng_far.uniform([0.25, 0.0, 0.75, 0.15], [0.55, 0.2, 1.0, 0.4])
    true_depth = t.copy()
    if far_backdrop:
        wall = label == _WALL
        if wall.any():
            wy, wx = hit[..., 1][wall], hit[..., 0][wall]
            sill = np.quantile(wy, q[0])
            top = min(wy.max() + 1.0, ceil_h - q[3])
            x0, x1 = np.quantile(wx, [q[1], q[2]])
            window = wall & (hit[..., 1] > sill) & (hit[..., 1] < top) & (hit[..., 0] >= x0) & (hit[..., 0] <= x1)
            true_depth[window] = ratio * np.median(t[front])
    depth = _estimated_depth(rng, true_depth, patch_size)
    return Scene(features=features, depth=depth, image=image, masks=masks, classes=classes, patch_size=patch_size)


def _features(rng: np.random.Generator, cam: _Camera, objs: list[_Object], label: np.ndarray, hit: np.ndarray,
              normal: np.ndarray, t: np.ndarray, grid: int, ps: int, channels: int) -> np.ndarray:
    # Texture groups: floor, rug, walls (back, side), ceiling, skirting, class 0, class 1.
    tex_group = {_FLOOR: 0, _RUG: 1, _WALL: 2, _SIDE: 2, _CEIL: 3, _SKIRT: 4}
    n_groups = 7
    basis = _basis(rng, 2 + _N_STUFF + 3 + _MAX_OBJECTS + n_groups * _N_TEX + 2 + 1 + 2, channels)
    it = iter(basis)
    g_common, s_common = next(it), next(it)
    e_stuff = [next(it) for _ in range(_N_STUFF)]
    o_common, e_cls = next(it), [next(it), next(it)]
    e_inst = [next(it) for _ in range(_MAX_OBJECTS)]
    tex_dirs = np.array([next(it) for _ in range(n_groups * _N_TEX)]).reshape(n_groups, _N_TEX, channels)
    face_dirs = [next(it), next(it)]
    floor_drift_dir = next(it)
    pos_dirs = [next(it), next(it)]

    # A weak component shared by all keys: unrelated DINO patches still have a small positive cosine.
    gamma = rng.uniform(0.05, 0.11)

    def with_common(v: np.ndarray) -> np.ndarray:
        return np.sqrt(gamma) * g_common + np.sqrt(1 - gamma) * v

    rho = rng.uniform(0.25, 0.5, _N_STUFF)
    stuff = [with_common(np.sqrt(r) * s_common + np.sqrt(1 - r) * e) for r, e in zip(rho, e_stuff)]
    # Both walls are the same paint: the side wall only differs by its lighting.
    stuff[_SIDE] = _unit(stuff[_WALL] + 0.45 * e_stuff[_SIDE])
    tau = rng.uniform(0.12, 0.3)
    kappa = (tau - gamma) / (1 - gamma)
    protos = [with_common(np.sqrt(kappa) * o_common + np.sqrt(1 - kappa) * e) for e in e_cls]
    inst = [_unit(protos[o.cls] + rng.uniform(0.25, 0.45) * e_inst[i]) for i, o in enumerate(objs)]
    label_vecs = np.array(stuff + inst)

    amp_scale = rng.uniform(0.8, 1.25)
    amp = amp_scale * np.array([0.45, 0.55, 0.25, 0.15, 0.15, 0.3, 0.3])
    lengths = [0.35, 0.2, 0.8, 1.0, 0.5, 0.25, 0.25]
    fields = [_Fields(rng, _N_TEX, length) for length in lengths]

    # Label vectors mix by exact pixel coverage. The smooth texture terms are sampled on every ``sub``-th pixel,
    # which pools to the same patch means up to a negligible error and saves most of the time.
    n_lab = len(label_vecs)
    onehot = (label[..., None] == np.arange(n_lab)).astype(np.float32)
    coverage = onehot.reshape(grid, ps, grid, ps, n_lab).mean((1, 3))
    sub = 2 if ps % 2 == 0 else 1
    pick = (slice(sub // 2, None, sub), slice(sub // 2, None, sub))
    lab, pts, nrm, ts = label[pick], hit[pick], normal[pick], t[pick]
    m = n_groups * _N_TEX + 2 + 1
    coef = np.zeros(lab.shape + (m,), np.float32)
    group = np.full(lab.shape, -1)
    for k, g in tex_group.items():
        group[lab == k] = g
    for i, o in enumerate(objs):
        group[lab == _N_STUFF + i] = 5 + o.cls
    for g in range(n_groups):
        sel = group == g
        if sel.any():
            coef[sel, g * _N_TEX:(g + 1) * _N_TEX] = amp[g] * fields[g](pts[sel]) / np.sqrt(_N_TEX)
    # Tops and sides of an object look different to DINO; the far floor differs from the near floor.
    for c in (0, 1):
        sel = group == 5 + c
        coef[sel, n_groups * _N_TEX + c] = 0.2 * nrm[sel][:, 1]
    floorish = (lab == _FLOOR) | (lab == _RUG)
    if floorish.any():
        lt = np.log(ts[floorish])
        coef[floorish, m - 1] = 0.25 * amp_scale * (lt - lt.mean()) / (lt.std() + 1e-9)
    q = ps // sub
    pooled = np.concatenate([coverage, coef.reshape(grid, q, grid, q, m).mean((1, 3))], -1)
    vecs = np.concatenate([label_vecs, tex_dirs.reshape(-1, channels), face_dirs, [floor_drift_dir]])
    # A weak positional term, as ViT keys carry some of their position embedding.
    c = (np.arange(grid) + 0.5) / grid * 2 - 1
    pos = 0.08 * (c[None, :, None] * pos_dirs[0] + c[:, None, None] * pos_dirs[1])
    feats = np.moveaxis(pooled @ vecs + pos, -1, 0)
    # The ViT's attention mixes in a little of the neighbouring patches.
    feats = ndimage.gaussian_filter(feats, (0, *(2 * [rng.uniform(0.25, 0.45)])), mode="nearest")
    noise = rng.uniform(0.45, 0.65) / np.sqrt(channels)
    feats = feats + noise * rng.standard_normal(feats.shape)
    return feats.astype(np.float32)


def _image(rng: np.random.Generator, cam: _Camera, objs: list[_Object], label: np.ndarray, hit: np.ndarray,
           normal: np.ndarray, t: np.ndarray, corner: np.ndarray, rug) -> np.ndarray:
    n = cam.size
    px, pz = hit[..., 0], hit[..., 2]
    # Texture at 0.15 m varies slowly across pixels: sample it on every other pixel and interpolate.
    tex = _Fields(rng, 3, 0.15)
    coarse = tex(hit[::2, ::2].reshape(-1, 3)).reshape(-(-n // 2), -(-n // 2), 3)
    fine = coarse.repeat(2, 0).repeat(2, 1)[:n, :n]
    albedo = np.zeros((n, n, 3))

    wall_col = _hsv(rng.uniform(0, 1), rng.uniform(0.04, 0.25), rng.uniform(0.72, 0.92))
    ceil_col = _hsv(rng.uniform(0.08, 0.15), rng.uniform(0.0, 0.06), rng.uniform(0.85, 0.95))
    skirt_col = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.0, 0.4), rng.choice([0.35, 0.92]))
    rug_col, rug_border = _hsv(rng.uniform(0, 1), rng.uniform(0.4, 0.8), rng.uniform(0.35, 0.7)), \
        _hsv(rng.uniform(0, 1), rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.8))
    floor_style = rng.choice(["planks", "tiles", "carpet"])
    if floor_style == "planks":
        floor_col = _hsv(rng.uniform(0.05, 0.11), rng.uniform(0.4, 0.65), rng.uniform(0.4, 0.7))
    else:
        floor_col = _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.3), rng.uniform(0.45, 0.8))
    plank_w, plank_l = rng.uniform(0.12, 0.25), rng.uniform(0.8, 2.0)
    plank_tone = rng.uniform(0.8, 1.15, 256)

    floor = label == _FLOOR
    fx, fz, ff = px[floor], pz[floor], fine[floor]
    if floor_style == "planks":
        col_i = np.floor(fx / plank_w).astype(int)
        along = fz / plank_l + 0.37 * col_i  # plank ends are staggered from row to row
        tone = plank_tone[(col_i * 31 + np.floor(along).astype(int) * 17) % 256]
        seam = (np.mod(fx / plank_w, 1) < 0.04) | (np.mod(along, 1) < 0.01)
        f = tone * (1 + 0.08 * np.sin(fz * 40 + 3 * ff[:, 1])) * np.where(seam, 0.6, 1.0)
    elif floor_style == "tiles":
        tile = rng.uniform(0.3, 0.6)
        seam = (np.mod(fx / tile, 1) < 0.04) | (np.mod(fz / tile, 1) < 0.04)
        f = np.where(seam, 0.75, 1.0) * (1 + 0.05 * ff[:, 1])
    else:
        f = 1 + 0.03 * ff[:, 1] + 0.03 * ff[:, 2]
    albedo[floor] = floor_col * (f * (1 + 0.06 * ff[:, 0]))[:, None]
    if rug is not None:
        (x0, x1), (z0, z1) = rug
        sel = label == _RUG
        rx, rz = px[sel], pz[sel]
        edge = np.minimum.reduce([rx - x0, x1 - rx, rz - z0, z1 - rz])
        stripes = 1 + 0.12 * np.sign(np.sin(rx * 18 + rz * 6))
        col = np.where((edge < 0.15)[:, None], rug_border, rug_col * stripes[:, None])
        albedo[sel] = col * (1 + 0.15 * fine[sel][:, 2:3])
    walls = (label == _WALL) | (label == _SIDE)
    albedo[walls] = wall_col * (1 + 0.03 * fine[walls][:, 2:3])
    albedo[label == _CEIL] = ceil_col
    albedo[label == _SKIRT] = skirt_col

    hue0 = rng.uniform(0, 1)
    cls_hsv = [(hue0, rng.uniform(0.35, 0.8), rng.uniform(0.45, 0.85)),
               (hue0 + rng.uniform(0.2, 0.8), rng.uniform(0.35, 0.8), rng.uniform(0.45, 0.85))]
    for i, o in enumerate(objs):
        sel = label == _N_STUFF + i
        h, s, v = cls_hsv[o.cls]
        col = _hsv(h + rng.uniform(-0.03, 0.03), np.clip(s + rng.uniform(-0.08, 0.08), 0, 1),
                   np.clip(v + rng.uniform(-0.08, 0.08), 0, 1))
        albedo[sel] = col * (1 + 0.06 * fine[sel][:, o.cls:o.cls + 1])

    # A key light from above-left-front, ambient fill, light bounced off the floor, and fall-off with distance.
    light = _unit(np.array([-0.4, 0.8, -0.45]))
    lam = 0.55 + 0.5 * np.clip(normal @ light, 0, None) + 0.2 * np.clip(-normal[..., 1], 0, None)
    lam = lam / np.sqrt(1 + (t / 12.0) ** 2)
    on_floor = (label == _FLOOR) | (label == _RUG)
    if on_floor.any():
        occl = np.ones(on_floor.sum())
        for o in objs:
            occl *= 1 - 0.45 * np.exp(-o.floor_distance(px[on_floor], pz[on_floor]) / 0.1)
        lam[on_floor] *= occl
    # Room edges are a little darker (ambient occlusion); objects keep their own shading.
    lam = np.where(label < _N_STUFF, lam * (1 - 0.2 * np.exp(-np.maximum(corner, 0) / 0.25)), lam)
    img = albedo * lam[..., None]
    img = ndimage.gaussian_filter(img, (0.6, 0.6, 0))
    img = img + rng.normal(0, 0.012, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _estimated_depth(rng: np.random.Generator, depth: np.ndarray, ps: int) -> np.ndarray:
    """Metric depth as a monocular estimator returns it: soft edges, correlated noise, low-frequency bias."""
    n = depth.shape[0]
    d = ndimage.gaussian_filter(depth, rng.uniform(0.2, 0.5) * ps, mode="nearest")
    mult = rng.uniform(0.01, 0.03) * _smooth_noise(rng, n, rng.uniform(0.3, 0.8) * ps)
    c = (np.arange(n) + 0.5) / n * 2 - 1
    tilt = rng.uniform(-0.05, 0.05) * c[None, :] + rng.uniform(-0.05, 0.05) * c[:, None]
    bias = tilt + rng.uniform(0.02, 0.05) * _smooth_noise(rng, n, n / 4)
    d = d * np.exp(mult + bias) * rng.uniform(0.85, 1.15)
    return np.maximum(d, 1e-3).astype(np.float32)
