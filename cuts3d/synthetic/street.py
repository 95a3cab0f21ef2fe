"""The ``street`` synthetic scene family: pedestrians and cars on an outdoor street, seen from eye height.

Design (independent of the segmentation engine; nothing here is tuned to any method's output):

* Geometry: a pinhole camera 1.45-1.75 m above the ground, pitched 2-7 degrees down, looks along a street.
  Every pixel is ray-cast at pixel resolution against a ground plane (road with lane markings, kerbs and
  pavements), a vertical backdrop across the street's end (a row of building facades, a tall hedge / tree
  line, or a wall with sky above) and the objects; a z-buffer resolves occlusion. Depth is the camera
  z-distance in metres.
* Objects: two classes, ``0`` pedestrian (an elliptic capsule body with an ellipsoid head, 1.5-1.9 m tall)
  and ``1`` car (a box body on four wheel blocks with a cabin whose windscreen and rear window are slanted),
  1-5 per scene at 3-15 m, so farther objects are smaller and stand higher in the image. In most scenes two
  objects of the same class touch or overlap in the image at a relative depth gap of 15-50 %. An object whose
  visible area would be under 1 % of the image is moved elsewhere or taken out of the scene altogether, so
  every object in the picture is in the ground truth.
* Backdrop: with ``far_backdrop=False`` it stands 1.3-2.5 times as deep as the farthest object (its sky at
  most 3 times); with ``far_backdrop=True`` the same pixels get the depth of distant buildings and sky,
  20-60 times the objects' median depth (the ratio comes from ``np.random.default_rng([seed, 1])``, so the
  features, image and masks are exactly those of ``far_backdrop=False``).
* Depth as Depth Anything V2 + :func:`cuts3d.depth.models.disparity_to_depth` deliver it: metric depth ->
  disparity, softened edges (Gaussian blur of 0.2-0.5 patch), a few % multiplicative noise and a smooth
  low-frequency bias, an unknown positive scale and shift, then ``disparity_to_depth``.
* Features, standing in for DINO ViT keys: unit prototypes for the two classes (cosine 0.1-0.3) and for the
  stuff (road, pavement, facade, hedge, wall, sky; cosine 0.3-0.6 to each other), a per-instance offset,
  part offsets (legs / torso / head, body / glass / wheels, facade windows), solid 3D texture fields (weak
  on flat-textured objects, strong on textured ones), a weak positional and object-scale signal; pixel
  features are averaged over each patch (so boundary patches mix by coverage), bled slightly into their
  neighbours as attention does, and get Gaussian noise.
* Image: shaded surfaces with per-class palettes, clothes patterns, car windows, asphalt, tiled pavements,
  windows, leaves or stones, a sky gradient, contact shadows, haze and sensor noise.

Usage::

    from cuts3d.synthetic.street import make_street_scene
    scene = make_street_scene(seed=3)                        # near backdrop (facade, hedge or wall)
    far = make_street_scene(seed=3, far_backdrop=True)       # same picture, backdrop 20-60x deeper
    scene.features.shape, scene.depth.shape, scene.masks.shape   # (64, 30, 30), (240, 240), (K, 240, 240)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from cuts3d.depth.models import disparity_to_depth
from cuts3d.synthetic.scene import Scene

CLASS_NAMES: tuple[str, ...] = ("pedestrian", "car")
MIN_AREA_FRACTION = 0.01

# Feature "types": the two thing classes, then the stuff.
_PED, _CAR, _ROAD, _PAVEMENT, _FACADE, _HEDGE, _WALL, _SKY = range(8)
_N_TYPES = 8
_BACKDROP_TYPES = {"facade": _FACADE, "hedge": _HEDGE, "wall": _WALL}

# Region codes of the label map.
_GROUND, _BACKDROP, _SKYREG, _OBJECT = 0, 1, 2, 3

# Prototype directions, part offsets and texture directions are fixed across scenes (seeded by a constant),
# as DINO's features of "person" or "road" are similar from one photo to the next.
_GLOBAL_SEED = 0x57_12EE7

_PED_Z = (3.0, 8.5)
_CAR_Z = (4.5, 15.0)
_PAIR_GAP = (0.15, 0.5)
_N_OBJECTS_P = np.array([0.15, 0.2, 0.22, 0.21, 0.22])


# --- camera ------------------------------------------------------------------------------------------------


@dataclass
class _Camera:
    f: float
    cx: float
    cy: float
    height: float
    pitch: float

    @property
    def origin(self) -> np.ndarray:
        return np.array([0.0, self.height, 0.0])

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """right, up, forward in world coordinates (world: x right, y up, z along the street)."""
        s, c = np.sin(self.pitch), np.cos(self.pitch)
        return np.array([1.0, 0.0, 0.0]), np.array([0.0, c, s]), np.array([0.0, -s, c])

    def rays(self, H: int, W: int) -> np.ndarray:
        """(H, W, 3) world directions scaled so that the ray parameter is the camera z-depth."""
        right, up, fwd = self.axes()
        xc = (np.arange(W) + 0.5 - self.cx) / self.f
        yc = (self.cy - np.arange(H) - 0.5) / self.f
        return xc[None, :, None] * right + yc[:, None, None] * up + fwd

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        right, up, fwd = self.axes()
        rel = points - self.origin
        z = rel @ fwd
        return self.cx + self.f * (rel @ right) / z, self.cy - self.f * (rel @ up) / z, z


# --- objects -----------------------------------------------------------------------------------------------


@dataclass
class _Object:
    cls: int
    x: float
    z: float
    yaw: float
    dims: dict[str, float]
    colours: dict[str, np.ndarray]
    textured: bool
    pattern: dict[str, float] = field(default_factory=dict)

    @property
    def fwd(self) -> np.ndarray:
        return np.array([np.sin(self.yaw), 0.0, np.cos(self.yaw)])

    @property
    def side(self) -> np.ndarray:
        return np.array([np.cos(self.yaw), 0.0, -np.sin(self.yaw)])

    @property
    def base(self) -> np.ndarray:
        return np.array([self.x, 0.0, self.z])

    def half_extents(self) -> tuple[float, float, float]:
        """Half length (along fwd), half width (along side), full height of the bounding box."""
        d = self.dims
        if self.cls == _PED:
            return d["rz"], d["rx"], d["head_y"] + d["head_ry"]
        return d["L"] / 2, d["W"] / 2 + 0.02, d["cabin_top"]

    def corners(self) -> np.ndarray:
        hl, hw, top = self.half_extents()
        pts = []
        for a in (-hl, hl):
            for b in (-hw, hw):
                for y in (0.0, top):
                    pts.append(self.base + a * self.fwd + b * self.side + np.array([0.0, y, 0.0]))
        return np.array(pts)

    def footprint(self, margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hl, hw, _ = self.half_extents()
        c = np.array([self.x, self.z])
        return c, np.array([[self.fwd[0], self.fwd[2]], [self.side[0], self.side[2]]]), np.array([hl, hw]) + margin


def _footprints_overlap(a: _Object, b: _Object, margin: float = 0.15) -> bool:
    # Separating-axis test of the two ground rectangles: objects must not interpenetrate in 3D.
    ca, axa, ha = a.footprint(margin)
    cb, axb, hb = b.footprint(margin)
    d = cb - ca
    for axis in np.vstack([axa, axb]):
        ra = np.abs(axa @ axis) @ ha
        rb = np.abs(axb @ axis) @ hb
        if abs(d @ axis) > ra + rb:
            return False
    return True


_PED_TOPS = np.array([[25, 30, 45], [35, 35, 38], [120, 30, 35], [200, 190, 170], [40, 80, 60], [225, 225, 220],
                      [90, 95, 105], [150, 110, 60], [60, 70, 140], [170, 60, 110]], float)
_PED_LEGS = np.array([[40, 55, 95], [30, 30, 32], [85, 85, 90], [150, 135, 100], [60, 50, 40]], float)
_SKIN = np.array([[235, 195, 170], [200, 150, 115], [150, 100, 70], [95, 65, 45]], float)
_HAIR = np.array([[30, 25, 20], [80, 55, 30], [150, 120, 70], [180, 180, 175]], float)
_PAINT = np.array([[230, 230, 228], [175, 178, 182], [25, 27, 30], [160, 25, 30], [35, 60, 130], [75, 78, 82],
                   [20, 70, 55], [200, 160, 40]], float)


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float = 12.0) -> np.ndarray:
    return np.clip(colour + rng.normal(0.0, amount, 3), 0, 255)


def _new_object(rng: np.random.Generator, cls: int, x: float, z: float) -> _Object:
    textured = bool(rng.random() < 0.5)
    if cls == _PED:
        rx, rz = rng.uniform(0.19, 0.25), rng.uniform(0.12, 0.16)
        body_top = rng.uniform(1.35, 1.6)
        head_r = rng.uniform(0.09, 0.105)
        dims = {"rx": rx, "rz": rz, "cap": rx, "body_top": body_top, "leg_y": body_top * rng.uniform(0.5, 0.58),
                "head_rx": head_r, "head_ry": head_r * 1.22, "head_rz": head_r * 1.05,
                "head_y": body_top + head_r * 1.22 + 0.02}
        colours = {"top": _jitter(rng, _PED_TOPS[rng.integers(len(_PED_TOPS))]),
                   "legs": _jitter(rng, _PED_LEGS[rng.integers(len(_PED_LEGS))]),
                   "skin": _jitter(rng, _SKIN[rng.integers(len(_SKIN))], 8.0),
                   "hair": _jitter(rng, _HAIR[rng.integers(len(_HAIR))], 8.0),
                   "accent": _jitter(rng, _PED_TOPS[rng.integers(len(_PED_TOPS))])}
        pattern = {"kind": float(rng.integers(2)), "period": rng.uniform(0.06, 0.16)}
        yaw = rng.uniform(0.0, 2 * np.pi)
    else:
        L, Wd = rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9)
        body_bottom = rng.uniform(0.28, 0.34)
        body_top = body_bottom + rng.uniform(0.55, 0.7)
        cabin_top = body_top + rng.uniform(0.42, 0.58)
        rear0 = -L / 2 + rng.uniform(0.35, 0.9)
        front0 = L / 2 - rng.uniform(1.0, 1.5)
        dims = {"L": L, "W": Wd, "body_bottom": body_bottom, "body_top": body_top, "cabin_top": cabin_top,
                "rear0": rear0, "rear1": rear0 + rng.uniform(0.25, 0.6), "front0": front0,
                "front1": front0 - rng.uniform(0.45, 0.8), "wheel": rng.uniform(0.6, 0.68)}
        colours = {"paint": _jitter(rng, _PAINT[rng.integers(len(_PAINT))], 8.0),
                   "glass": np.array([45.0, 55.0, 65.0]) + rng.uniform(-10, 10),
                   "wheel": np.array([22.0, 22.0, 24.0]),
                   "accent": _jitter(rng, _PAINT[rng.integers(len(_PAINT))], 8.0)}
        pattern = {"kind": float(rng.integers(2)), "period": rng.uniform(0.5, 1.2)}
        r = rng.random()
        if r < 0.6:
            yaw = rng.choice([0.0, np.pi]) + rng.normal(0.0, 0.12)
        elif r < 0.8:
            yaw = rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 0.7) + rng.choice([0.0, np.pi])
        else:
            yaw = rng.choice([-1.0, 1.0]) * np.pi / 2 + rng.normal(0.0, 0.1)
    return _Object(cls=cls, x=x, z=z, yaw=float(yaw), dims=dims, colours=colours, textured=textured,
                   pattern=pattern)


# --- ray casting -------------------------------------------------------------------------------------------


def _hit_ellipsoid_capsule(O: np.ndarray, D: np.ndarray, obj: _Object, radii: tuple[float, float, float],
                           y0: float, y1: float, y_base: float) -> tuple[np.ndarray, np.ndarray]:
    """First hit of a vertical capsule with an elliptic cross-section, axis from ``y0`` to ``y1``.

    The capsule is a unit-radius capsule in a frame scaled by ``radii`` (side, up, forward); ray parameters are
    unchanged by a linear map, so the hit depth is read off directly. ``y0 == y1`` gives an ellipsoid.
    Returns t (inf where missed) and world normals.
    """
    rs, ry, rf = radii
    A = np.stack([obj.side / rs, np.array([0.0, 1.0, 0.0]) / ry, obj.fwd / rf])
    o = A @ (O - obj.base - np.array([0.0, y_base, 0.0]))
    d = D @ A.T
    best = np.full(D.shape[:-1], np.inf)
    normal_s = np.zeros(D.shape)
    a0, a1 = y0 / ry, y1 / ry
    if a1 > a0:
        a = d[..., 0] ** 2 + d[..., 2] ** 2
        b = 2 * (o[0] * d[..., 0] + o[2] * d[..., 2])
        c = o[0] ** 2 + o[2] ** 2 - 1.0
        disc = b * b - 4 * a * c
        with np.errstate(invalid="ignore", divide="ignore"):
            t = (-b - np.sqrt(disc)) / (2 * a)
        y = o[1] + t * d[..., 1]
        ok = (disc >= 0) & (t > 0) & (y >= a0) & (y <= a1)
        best = np.where(ok, t, best)
        with np.errstate(invalid="ignore"):
            p = o + best[..., None] * d
        normal_s = np.where(ok[..., None], np.stack([p[..., 0], np.zeros_like(t), p[..., 2]], -1), normal_s)
    for centre_y in ((a0, a1) if a1 > a0 else (a0,)):
        oc = o - np.array([0.0, centre_y, 0.0])
        a = (d * d).sum(-1)
        b = 2 * (d @ oc)
        c = oc @ oc - 1.0
        disc = b * b - 4 * a * c
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / (2 * a)
        ok = (disc >= 0) & (t > 0) & (t < best)
        best = np.where(ok, t, best)
        normal_s = np.where(ok[..., None], oc + t[..., None] * d, normal_s)
    # Normals transform with the inverse transpose of the scaling.
    n = normal_s[..., 0:1] * obj.side / rs + normal_s[..., 1:2] * np.array([0.0, 1.0, 0.0]) / ry \
        + normal_s[..., 2:3] * obj.fwd / rf
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    return best, n


def _hit_convex(O: np.ndarray, D: np.ndarray, normals: np.ndarray, offsets: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """First hit of the convex polytope {p: normals @ p <= offsets}; t (inf where missed) and world normals."""
    nd = D @ normals.T
    num = offsets - normals @ O
    with np.errstate(divide="ignore", invalid="ignore"):
        tt = num / nd
    t_in = np.where(nd < 0, tt, -np.inf)
    idx = np.argmax(t_in, axis=-1)
    t_enter = np.take_along_axis(t_in, idx[..., None], -1)[..., 0]
    t_exit = np.where(nd > 0, tt, np.inf).min(-1)
    outside_parallel = ((nd == 0) & (num < 0)).any(-1)
    hit = (t_enter <= t_exit) & (t_enter > 0) & ~outside_parallel
    n = normals[idx]
    n = n / np.linalg.norm(n, axis=-1, keepdims=True)
    return np.where(hit, t_enter, np.inf), n


def _local_planes(obj: _Object, planes: list[tuple[float, float, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Planes given in the object frame as (n_fwd, n_up, n_side, d) -> world (normals, offsets)."""
    up = np.array([0.0, 1.0, 0.0])
    normals = np.array([nl * obj.fwd + ny * up + ns * obj.side for nl, ny, ns, _ in planes])
    offsets = np.array([d for *_, d in planes]) + normals @ obj.base
    return normals, offsets


def _box(l0: float, l1: float, s0: float, s1: float, y0: float, y1: float) -> list[tuple[float, float, float, float]]:
    return [(1, 0, 0, l1), (-1, 0, 0, -l0), (0, 0, 1, s1), (0, 0, -1, -s0), (0, 1, 0, y1), (0, -1, 0, -y0)]


def _car_parts(obj: _Object) -> list[tuple[int, list[tuple[float, float, float, float]], tuple[float, ...]]]:
    """(part, planes in the object frame, local bounding box l0, l1, s0, s1, y0, y1) of each car part."""
    d = obj.dims
    L, hw = d["L"], d["W"] / 2
    yb, yt, yc = d["body_bottom"], d["body_top"], d["cabin_top"]
    hc = yc - yt
    # Body with a gently slanted nose and tail so no face of the car is a plain box side.
    body = _box(-L / 2, L / 2, -hw, hw, yb, yt)
    body += [(1.0, 0.35, 0.0, L / 2 + 0.35 * yt - 0.12), (-1.0, 0.25, 0.0, L / 2 + 0.25 * yt - 0.08)]
    # Cabin: slanted windscreen, rear window and (slightly) side windows.
    sf = (d["front0"] - d["front1"]) / hc
    sr = (d["rear1"] - d["rear0"]) / hc
    inset = 0.08
    cabin = [(0, 1, 0, yc), (0, -1, 0, -yt),
             (1.0, sf, 0.0, d["front0"] + sf * yt), (-1.0, sr, 0.0, -d["rear0"] + sr * yt),
             (0.0, 0.25, 1.0, hw - inset + 0.25 * yt), (0.0, 0.25, -1.0, hw - inset + 0.25 * yt)]
    w = d["wheel"]
    wheels = []
    for lc in (L / 2 - 0.35 - w / 2 - 0.1, -L / 2 + 0.35 + w / 2):
        for s0, s1 in ((-hw - 0.01, -hw + 0.25), (hw - 0.25, hw + 0.01)):
            wheels.append((2, _box(lc - w / 2, lc + w / 2, s0, s1, 0.0, w), (lc - w / 2, lc + w / 2, s0, s1, 0.0, w)))
    return [(0, body, (-L / 2, L / 2, -hw, hw, yb, yt)),
            (1, cabin, (d["rear0"], d["front0"], -hw, hw, yt, yc))] + wheels


def _render_objects(cam: _Camera, rays: np.ndarray, objects: list[_Object]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Z-buffer of the objects alone: depth (inf = none), instance (-1 = none), part, normal."""
    H, W = rays.shape[:2]
    zbuf = np.full((H, W), np.inf)
    inst = np.full((H, W), -1, dtype=np.int64)
    part = np.zeros((H, W), dtype=np.int64)
    normal = np.zeros((H, W, 3))
    O = cam.origin

    def window(corners: np.ndarray) -> tuple[slice, slice] | None:
        # Only the pixels of a part's projected bounding box are ray-cast.
        u, v, _ = cam.project(corners)
        u0, u1 = int(max(np.floor(u.min()) - 1, 0)), int(min(np.ceil(u.max()) + 1, W))
        v0, v1 = int(max(np.floor(v.min()) - 1, 0)), int(min(np.ceil(v.max()) + 1, H))
        return None if u0 >= u1 or v0 >= v1 else (slice(v0, v1), slice(u0, u1))

    def write(k: int, win: tuple[slice, slice], t: np.ndarray, n: np.ndarray, p: np.ndarray | int) -> None:
        zb, ib, pb, nb = zbuf[win], inst[win], part[win], normal[win]
        closer = t < zb
        zb[closer], ib[closer], nb[closer] = t[closer], k, n[closer]
        pb[closer] = p[closer] if isinstance(p, np.ndarray) else p

    for k, obj in enumerate(objects):
        if obj.cls == _PED:
            win = window(obj.corners())
            if win is None:
                continue
            D = rays[win]
            d = obj.dims
            t, n = _hit_ellipsoid_capsule(O, D, obj, (d["rx"], d["cap"], d["rz"]), d["cap"],
                                          d["body_top"] - d["cap"], 0.0)
            with np.errstate(invalid="ignore"):
                y = O[1] + t * D[..., 1]
            write(k, win, t, n, np.where(y < d["leg_y"], 0, 1))
            t, n = _hit_ellipsoid_capsule(O, D, obj, (d["head_rx"], d["head_ry"], d["head_rz"]), 0.0, 0.0,
                                          d["head_y"])
            write(k, win, t, n, 2)
        else:
            for p, planes, (l0, l1, s0, s1, y0, y1) in _car_parts(obj):
                corners = np.array([obj.base + a * obj.fwd + b * obj.side + np.array([0.0, y, 0.0])
                                    for a in (l0, l1) for b in (s0, s1) for y in (y0, y1)])
                win = window(corners)
                if win is not None:
                    write(k, win, *_hit_convex(O, rays[win], *_local_planes(obj, planes)), p)
    return zbuf, inst, part, normal


# --- layout ------------------------------------------------------------------------------------------------


def _u_extent(cam: _Camera, obj: _Object) -> tuple[float, float]:
    """Horizontal image extent of the object's silhouette."""
    if obj.cls == _PED:
        # The bounding box's corners would overstate an elliptic body; sample its outline instead.
        d = obj.dims
        ang = np.linspace(0.0, 2 * np.pi, 32, endpoint=False)
        ring = np.cos(ang)[:, None] * d["rx"] * obj.side + np.sin(ang)[:, None] * d["rz"] * obj.fwd
        pts = np.concatenate([obj.base + ring + np.array([0.0, y, 0.0])
                              for y in (d["cap"], d["leg_y"], d["body_top"] - d["cap"])])
    else:
        pts = obj.corners()
    u, _, _ = cam.project(pts)
    return float(u.min()), float(u.max())


def _class_z(cls: int) -> tuple[float, float]:
    return _PED_Z if cls == _PED else _CAR_Z


def _random_x(rng: np.random.Generator, cam: _Camera, W: int, cls: int, z: float, street: dict) -> float:
    lo, hi = (0.06 * W - cam.cx) * z / cam.f, (0.94 * W - cam.cx) * z / cam.f
    if cls == _CAR and rng.random() < 0.75:
        rlo = max(lo, street["road_c"] - street["road_hw"] + 1.0)
        rhi = min(hi, street["road_c"] + street["road_hw"] - 1.0)
        if rhi > rlo:
            lo, hi = rlo, rhi
    return float(rng.uniform(lo, hi))


def _place_pair(rng: np.random.Generator, cam: _Camera, W: int, street: dict) -> list[_Object]:
    """Two same-class objects at a 15-50 % relative depth gap whose image silhouettes touch or overlap."""
    cls = int(rng.integers(2))
    zlo, zhi = _class_z(cls)
    for _ in range(40):
        gap = rng.uniform(*_PAIR_GAP)
        z_a = rng.uniform(zlo, min(zhi / (1 + gap), zhi))
        a = _new_object(rng, cls, _random_x(rng, cam, W, cls, z_a, street), z_a)
        b = _new_object(rng, cls, a.x, z_a * (1 + gap))
        overlap = rng.uniform(0.03, 0.55)
        for side in (1, -1) if rng.random() < 0.5 else (-1, 1):
            ua0, ua1 = _u_extent(cam, a)
            for _ in range(5):
                ub0, ub1 = _u_extent(cam, b)
                wb = ub1 - ub0
                err = (ub0 - (ua1 - overlap * wb)) if side > 0 else (ub1 - (ua0 + overlap * wb))
                b.x -= err * b.z / cam.f
            ub0, ub1 = _u_extent(cam, b)
            in_frame = min(ub1, W) - max(ub0, 0) > 0.5 * (ub1 - ub0)
            if in_frame and not _footprints_overlap(a, b):
                return [a, b]
    return []


def _random_object(rng: np.random.Generator, cam: _Camera, W: int, street: dict, others: list[_Object],
                   cls: int) -> _Object | None:
    for _ in range(30):
        z = rng.uniform(*_class_z(cls))
        obj = _new_object(rng, cls, _random_x(rng, cam, W, cls, z, street), z)
        if not any(_footprints_overlap(obj, o) for o in others):
            return obj
    return None


def _layout(rng: np.random.Generator, cam: _Camera, W: int, street: dict) -> tuple[list[_Object], bool]:
    n = int(rng.choice(5, p=_N_OBJECTS_P)) + 1
    objects: list[_Object] = []
    paired = False
    if n >= 2 and rng.random() < 0.85:
        objects = _place_pair(rng, cam, W, street)
        paired = bool(objects)
    while len(objects) < n:
        obj = _random_object(rng, cam, W, street, objects, int(rng.integers(2)))
        if obj is None:
            break
        objects.append(obj)
    return objects, paired


# --- features ----------------------------------------------------------------------------------------------


def _embedding(channels: int, n: int) -> np.ndarray:
    """(n, channels) fixed embedding of an n-dimensional design space into the feature space."""
    g = np.random.default_rng([_GLOBAL_SEED, channels, n])
    m = g.standard_normal((channels, n))
    if channels >= n:
        q, _ = np.linalg.qr(m)
        return q.T
    return (m / np.linalg.norm(m, axis=0)).T


def _unit(g: np.random.Generator, shape: tuple[int, ...], channels: int) -> np.ndarray:
    v = g.standard_normal(shape + (channels,))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _prototypes(rng: np.random.Generator, channels: int) -> np.ndarray:
    rho_things = rng.uniform(0.1, 0.3)
    rho_stuff = rng.uniform(0.3, 0.6)
    rho_cross = rng.uniform(0.05, 0.2)
    G = np.full((_N_TYPES, _N_TYPES), rho_cross)
    G[:2, :2] = rho_things
    G[2:, 2:] = rho_stuff
    np.fill_diagonal(G, 1.0)
    L = np.linalg.cholesky(G)
    protos = L @ _embedding(channels, _N_TYPES)
    return protos / np.linalg.norm(protos, axis=1, keepdims=True)


def _texture_waves(rng: np.random.Generator, n_comp: int, n_waves: int, wavelength: tuple[float, float],
                   flat_y: bool = False) -> tuple[np.ndarray, np.ndarray]:
    dirs = rng.standard_normal((n_comp, n_waves, 3))
    if flat_y:
        dirs[..., 1] = 0.0
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    lam = np.exp(rng.uniform(np.log(wavelength[0]), np.log(wavelength[1]), (n_comp, n_waves)))
    return dirs * (2 * np.pi / lam)[..., None], rng.uniform(0, 2 * np.pi, (n_comp, n_waves))


def _eval_waves(points: np.ndarray, k: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """(N, n_comp) unit-variance quasi-random fields: sums of random plane waves in 3D (a solid texture)."""
    n_comp, n_waves, _ = k.shape
    # float32: a few times faster, and phases of at most a few thousand radians keep ~1e-3 rad accuracy.
    arg = points.astype(np.float32) @ k.reshape(-1, 3).T.astype(np.float32) + phase.ravel().astype(np.float32)
    return np.cos(arg).reshape(len(points), n_comp, n_waves).sum(-1, dtype=np.float64) / np.sqrt(n_waves / 2)


def _features(rng: np.random.Generator, channels: int, patch: int, region: np.ndarray, stuff: np.ndarray,
              inst: np.ndarray, part: np.ndarray, points: np.ndarray, objects: list[_Object],
              window: np.ndarray) -> np.ndarray:
    H, W = region.shape
    h, w = H // patch, W // patch
    g = np.random.default_rng([_GLOBAL_SEED, channels, 7])
    n_tex = 4
    tex_dirs = _unit(g, (_N_TYPES, n_tex), channels)
    part_dirs = _unit(g, (2, 3), channels) * np.array([[0.3, 0.22, 0.38], [0.22, 0.36, 0.32]])[..., None]
    window_dir = _unit(g, (), channels) * 0.35
    pos_dirs = _unit(g, (2,), channels)
    scale_dir = _unit(g, (), channels)
    protos = _prototypes(rng, channels)

    # Every pixel feature is a linear combination of a few vectors, and the patch feature is the mean of its
    # pixels' features (boundary patches mix by coverage). So the per-patch means of the coefficients are
    # accumulated, and the C-dimensional vectors are combined once per patch.
    rows, cols = np.divmod(np.arange(H * W), W)
    patch_of = (rows // patch) * w + cols // patch
    n_px = float(patch * patch)
    coefs: list[np.ndarray] = []
    vecs: list[np.ndarray] = []

    def add(sel: np.ndarray, weights: np.ndarray | None, vec: np.ndarray, per_pixel: float = 1.0) -> None:
        coefs.append(np.bincount(patch_of[sel], weights=weights, minlength=h * w) * (per_pixel / n_px))
        vecs.append(vec)

    # Texture terms are smooth at the pixel scale, so their patch means are taken over every other pixel in
    # each direction (four times cheaper, same result to within a few %).
    sub = (((rows % 2) == 0) & ((cols % 2) == 0)) if patch % 2 == 0 else np.ones(H * W, bool)
    sub_w = float(H * W) / sub.sum()

    flat_stuff, flat_inst, flat_part = stuff.ravel(), inst.ravel(), part.ravel()
    P = points.reshape(-1, 3)
    stuff_amp = {_ROAD: 0.3, _PAVEMENT: 0.35, _FACADE: 0.3, _HEDGE: 0.45, _WALL: 0.3, _SKY: 0.15}
    stuff_wl = {_ROAD: (0.8, 6.0), _PAVEMENT: (0.6, 4.0), _FACADE: (1.5, 8.0), _HEDGE: (0.5, 3.0),
                _WALL: (1.0, 6.0), _SKY: (30.0, 200.0)}
    for s in (_ROAD, _PAVEMENT, _FACADE, _HEDGE, _WALL, _SKY):
        k, ph = _texture_waves(rng, n_tex, 3, stuff_wl[s])
        sel = np.flatnonzero((flat_inst < 0) & (flat_stuff == s))
        if sel.size == 0:
            continue
        add(sel, None, protos[s])
        sel = sel[sub[sel]]
        tex = _eval_waves(P[sel], k, ph)
        for j in range(n_tex):
            add(sel, tex[:, j], stuff_amp[s] / np.sqrt(n_tex) * tex_dirs[s, j], sub_w)
    win = np.flatnonzero(window.ravel() > 0)
    if win.size:
        add(win, None, window_dir)
    for i, obj in enumerate(objects):
        offset = _unit(rng, (), channels) * rng.uniform(0.15, 0.3)
        amp = rng.uniform(0.35, 0.55) if obj.textured else rng.uniform(0.05, 0.12)
        k, ph = _texture_waves(rng, n_tex, 3, (0.15, 1.2))
        sel = np.flatnonzero(flat_inst == i)
        if sel.size == 0:
            continue
        # A weak dependence on apparent size: DINO's keys of a far, small object differ from a near one's.
        add(sel, None, protos[obj.cls] + offset + 0.12 * np.log(obj.z / 8.0) * scale_dir)
        for p in range(3):
            sp = sel[flat_part[sel] == p]
            if sp.size:
                add(sp, None, part_dirs[obj.cls, p])
        sel = sel[sub[sel]]
        tex = _eval_waves(P[sel] - obj.base, k, ph)
        for j in range(n_tex):
            add(sel, tex[:, j], amp / np.sqrt(n_tex) * tex_dirs[obj.cls, j], sub_w)
    feats = (np.stack(coefs, 1) @ np.stack(vecs)).reshape(h, w, channels)
    # Attention mixes a little of each patch's neighbourhood into it.
    bleed = rng.uniform(0.15, 0.3)
    feats = (1 - bleed) * feats + bleed * ndimage.gaussian_filter(feats, (0.8, 0.8, 0), mode="nearest")
    yy, xx = np.meshgrid(np.linspace(-0.5, 0.5, h), np.linspace(-0.5, 0.5, w), indexing="ij")
    feats += 0.08 * yy[..., None] * pos_dirs[0] + 0.06 * xx[..., None] * pos_dirs[1]
    noise = rng.uniform(0.35, 0.55) / np.sqrt(channels)
    feats += rng.normal(0.0, noise, feats.shape)
    return np.ascontiguousarray(feats.transpose(2, 0, 1), dtype=np.float32)


# --- background --------------------------------------------------------------------------------------------


def _street(rng: np.random.Generator) -> dict:
    kind = str(rng.choice(["facade", "hedge", "wall"], p=[0.55, 0.25, 0.2]))
    street = {"road_c": rng.uniform(-2.5, 2.5), "road_hw": rng.uniform(3.0, 4.5), "kerb": 0.16,
              "kind": kind, "road": rng.uniform(62, 100) + np.array([0.0, 1.0, 5.0]),
              "pavement": rng.uniform(125, 170) + np.array([6.0, 3.0, 0.0]) * rng.uniform(0, 1.5),
              "tile": rng.uniform(0.4, 0.8), "dash": rng.uniform(2.0, 3.5), "dash_period": rng.uniform(6.0, 10.0)}
    if kind == "facade":
        edges = [-300.0]
        while edges[-1] < 300.0:
            edges.append(edges[-1] + rng.uniform(7.0, 18.0))
        palette = np.array([[215, 200, 170], [170, 90, 70], [150, 150, 150], [230, 225, 210], [195, 170, 140],
                            [140, 160, 170], [200, 140, 110]], float)
        n = len(edges) - 1
        street.update(b_edges=np.array(edges), b_height=rng.uniform(7.0, 22.0, n),
                      b_colour=np.array([_jitter(rng, palette[i]) for i in rng.integers(len(palette), size=n)]),
                      b_floor=rng.uniform(2.9, 3.4, n), b_col=rng.uniform(2.2, 3.2, n),
                      b_winw=rng.uniform(0.4, 0.6, n), b_winh=rng.uniform(0.42, 0.55, n))
    elif kind == "hedge":
        street.update(top=rng.uniform(3.0, 6.0), top_waves=rng.uniform(0, 2 * np.pi, 4),
                      top_amp=rng.uniform(0.3, 0.9), colour=np.array([55.0, 95.0, 45.0]) + rng.uniform(-15, 15, 3))
    else:
        street.update(top=rng.uniform(2.0, 3.5), colour=_jitter(rng, np.array([150.0, 120.0, 100.0]), 20.0),
                      block=rng.uniform(0.35, 0.7))
    street["sky_top"] = np.array([95.0, 145.0, 215.0]) + rng.uniform(-20, 20, 3)
    street["sky_horizon"] = np.array([215.0, 225.0, 235.0]) + rng.uniform(-10, 10, 3)
    street["clouds"] = _texture_waves(rng, 2, 6, (0.4, 2.5), flat_y=True)
    street["cloudiness"] = rng.uniform(-0.3, 0.5)
    street["sun"] = np.array([rng.uniform(-0.8, 0.8), rng.uniform(0.5, 1.0), rng.uniform(-0.6, 0.3)])
    street["sun"] /= np.linalg.norm(street["sun"])
    return street


def _backdrop_top(street: dict, x: np.ndarray) -> np.ndarray:
    kind = street["kind"]
    if kind == "facade":
        i = np.clip(np.searchsorted(street["b_edges"], x) - 1, 0, len(street["b_height"]) - 1)
        return street["b_height"][i]
    if kind == "hedge":
        ph = street["top_waves"]
        wiggle = (np.sin(x * 0.9 + ph[0]) + 0.6 * np.sin(x * 2.3 + ph[1]) + 0.4 * np.sin(x * 5.1 + ph[2])
                  + 0.25 * np.sin(x * 11.7 + ph[3]))
        return street["top"] + street["top_amp"] * wiggle / 2.25
    return np.full(x.shape, street["top"])


# --- image -------------------------------------------------------------------------------------------------


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _lines(coord: np.ndarray, period: float, width: float, footprint: np.ndarray) -> np.ndarray:
    """Coverage of thin periodic lines (tile joints, mortar); fades out where a pixel spans many periods."""
    dist = np.abs((coord / period + 0.5) % 1.0 - 0.5) * period
    cover = _smoothstep((width / 2 + footprint / 2 - dist) / np.maximum(footprint, 1e-6))
    fade = np.exp(-0.5 * (footprint / period * 2.0) ** 2)
    return cover * fade + (1 - fade) * min(width / period, 1.0)


def _image(rng: np.random.Generator, cam: _Camera, street: dict, region: np.ndarray, stuff: np.ndarray,
           inst: np.ndarray, part: np.ndarray, points: np.ndarray, normal: np.ndarray, depth: np.ndarray,
           objects: list[_Object], window: np.ndarray, rays: np.ndarray) -> np.ndarray:
    H, W = region.shape
    img = np.zeros((H, W, 3))
    sun = street["sun"]
    pix_m = depth / cam.f  # metres per pixel on a surface facing the camera
    X, Y, Z = points[..., 0], points[..., 1], points[..., 2]

    ground = region == _GROUND
    if ground.any():
        fp = (pix_m * np.maximum(1.0, depth / cam.height))[ground]
        x, z = X[ground], Z[ground]
        road = stuff[ground] == _ROAD
        grain = rng.normal(0.0, 1.0, x.shape)
        k, ph = _texture_waves(rng, 2, 4, (0.5, 5.0), flat_y=True)
        stains = _eval_waves(points[ground], k, ph)
        col = np.where(road[:, None], street["road"], street["pavement"])
        col = col * (1 + 0.06 * stains[:, :1] * np.exp(-fp / 2)[:, None]) + (6 * grain * np.exp(-fp * 8))[:, None]
        rc, hw = street["road_c"], street["road_hw"]
        joints = np.maximum(_lines(x, street["tile"], 0.02, fp), _lines(z, street["tile"], 0.02, fp))
        col = np.where(road[:, None], col, col * (1 - 0.35 * joints[:, None]))
        kerb = (np.abs(np.abs(x - rc) - hw) < street["kerb"] / 2 + fp / 2)
        col[kerb] = col[kerb] * 0.5 + 0.5 * np.array([185.0, 185.0, 180.0])
        dash = (np.abs(x - rc) < 0.06 + fp / 2) & ((z % street["dash_period"]) < street["dash"])
        edge = np.abs(np.abs(x - rc) - (hw - 0.3)) < 0.05 + fp / 2
        col[(dash | edge) & road] = 0.3 * col[(dash | edge) & road] + 0.7 * np.array([225.0, 225.0, 215.0])
        # Contact and cast shadows: soft ellipses under each object, nudged away from the sun.
        shade = np.ones(x.shape)
        for obj in objects:
            hl, hwd, top = obj.half_extents()
            off = -sun[[0, 2]] / max(sun[1], 0.3) * top * 0.35
            rel = np.stack([x - obj.x - off[0], z - obj.z - off[1]], -1)
            a = rel @ np.array([obj.fwd[0], obj.fwd[2]]) / (hl + 0.25)
            b = rel @ np.array([obj.side[0], obj.side[2]]) / (hwd + 0.25)
            shade = np.minimum(shade, 0.55 + 0.45 * _smoothstep(np.sqrt(a * a + b * b) * 1.6 - 0.7))
        img[ground] = col * shade[:, None]

    back = region == _BACKDROP
    if back.any():
        x, y = X[back], Y[back]
        fp = pix_m[back]
        grain = rng.normal(0.0, 1.0, x.shape)
        kind = street["kind"]
        if kind == "facade":
            i = np.clip(np.searchsorted(street["b_edges"], x) - 1, 0, len(street["b_height"]) - 1)
            col = street["b_colour"][i].copy()
            win = window[back]
            # Windows reflect the sky more towards their top.
            floor = street["b_floor"][i]
            glass = np.array([60.0, 70.0, 85.0]) + 40 * _smoothstep((y % floor) / floor)[:, None]
            col = col * (1 - win[:, None]) + glass * win[:, None]
            shop = y < 3.2
            col[shop] = col[shop] * 0.55 + np.array([30.0, 30.0, 35.0]) * 0.45
            col *= (0.92 + 0.08 * np.sin(x * 0.7))[:, None]
        elif kind == "hedge":
            k, ph = _texture_waves(rng, 2, 6, (0.08, 0.6))
            leaves = _eval_waves(points[back], k, ph)
            col = street["colour"] * (1 + 0.22 * leaves[:, :1] * np.exp(-fp * 4)[:, None] + 0.1 * leaves[:, 1:2])
            col += (10 * grain * np.exp(-fp * 6))[:, None]
        else:
            b = street["block"]
            mortar = np.maximum(_lines(y, b * 0.5, 0.02, fp), _lines(x + 0.5 * b * (np.floor(y / (b * 0.5)) % 2),
                                                                       b, 0.02, fp))
            col = street["colour"] * (1 + 0.08 * np.sin(x * 3.1 + np.floor(y / (b * 0.5)) * 1.7))[:, None]
            col = col * (1 - 0.3 * mortar[:, None])
        shade = 0.85 + 0.15 * max(-sun[2], 0.0)
        img[back] = col * shade + (3 * grain)[:, None]

    sky = region == _SKYREG
    if sky.any():
        d = rays[sky]
        elev = d[:, 1] / np.linalg.norm(d, axis=-1)
        tmix = _smoothstep(elev / 0.45)[:, None]
        col = street["sky_horizon"] * (1 - tmix) + street["sky_top"] * tmix
        k, ph = street["clouds"]
        # Clouds live on a plane high above: their pattern shrinks towards the horizon.
        on_plane = d / np.maximum(d[:, 1:2], 0.03)
        billow = _eval_waves(on_plane, k, ph)
        cloud = _smoothstep(0.45 * billow[:, 0] + 0.2 * billow[:, 1] + street["cloudiness"]) * 0.75
        img[sky] = col * (1 - cloud[:, None]) + np.array([240.0, 240.0, 242.0]) * cloud[:, None]

    for i, obj in enumerate(objects):
        sel = inst == i
        if not sel.any():
            continue
        p = part[sel]
        loc = points[sel] - obj.base
        ly = loc[:, 1]
        ls = loc @ obj.side
        c = obj.colours
        if obj.cls == _PED:
            col = np.where((p == 0)[:, None], c["legs"], c["top"])
            head = p == 2
            hair = head & (ly > obj.dims["head_y"] + 0.1 * obj.dims["head_ry"])
            col[head] = c["skin"]
            col[hair] = c["hair"]
            # The gap between the legs, in shade.
            between = (p == 0) & (np.abs(ls) < 0.018 + 0.25 * obj.dims["rx"] * (1 - ly / obj.dims["leg_y"]))
            col[between] = col[between] * 0.45
            if obj.textured:
                per = obj.pattern["period"]
                stripe = (np.floor(ly / per) % 2) if obj.pattern["kind"] < 1 else (
                    (np.floor(ly / per) + np.floor((ls + 1) / per)) % 2)
                on = (p == 1) & (stripe > 0)
                col[on] = 0.4 * col[on] + 0.6 * c["accent"]
        else:
            col = np.where((p == 0)[:, None], c["paint"], np.where((p == 1)[:, None], c["glass"], c["wheel"]))
            lf = loc @ obj.fwd
            d = obj.dims
            body = p == 0
            if obj.textured:
                # Two-tone paint or a stripe, door seams and road dirt low on the body.
                if obj.pattern["kind"] < 1:
                    on = body & (ly < d["body_bottom"] + 0.35 * (d["body_top"] - d["body_bottom"]))
                else:
                    on = body & (np.abs(ly - (d["body_bottom"] + d["body_top"]) / 2) < 0.07)
                col[on] = 0.3 * col[on] + 0.7 * c["accent"]
                seam = body & (np.abs(np.abs(lf - 0.15 * d["L"]) - 0.45) < 0.015)
                col[seam] = col[seam] * 0.55
                dirt = body & (ly < d["body_bottom"] + 0.2)
                col[dirt] = col[dirt] * 0.7 + np.array([60.0, 50.0, 40.0]) * 0.3
            # Head and tail lights on the end faces.
            lamp = body & (np.abs(ls) > d["W"] / 2 - 0.38) & (ly > d["body_top"] - 0.24) & (ly < d["body_top"] - 0.08)
            front, rear = lamp & (lf > d["L"] / 2 - 0.25), lamp & (lf < -d["L"] / 2 + 0.12)
            col[front] = np.array([235.0, 230.0, 205.0])
            col[rear] = np.array([170.0, 25.0, 25.0])
            glass = p == 1
            col[glass] = col[glass] + 50 * _smoothstep((ly[glass] - obj.dims["body_top"]) * 3)[:, None]
        n = normal[sel]
        lambert = np.clip(n @ sun, 0.0, 1.0)
        sky_light = 0.5 + 0.5 * n[:, 1]
        light = 0.35 + 0.55 * lambert + 0.2 * sky_light
        if obj.cls == _CAR:
            view = -rays[sel] / np.linalg.norm(rays[sel], axis=-1, keepdims=True)
            refl = 2 * (n * view).sum(-1, keepdims=True) * n - view
            spec = np.clip(refl @ sun, 0, 1) ** 20
            col = col * light[:, None] + 120 * spec[:, None]
        else:
            col = col * light[:, None]
        img[sel] = col + rng.normal(0.0, 3.0 if obj.textured else 1.5, col.shape)

    # Aerial perspective and a little sensor noise.
    haze = (1 - np.exp(-depth / rng.uniform(150.0, 400.0))).astype(np.float32)[..., None]
    img = img.astype(np.float32)
    img += (street["sky_horizon"].astype(np.float32) - img) * haze
    img += 2.0 * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# --- depth -------------------------------------------------------------------------------------------------


def _estimated_depth(rng: np.random.Generator, metric: np.ndarray, patch: int) -> np.ndarray:
    """What Depth Anything V2 followed by ``disparity_to_depth`` would give for this metric depth map."""
    H, W = metric.shape
    disp = 1.0 / metric
    disp = ndimage.gaussian_filter(disp, rng.uniform(0.2, 0.5) * patch, mode="nearest")
    # Errors are relative: the estimator is about as unsure of a near surface as of a far one in log-depth,
    # and sky-like far regions stay near zero disparity.
    # Estimators' errors are smooth blotches, not pixel grain.
    grain = ndimage.gaussian_filter(rng.standard_normal((H, W)), max(1.0, 0.5 * patch))
    grain /= grain.std()
    yy, xx = np.meshgrid(np.linspace(0, 1, H), np.linspace(0, 1, W), indexing="ij")
    bias = np.zeros((H, W))
    for _ in range(3):
        ang, lam, ph = rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 2.5), rng.uniform(0, 2 * np.pi)
        bias += np.sin(2 * np.pi * (np.cos(ang) * xx + np.sin(ang) * yy) / lam + ph)
    bias *= rng.uniform(0.02, 0.05) / np.sqrt(1.5)
    disp = disp * (1 + rng.uniform(0.01, 0.03) * grain + bias)
    disp = np.maximum(disp, 0.0)
    scale = np.exp(rng.uniform(np.log(0.5), np.log(50.0)))
    shift = rng.uniform(-0.02, 0.05) * scale * disp.max()
    return disparity_to_depth(scale * disp + shift)


# --- the scene ---------------------------------------------------------------------------------------------


@dataclass
class _StreetGeometry:
    """Everything about a scene but its appearance, for the renderer and for tests.

    ``metric`` is the near-backdrop metric depth (m) that the picture is drawn from; ``estimator_metric`` is
    the metric depth the depth estimator sees (the same, or with the far backdrop). ``region``: 0 ground,
    1 backdrop, 2 sky, 3 object. ``backdrop_ratio`` / ``sky_ratio``: depth of the backdrop / sky plane over
    the farthest object's depth (near), or over the objects' median pixel depth (far). ``rng`` is the
    scene's generator, positioned where the appearance draws start.
    """

    rng: np.random.Generator
    cam: _Camera
    rays: np.ndarray
    street: dict
    objects: list[_Object]
    paired: bool
    inst: np.ndarray
    part: np.ndarray
    normal: np.ndarray
    region: np.ndarray
    stuff: np.ndarray
    points: np.ndarray
    window: np.ndarray
    metric: np.ndarray
    estimator_metric: np.ndarray
    backdrop_ratio: float
    sky_ratio: float
    z_far_obj: float

    @property
    def masks(self) -> np.ndarray:
        H, W = self.inst.shape
        if not self.objects:
            return np.zeros((0, H, W), bool)
        return np.stack([self.inst == i for i in range(len(self.objects))])

    @property
    def classes(self) -> np.ndarray:
        return np.array([o.cls for o in self.objects], dtype=np.int64)


def _street_geometry(seed: int, grid: int = 30, patch_size: int = 8, far_backdrop: bool = False
                     ) -> _StreetGeometry:
    if grid < 4 or patch_size < 1:
        raise ValueError(f"need grid >= 4 and patch_size >= 1; got {grid}, {patch_size}")
    rng = np.random.default_rng(seed)
    H = W = grid * patch_size
    cam = _Camera(f=rng.uniform(1.05, 1.3) * W, cx=W / 2, cy=H / 2, height=rng.uniform(1.45, 1.75),
                  pitch=np.deg2rad(rng.uniform(2.0, 7.0)))
    rays = cam.rays(H, W)
    street = _street(rng)
    objects, paired = _layout(rng, cam, W, street)

    # Objects too hidden to count are removed from the scene, not just from the ground truth: the picture
    # then holds no unlabelled object. A hidden object is first moved elsewhere (a few times), so crowded
    # scenes keep their count.
    moves = 6
    while True:
        zbuf, inst, part, normal = _render_objects(cam, rays, objects)
        areas = np.bincount(inst[inst >= 0], minlength=len(objects))
        if len(objects) == 0 or areas.min() >= MIN_AREA_FRACTION * H * W:
            break
        worst = int(np.argmin(areas))
        if paired and worst < 2:
            paired = False
        others = objects[:worst] + objects[worst + 1:]
        moved = _random_object(rng, cam, W, street, others, objects[worst].cls) if moves > 0 else None
        moves -= 1
        if moved is None:
            objects.pop(worst)
        else:
            objects[worst] = moved

    # Backdrop: a vertical plane across the street behind the farthest object.
    if objects:
        far_extent = max(o.z + max(o.half_extents()[:2]) for o in objects)
        z_far_obj = max(o.z for o in objects)
    else:
        far_extent = z_far_obj = rng.uniform(6.0, 12.0)
    back_ratio = rng.uniform(1.3, 2.5)
    z_back = max(back_ratio * z_far_obj, far_extent + 1.0)
    back_ratio = z_back / z_far_obj
    sky_ratio = min(back_ratio * rng.uniform(1.05, 1.25), 3.0)
    z_sky = max(sky_ratio * z_far_obj, z_back * 1.02)
    sky_ratio = z_sky / z_far_obj

    O = cam.origin
    dy, dz = rays[..., 1], rays[..., 2]
    with np.errstate(divide="ignore"):
        t_ground = np.where(dy < 0, -O[1] / np.where(dy < 0, dy, -1.0), np.inf)
    t_back = z_back / dz
    ground_hit = O + t_ground[..., None] * rays
    back_hit = O + t_back[..., None] * rays
    is_ground = np.isfinite(t_ground) & (ground_hit[..., 2] < z_back)
    is_back = ~is_ground & (back_hit[..., 1] < _backdrop_top(street, back_hit[..., 0]))
    region = np.where(is_ground, _GROUND, np.where(is_back, _BACKDROP, _SKYREG))
    metric = np.where(is_ground, t_ground, np.where(is_back, t_back, z_sky / dz))
    points = np.where(is_ground[..., None], ground_hit, np.where(is_back[..., None], back_hit,
                                                                  O + (z_sky / dz)[..., None] * rays))
    obj_px = inst >= 0
    region = np.where(obj_px, _OBJECT, region)
    metric = np.where(obj_px, zbuf, metric)
    points = np.where(obj_px[..., None], O + zbuf[..., None] * rays, points)
    normal = np.where(obj_px[..., None], normal, 0.0)

    rc, hw = street["road_c"], street["road_hw"]
    stuff = np.where(region == _GROUND,
                     np.where(np.abs(points[..., 0] - rc) < hw, _ROAD, _PAVEMENT),
                     np.where(region == _BACKDROP, _BACKDROP_TYPES[street["kind"]], _SKY))
    window = np.zeros((H, W))
    if street["kind"] == "facade":
        x, y = points[..., 0], points[..., 1]
        i = np.clip(np.searchsorted(street["b_edges"], x) - 1, 0, len(street["b_height"]) - 1)
        fl, col = street["b_floor"][i], street["b_col"][i]
        half_w = street["b_winw"][i] / 2
        centre = (np.floor(x / col) + 0.5) * col
        # Whole windows only: none cut by the edge of a building.
        whole = (centre - half_w * col > street["b_edges"][i] + 0.3) & (
            centre + half_w * col < street["b_edges"][i + 1] - 0.3)
        in_w = whole & (np.abs(x - centre) < half_w * col) & (np.abs((y / fl) % 1.0 - 0.55) < street["b_winh"][i] / 2)
        window = ((region == _BACKDROP) & in_w & (y > 3.4) & (y < _backdrop_top(street, x) - 0.8)).astype(float)

    geo = _StreetGeometry(rng=rng, cam=cam, rays=rays, street=street, objects=objects, paired=paired, inst=inst,
                          part=part, normal=normal, region=region, stuff=stuff, points=points, window=window,
                          metric=metric, estimator_metric=metric, backdrop_ratio=float(back_ratio),
                          sky_ratio=float(sky_ratio), z_far_obj=float(z_far_obj))
    return _far_backdrop(geo, seed) if far_backdrop else geo


def _far_backdrop(geo: _StreetGeometry, seed: int) -> _StreetGeometry:
    """The same scene with the backdrop's pixels at the depth of distant buildings and sky.

    The ratios come from a generator of their own, so the scene's draws, and with them the features, image
    and masks, do not depend on the flag.
    """
    far = np.random.default_rng([seed, 1])
    obj_px = geo.inst >= 0
    median = float(np.median(geo.metric[obj_px])) if obj_px.any() else geo.z_far_obj
    back_ratio = far.uniform(20.0, 45.0)
    sky_ratio = min(back_ratio * far.uniform(1.1, 1.4), 60.0)
    dz = geo.rays[..., 2]
    metric = np.where(geo.region == _BACKDROP, back_ratio * median / dz, geo.metric)
    metric = np.where(geo.region == _SKYREG, sky_ratio * median / dz, metric)
    return replace(geo, estimator_metric=metric, backdrop_ratio=float(back_ratio), sky_ratio=float(sky_ratio))


def _render_street(seed: int, grid: int = 30, patch_size: int = 8, channels: int = 64,
                   far_backdrop: bool = False) -> tuple[Scene, _StreetGeometry]:
    """The scene and its geometry."""
    if channels < 1:
        raise ValueError(f"need channels >= 1; got {channels}")
    geo = _street_geometry(seed, grid, patch_size, far_backdrop)
    rng = geo.rng
    features = _features(rng, channels, patch_size, geo.region, geo.stuff, geo.inst, geo.part, geo.points,
                         geo.objects, geo.window)
    image = _image(rng, geo.cam, geo.street, geo.region, geo.stuff, geo.inst, geo.part, geo.points, geo.normal,
                   geo.metric, geo.objects, geo.window, geo.rays)
    depth = _estimated_depth(rng, geo.estimator_metric, patch_size)
    if not (np.isfinite(depth).all() and (depth > 0).all()):
        raise AssertionError("street scene produced a non-finite or non-positive depth")
    scene = Scene(features=features, depth=depth.astype(np.float32), image=image, masks=geo.masks,
                  classes=geo.classes, patch_size=patch_size)
    return scene, geo


def make_street_scene(seed: int, grid: int = 30, patch_size: int = 8, channels: int = 64,
                      far_backdrop: bool = False) -> Scene:
    """Scene ``seed`` of the street family (see the module docstring).

    Args:
        seed: random seed; the same arguments give identical arrays.
        grid: patches per image side (H = W = grid * patch_size pixels).
        patch_size: pixels per patch side.
        channels: feature channels C.
        far_backdrop: give the backdrop the depth of distant buildings and sky (20-60 times the objects'
            median depth) instead of a near facade / hedge / wall; only the depth changes.

    Returns:
        A :class:`~cuts3d.synthetic.scene.Scene` with classes 0 = pedestrian, 1 = car.
    """
    return _render_street(seed, grid, patch_size, channels, far_backdrop)[0]


__all__ = ["CLASS_NAMES", "make_street_scene"]
