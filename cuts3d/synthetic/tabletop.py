"""The ``tabletop`` scene family: a ray-cast photo of a few objects on a table, seen obliquely from above.

Design (independent of the segmentation engine; nothing here was tuned against any method):

* **Geometry.** A pinhole camera 0.4-0.95 m above a table top looks down at 30-52 degrees (vertical field of
  view 34-46 degrees, a slight yaw). Every pixel is ray-cast against the table top (a bounded plane that fills
  the lower part of the image), the room beyond its far edge (floor and back wall, in about 20-37 % of the
  rows) and 1-5 objects resting on the table: class 0 "fruit" (apples, oranges or lemons: ellipsoids with
  curved depth) and class 1 "container" (open mugs with an inside, closed jars, or boxes), one kind per class
  and scene. Objects touch the table at their base; in most scenes with two or more objects, two of the same
  class stand one behind the other so that the front one hides part of the back one (relative depth gap about
  10-45 %), and further objects are placed freely or right beside another one. Depth is metric z-depth in
  metres (the visible table spans about 0.5-1.8 m, the objects' median depth is about 0.45-1.1 m).
* **Features** (a stand-in for DINO ViT keys): unit prototypes from a prescribed Gram matrix (the two object
  classes at cosine 0.1-0.3, the three background stuffs table / floor / wall at 0.3-0.6 to each other, objects
  vs stuff at 0-0.15). Instances add a small offset to their class prototype; surfaces carry texture
  components driven by the same patterns as the RGB (wood grain or a checked cloth, floor planks or tiles,
  mottled fruit skin, printed bands), container tops and insides add a "part" component, and shadows leak in
  weakly. Patch features are the pixel-coverage-weighted mean of the pixel features, plus a smooth positional
  drift and Gaussian noise.
* **Depth** as a monocular estimator gives it: Gaussian blur of 0.2-0.5 patch (in log depth), a few percent of
  spatially correlated multiplicative noise, a smooth low-frequency bias and a global scale error.
* **RGB**: per-class colours (same-class instances alike, slightly jittered), Lambertian shading with a
  Blinn-Phong highlight, cast shadows from the objects, textured table/floor, sensor noise.
* **Ground truth**: visible masks (pixel resolution) of objects covering >= 1 % of the image, disjoint.
* ``far_backdrop=True`` replaces the depth of the room beyond the table's far edge by a far backdrop (a window
  view) at 20-60x the objects' median depth, drawn from a separate generator, so every other output is
  identical to ``far_backdrop=False`` for the same seed.

Usage::

    from cuts3d.synthetic.tabletop import make_tabletop_scene
    scene = make_tabletop_scene(seed=4)                         # 240 x 240 px, 30 x 30 patches of 8 px
    far = make_tabletop_scene(seed=4, far_backdrop=True)        # same scene, window view behind the table
    scene.features.shape, scene.depth.shape, scene.masks.shape  # (64, 30, 30), (240, 240), (K, 240, 240)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cuts3d.synthetic.scene import Scene

FRUIT = 0
CONTAINER = 1

_TABLE, _FLOOR, _WALL = 0, 1, 2
_N_STUFF = 3
_MIN_AREA = 0.01  # ground truth keeps objects whose visible area is at least this share of the image
_PLACE_AREA = 0.012  # placement asks a little more, so kept objects are not all borderline
_EPS = 1e-6
_MAX_ARRANGEMENTS = 60

# Albedos (linear-ish RGB in [0, 1]); a scene picks one per class so that same-class instances look alike.
_FRUIT_KINDS = {
    # name: (colours, horizontal radius range in m, height / width ratio range, elongation range)
    "apple": ([(0.68, 0.09, 0.07), (0.50, 0.68, 0.16), (0.80, 0.25, 0.10)], (0.038, 0.055), (0.82, 0.95), (1.0, 1.05)),
    "orange": ([(0.95, 0.48, 0.05), (0.92, 0.38, 0.04)], (0.037, 0.055), (0.92, 1.0), (1.0, 1.04)),
    "lemon": ([(0.95, 0.84, 0.18), (0.75, 0.82, 0.20)], (0.030, 0.040), (0.85, 0.95), (1.3, 1.5)),
}
_CONTAINER_KINDS = {
    "mug": [(0.90, 0.90, 0.87), (0.18, 0.33, 0.68), (0.14, 0.52, 0.52), (0.74, 0.38, 0.24), (0.12, 0.12, 0.13)],
    "jar": [(0.55, 0.72, 0.60), (0.80, 0.30, 0.22), (0.85, 0.75, 0.55)],
    "box": [(0.66, 0.50, 0.32), (0.85, 0.80, 0.70), (0.25, 0.45, 0.70)],
}


@dataclass
class _Camera:
    pos: np.ndarray  # (3,) world position
    forward: np.ndarray  # unit optical axis
    right: np.ndarray
    down: np.ndarray
    focal: float  # pixels
    size: int  # image side in pixels

    def rays(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Directions through pixel coordinates (u, v), scaled so that the forward component is 1 (t = z-depth)."""
        xn = (u - self.size / 2) / self.focal
        yn = (v - self.size / 2) / self.focal
        return self.forward + xn[..., None] * self.right + yn[..., None] * self.down

    def grid_rays(self, stride: int = 1) -> np.ndarray:
        """Rays through the centres of the pixels (or of ``stride`` x ``stride`` cells), row-major; cached."""
        cache = self.__dict__.setdefault("_grid_cache", {})
        if stride not in cache:
            centres = np.arange(stride / 2, self.size, stride, dtype=np.float64)
            v, u = np.meshgrid(centres, centres, indexing="ij")
            cache[stride] = self.rays(u.ravel(), v.ravel())
        return cache[stride]


@dataclass
class _Room:
    table_x: tuple[float, float]
    table_z: tuple[float, float]  # near, far edge
    floor_y: float
    wall_z: float


@dataclass
class _Object:
    cls: int
    kind: str  # "fruit", "mug", "jar", "box"
    x: float
    z: float
    yaw: float
    dims: tuple[float, ...]  # fruit: (rx, ry, rz); mug/jar: (radius, height); box: (half x, height, half z)
    colour: np.ndarray
    textured: bool

    @property
    def footprint(self) -> float:
        """Radius of a circle on the table that holds the object's base (for non-overlap in 3D)."""
        if self.kind == "fruit":
            return max(self.dims[0], self.dims[2])
        if self.kind == "box":
            return math.hypot(self.dims[0], self.dims[2])
        return self.dims[0]


@dataclass
class _Hit:
    t: np.ndarray  # (N,) ray parameter (= z-depth for primary rays), inf where missed
    normal: np.ndarray  # (N, 3)
    local: np.ndarray  # (N, 3) surface coordinates for texturing
    part: np.ndarray  # (N,) bool: a container's top or inside


class _Waves:
    """A smooth random field: a sum of random plane waves (unit variance), cheap to evaluate anywhere."""

    def __init__(self, rng: np.random.Generator, dim: int, n: int, fmin: float, fmax: float) -> None:
        direction = rng.normal(size=(n, dim))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        self.freq = direction * rng.uniform(fmin, fmax, size=(n, 1))
        self.phase = rng.uniform(0, 2 * np.pi, size=n)
        self.scale = math.sqrt(2.0 / n)

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        return np.cos(2 * np.pi * coords @ self.freq.T + self.phase).sum(-1) * self.scale


def _yaw_matrix(angle: float) -> np.ndarray:
    """Rotation about the vertical axis, local -> world (row vectors: world = local @ R.T)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------------------------- ray casting


def _miss(n: int) -> _Hit:
    return _Hit(np.full(n, np.inf), np.zeros((n, 3)), np.zeros((n, 3)), np.zeros(n, bool))


def _hit_fruit(o: np.ndarray, d: np.ndarray, ob: _Object) -> _Hit:
    radii = np.asarray(ob.dims)
    rot = _yaw_matrix(ob.yaw)
    centre = np.array([ob.x, ob.dims[1], ob.z])  # resting on the table: centre one vertical radius up
    os_ = ((o - centre) @ rot) / radii
    ds = (d @ rot) / radii
    a = (ds * ds).sum(-1)
    b = 2 * (os_ * ds).sum(-1)
    c = (os_ * os_).sum(-1) - 1
    disc = b * b - 4 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    t = np.where((disc > 0) & (t > _EPS), t, np.inf)
    ps = os_ + np.where(np.isfinite(t), t, 0)[:, None] * ds
    normal = _unit((ps / radii) @ rot.T)
    return _Hit(t, normal, ps, np.zeros(len(t), bool))


def _hit_cylinder(o: np.ndarray, d: np.ndarray, ob: _Object) -> _Hit:
    radius, height = ob.dims
    n = len(d)
    o = np.broadcast_to(o, d.shape)
    ox, oy, oz = o[:, 0] - ob.x, o[:, 1], o[:, 2] - ob.z
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    a = np.maximum(dx * dx + dz * dz, 1e-18)
    b = 2 * (ox * dx + oz * dz)

    def side(r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        disc = b * b - 4 * a * (ox * ox + oz * oz - r * r)
        sq = np.sqrt(np.maximum(disc, 0))
        return (-b - sq) / (2 * a), (-b + sq) / (2 * a), disc > 0

    safe_dy = np.where(np.abs(dy) < 1e-12, -1e-12, dy)

    def cap(y: float) -> tuple[np.ndarray, np.ndarray]:
        t = (y - oy) / safe_dy
        return t, np.hypot(ox + t * dx, oz + t * dz)

    t_near, _, ok = side(radius)
    y_near = oy + t_near * dy
    t_side = np.where(ok & (t_near > _EPS) & (y_near >= 0) & (y_near <= height), t_near, np.inf)
    t_top, r_top = cap(height)
    inner = radius * 0.88  # a mug's wall thickness
    if ob.kind == "mug":
        ring = (r_top <= radius) & (r_top >= inner)
        t_ring = np.where((t_top > _EPS) & ring, t_top, np.inf)
        # through the opening: the ray meets the inside wall (far root of the inner cylinder) or the inside bottom
        opening = (t_top > _EPS) & (r_top < inner)
        bottom_y = 0.12 * height
        _, t_far, ok_in = side(inner)
        y_far = oy + t_far * dy
        t_bot, _ = cap(bottom_y)
        t_inside = np.where(ok_in & (y_far >= bottom_y), t_far, t_bot)
        t_inside = np.where(opening, t_inside, np.inf)
    else:
        t_ring = np.where((t_top > _EPS) & (r_top <= radius), t_top, np.inf)
        t_inside = np.full(n, np.inf)

    t = np.minimum(np.minimum(t_side, t_ring), t_inside)
    tt = np.where(np.isfinite(t), t, 0)
    px, py, pz = ox + tt * dx, oy + tt * dy, oz + tt * dz
    radial = np.hypot(px, pz)
    normal = np.zeros((n, 3))
    is_side = np.isfinite(t_side) & (t_side <= t)
    is_top = ~is_side & np.isfinite(t_ring) & (t_ring <= t)
    is_in = np.isfinite(t) & ~is_side & ~is_top
    normal[is_side] = np.stack([px, np.zeros_like(px), pz], -1)[is_side] / radius
    normal[is_top, 1] = 1.0
    in_wall = is_in & (py > 0.12 * height + 1e-4)
    normal[in_wall] = -np.stack([px, np.zeros_like(px), pz], -1)[in_wall] / inner
    normal[is_in & ~in_wall, 1] = 1.0
    # texture coordinates: azimuth, relative height, relative radius (0 on a mug's inside wall and bottom)
    local = np.stack([np.arctan2(pz, px), py / height, np.where(is_in, 0.0, radial / radius)], -1)
    return _Hit(t, normal, local, is_top | is_in)


def _hit_box(o: np.ndarray, d: np.ndarray, ob: _Object) -> _Hit:
    hx, height, hz = ob.dims
    half = np.array([hx, height / 2, hz])
    rot = _yaw_matrix(ob.yaw)
    ol = (o - np.array([ob.x, height / 2, ob.z])) @ rot
    dl = d @ rot
    dl = np.where(np.abs(dl) < 1e-12, 1e-12, dl)
    t0 = (-half - ol) / dl
    t1 = (half - ol) / dl
    tmin, tmax = np.minimum(t0, t1), np.maximum(t0, t1)
    t_in, t_out = tmin.max(-1), tmax.min(-1)
    axis = tmin.argmax(-1)
    t = np.where((t_in <= t_out) & (t_in > _EPS), t_in, np.inf)
    rows = np.arange(len(t))
    nl = np.zeros((len(t), 3))
    nl[rows, axis] = -np.sign(dl[rows, axis])
    pl = ol + np.where(np.isfinite(t), t, 0)[:, None] * dl
    return _Hit(t, nl @ rot.T, pl / half, np.isfinite(t) & (axis == 1))


def _hit_object(o: np.ndarray, d: np.ndarray, ob: _Object) -> _Hit:
    """Exact hits, computed only for the rays that pass through the object's bounding sphere (a few %)."""
    if ob.kind == "fruit":
        centre, radius, fn = np.array([ob.x, ob.dims[1], ob.z]), max(ob.dims), _hit_fruit
    elif ob.kind == "box":
        centre, fn = np.array([ob.x, ob.dims[1] / 2, ob.z]), _hit_box
        radius = math.sqrt(ob.dims[0] ** 2 + (ob.dims[1] / 2) ** 2 + ob.dims[2] ** 2)
    else:
        centre, fn = np.array([ob.x, ob.dims[1] / 2, ob.z]), _hit_cylinder
        radius = math.hypot(ob.dims[0], ob.dims[1] / 2)
    if o.ndim == 1:  # rays from one point (the camera)
        w = centre - o
        dd = np.einsum("ij,ij->i", d, d)
        along = (d @ w) / dd
        miss2 = w @ w - along * along * dd
    else:  # parallel rays (towards a directional light), d of unit length
        w = centre - o
        dd = np.ones(len(o))
        along = w @ d[0]
        miss2 = np.einsum("ij,ij->i", w, w) - along * along
    idx = np.flatnonzero((miss2 <= radius * radius * 1.0001) & (along * np.sqrt(dd) > -radius))
    out = _miss(len(d))
    if idx.size:
        sub = fn(o if o.ndim == 1 else o[idx], d[idx], ob)
        out.t[idx], out.normal[idx], out.local[idx], out.part[idx] = sub.t, sub.normal, sub.local, sub.part
    return out


def _hit_room(o: np.ndarray, d: np.ndarray, room: _Room) -> list[_Hit]:
    """Hits of the table top, the floor and the back wall (planes; the table is bounded). Their texture
    coordinates are the world hit points, which the caller has anyway, so ``local`` is left zero."""
    n = len(d)
    with np.errstate(divide="ignore", invalid="ignore"):
        down = d[:, 1] < -1e-12
        t_table = np.where(down, -o[1] / d[:, 1], np.inf)
        x, z = o[0] + t_table * d[:, 0], o[2] + t_table * d[:, 2]
        on_table = (x >= room.table_x[0]) & (x <= room.table_x[1]) & (z >= room.table_z[0]) & (z <= room.table_z[1])
        t_table = np.where(down & on_table, t_table, np.inf)
        t_floor = np.where(down, (room.floor_y - o[1]) / d[:, 1], np.inf)
        t_wall = np.where(d[:, 2] > 1e-12, (room.wall_z - o[2]) / d[:, 2], np.inf)
    up, towards = np.zeros((n, 3)), np.zeros((n, 3))
    up[:, 1], towards[:, 2] = 1.0, -1.0
    flat, none = np.zeros((n, 3)), np.zeros(n, bool)
    return [_Hit(t_table, up, flat, none), _Hit(t_floor, up, flat, none), _Hit(t_wall, towards, flat, none)]


@dataclass
class _Render:
    t: np.ndarray  # (N,) z-depth
    sid: np.ndarray  # (N,) surface id: 0 table, 1 floor, 2 wall, 3 + k object k
    normal: np.ndarray
    local: np.ndarray
    part: np.ndarray
    point: np.ndarray  # (N, 3) world hit point


def _trace(cam: _Camera, room: _Room, objects: list[_Object]) -> _Render:
    d = cam.grid_rays()
    hits = _hit_room(cam.pos, d, room) + [_hit_object(cam.pos, d, ob) for ob in objects]
    ts = np.stack([h.t for h in hits])
    sid = ts.argmin(0)
    t = ts.min(0)
    # a ray that somehow escapes every surface would see the wall at its plane's distance
    t = np.where(np.isfinite(t), t, room.wall_z)
    normal, local, part = np.zeros((len(d), 3)), np.zeros((len(d), 3)), np.zeros(len(d), bool)
    for k, h in enumerate(hits):
        sel = sid == k
        normal[sel], local[sel], part[sel] = h.normal[sel], h.local[sel], h.part[sel]
    return _Render(t, sid, normal, local, part, cam.pos + t[:, None] * d)


def _shadowed(points: np.ndarray, normals: np.ndarray, light: np.ndarray, objects: list[_Object]) -> np.ndarray:
    """True where the way to the (directional) light is blocked by an object."""
    origin = points + normals * 1e-3
    d = np.broadcast_to(_unit(light), points.shape)
    blocked = np.zeros(len(points), bool)
    for ob in objects:
        blocked |= np.isfinite(_hit_object(origin, d, ob).t)
    return blocked


# ----------------------------------------------------------------------------------------------- scene layout


def _draw_camera(rng: np.random.Generator, size: int) -> tuple[_Camera, _Room, float]:
    """Camera and room; the table's far edge is put where a drawn share of the rows shows the room behind it."""
    while True:
        pitch = math.radians(rng.uniform(30, 52))
        vfov = math.radians(rng.uniform(34, 46))
        yaw = math.radians(rng.uniform(-10, 10))
        centre_dist = rng.uniform(0.75, 1.2)  # along the optical axis to the table at the image centre
        edge_row = rng.uniform(0.2, 0.34)
        height = centre_dist * math.sin(pitch)
        forward = np.array([math.sin(yaw) * math.cos(pitch), -math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
        right = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
        cam = _Camera(np.array([0.0, height, 0.0]), forward, right, np.cross(right, forward), 0.0, size)
        cam.focal = (size / 2) / math.tan(vfov / 2)
        edge_ray = cam.rays(np.array([size / 2]), np.array([edge_row * size]))[0]
        bottom_ray = cam.rays(np.array([size / 2]), np.array([float(size)]))[0]
        t_edge, t_bottom = height / -edge_ray[1], height / -bottom_ray[1]
        if t_edge <= 1.8 and t_bottom >= 0.5:
            break
    z_far = float(cam.pos[2] + t_edge * edge_ray[2])
    room = _Room(
        table_x=(-rng.uniform(1.0, 1.5), rng.uniform(1.0, 1.5)),
        table_z=(-0.5, z_far),
        floor_y=-rng.uniform(0.70, 0.78),
        wall_z=z_far + rng.uniform(0.5, 2.5),
    )
    return cam, room, edge_row


def _table_point(cam: _Camera, u: float, v: float) -> np.ndarray:
    d = cam.rays(np.array([u]), np.array([v]))[0]
    return cam.pos + (cam.pos[1] / -d[1]) * d


def _shape(rng: np.random.Generator, cls: int, kind: str, fruit_kind: str, colour: np.ndarray) -> _Object:
    jitter = np.clip(colour * rng.uniform(0.9, 1.1, 3), 0, 1)
    if cls == FRUIT:
        _, radius, squash, elong = _FRUIT_KINDS[fruit_kind]
        r = rng.uniform(*radius)
        dims = (r * rng.uniform(*elong), r * rng.uniform(*squash), r)
        return _Object(cls, "fruit", 0.0, 0.0, rng.uniform(0, np.pi), dims, jitter, True)
    if kind == "box":
        dims = (rng.uniform(0.035, 0.075), rng.uniform(0.05, 0.16), rng.uniform(0.035, 0.075))
    elif kind == "mug":
        dims = (rng.uniform(0.038, 0.05), rng.uniform(0.08, 0.11))
    else:
        dims = (rng.uniform(0.035, 0.055), rng.uniform(0.08, 0.15))
    return _Object(cls, kind, 0.0, 0.0, rng.uniform(0, np.pi), dims, jitter, True)


def _top(ob: _Object) -> float:
    return 2 * ob.dims[1] if ob.kind == "fruit" else ob.dims[1]


def _fits(ob: _Object, others: list[_Object], room: _Room, touching: _Object | None = None) -> bool:
    """On the table, and not inside another object (``touching`` may be met at the rim, as intended)."""
    r = ob.footprint
    if ob.z + r > room.table_z[1] - 0.005 or not (room.table_x[0] + r < ob.x < room.table_x[1] - r):
        return False
    for other in others:
        gap = math.hypot(ob.x - other.x, ob.z - other.z) - r - other.footprint
        if gap < (-1e-9 if other is touching else 0.004):
            return False
    return True


def _arrange(
    rng: np.random.Generator, cam: _Camera, room: _Room, edge_row: float, pair: bool, kinds: dict[int, str],
    fruit_kind: str, colours: dict[int, np.ndarray], classes: list[int], placed: list[_Object],
) -> list[_Object] | None:
    """Objects ``placed`` plus random ones for the rest of ``classes`` (None when one finds no place). Objects 0
    and 1 form the pair if any."""
    size = cam.size
    objects = list(placed)
    for i, cls in enumerate(classes[len(placed) :], start=len(placed)):
        ob = _shape(rng, cls, kinds[cls], fruit_kind, colours[cls])
        ob.textured = bool(rng.random() < (0.85 if cls == CONTAINER else 0.7))
        for _ in range(40):
            touching = None
            if i == 1 and pair:
                # behind the front object along the line of sight, close enough that the front one hides part of it
                front = objects[0]
                sight = np.array([front.x - cam.pos[0], front.z - cam.pos[2]])
                dist = float(np.linalg.norm(sight))
                sight /= dist
                across = np.array([-sight[1], sight[0]])
                # the line of sight over the front object's top meets the table this far behind it: the back
                # object must start before that to be partly hidden, and far enough back for a clear depth step
                top = _top(front)
                reach = top * dist / max(cam.pos[1] - top, 1e-3)
                reach += 0.0 if front.kind == "fruit" else 0.7 * front.footprint  # a flat top's far rim
                contact = front.footprint + ob.footprint
                z_front = float(np.dot(np.array([front.x, top / 2, front.z]) - cam.pos, cam.forward))
                lo = max(0.0, 0.11 * z_front / math.hypot(cam.forward[0], cam.forward[2]) - contact)
                hi = max(lo, reach - front.footprint - 0.3 * ob.footprint)
                behind = contact + rng.uniform(lo, hi)
                lateral = rng.uniform(-0.5, 0.5) * contact
                ob.x, ob.z = np.array([front.x, front.z]) + behind * sight + lateral * across
                touching = front
            elif i >= 2 and objects and rng.random() < 0.35:
                # right beside (or behind) an object already placed: contact on the table
                other = objects[int(rng.integers(len(objects)))]
                angle = rng.uniform(0, 2 * np.pi)
                dist = other.footprint + ob.footprint + rng.uniform(0.0, 0.01)
                ob.x, ob.z = other.x + dist * math.cos(angle), other.z + dist * math.sin(angle)
                touching = other
            else:
                p = _table_point(cam, rng.uniform(0.12, 0.88) * size, rng.uniform(edge_row + 0.12, 0.92) * size)
                ob.x, ob.z = float(p[0]), float(p[2])
            if _fits(ob, objects, room, touching):
                break
        else:
            return None
        objects.append(ob)
    return objects


def _coarse_ids(
    cam: _Camera, room_t: np.ndarray | None, objects: list[_Object], stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """z-depth and surface id on every ``stride``-th pixel (a cheap look for checking a layout); ``room_t``: the
    (3, n) depths of table, floor and wall on those pixels, or None to look at the objects alone."""
    d = cam.grid_rays(stride)
    ts = [room_t] if room_t is not None else [np.full((_N_STUFF, len(d)), np.inf)]
    ts = np.concatenate(ts + [_hit_object(cam.pos, d, ob).t[None] for ob in objects])
    g = int(round(math.sqrt(len(d))))
    return ts.min(0).reshape(g, g), ts.argmin(0).reshape(g, g)


def _pair_ok(t: np.ndarray, sid: np.ndarray, min_border: int) -> bool:
    """The pair (objects 0, 1) shares a visible border and the back one is 10-45 % deeper (clean depth)."""
    front, back = sid == _N_STUFF, sid == _N_STUFF + 1
    if not front.any() or (ndimage.binary_dilation(front) & back).sum() < min_border:
        return False
    gap = np.median(t[back]) / np.median(t[front]) - 1
    return 0.1 <= gap <= 0.45


def _layout(rng: np.random.Generator, size: int, patch: int) -> tuple[_Camera, _Room, list[_Object], _Render]:
    cam, room, edge_row = _draw_camera(rng, size)
    n = int(rng.choice([1, 2, 3, 4, 5], p=[0.12, 0.22, 0.24, 0.22, 0.20]))
    pair = n >= 2 and rng.random() < 0.92
    pair_cls = int(rng.integers(2))
    classes = [pair_cls, pair_cls] if pair else [int(rng.integers(2)) for _ in range(min(n, 2))]
    classes += [int(rng.integers(2)) for _ in range(n - len(classes))]
    if n >= 3 and len(set(classes)) == 1:
        classes[-1] = 1 - classes[-1]  # a busier table holds both classes
    kinds = {FRUIT: "fruit", CONTAINER: str(rng.choice(list(_CONTAINER_KINDS)))}
    fruit_kind = str(rng.choice(list(_FRUIT_KINDS)))
    fruit_palette = _FRUIT_KINDS[fruit_kind][0]
    container_palette = _CONTAINER_KINDS[kinds[CONTAINER]]
    colours = {
        FRUIT: np.array(fruit_palette[int(rng.integers(len(fruit_palette)))]),
        CONTAINER: np.array(container_palette[int(rng.integers(len(container_palette)))]),
    }
    # the layout is checked on a coarse pixel grid (about 120 x 120) to keep generation fast
    stride = max(1, size // 120)
    min_border = max(1, patch // stride)
    min_area = _PLACE_AREA * len(cam.grid_rays(stride))
    args = (cam, room, edge_row, pair, kinds, fruit_kind, colours)
    room_t = np.stack([h.t for h in _hit_room(cam.pos, cam.grid_rays(stride), room)])
    best: list[_Object] = []  # fallback: the most objects that were visible enough in one arrangement
    for attempt in range(_MAX_ARRANGEMENTS):
        if attempt == 5 and pair:
            pair = False  # this view does not allow the pair (e.g. too steep): keep the objects, drop the pair
            args = (cam, room, edge_row, pair, kinds, fruit_kind, colours)
        # the pair first, alone, as it is the hardest part to satisfy
        head = None
        for _ in range(8 if pair else 1):
            head = _arrange(rng, *args, classes[: min(n, 2)], [])
            if head is None or not pair:
                break
            t, sid = _coarse_ids(cam, None, head, stride)
            if _pair_ok(t, sid, min_border) and np.bincount(sid.ravel(), minlength=_N_STUFF + 2)[-2:].min() >= min_area:
                break
            head = None
        if head is None:
            continue
        objects = _arrange(rng, *args, classes, head)
        if objects is None:
            continue
        t, sid = _coarse_ids(cam, room_t, objects, stride)
        areas = np.bincount(sid.ravel(), minlength=_N_STUFF + n)
        seen = [ob for ob, area in zip(objects, areas[_N_STUFF:]) if area >= min_area]
        if len(seen) > len(best):
            best = seen
        if areas[_N_STUFF:].min() < min_area or (areas[_FLOOR] + areas[_WALL]) < 0.12 * sid.size:
            continue
        if pair and not _pair_ok(t, sid, min_border):
            continue
        return cam, room, objects, _trace(cam, room, objects)
    # rare: a crowded or tiny view. Objects that were hidden are left out (not merely unlabelled), and without
    # any, a single object stands in the middle of the table
    if not best:
        ob = _shape(rng, classes[0], kinds[classes[0]], fruit_kind, colours[classes[0]])
        p = _table_point(cam, 0.5 * size, (edge_row + 0.92) / 2 * size)
        ob.x, ob.z = float(p[0]), float(p[2])
        best = [ob]
    return cam, room, best, _trace(cam, room, best)


# ----------------------------------------------------------------------------------------------- appearance


def _prototypes(rng: np.random.Generator, channels: int, extra: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit prototypes [fruit, container, table, floor, wall] with DINO-like cosines, plus ``extra`` unit
    directions (texture, parts, instance offsets) that are orthogonal to them where the channels allow."""
    while True:
        gram = np.eye(5)
        gram[0, 1] = rng.uniform(0.1, 0.3)
        for i, j in ((2, 3), (2, 4), (3, 4)):
            gram[i, j] = rng.uniform(0.3, 0.6)
        for i in (0, 1):
            for j in (2, 3, 4):
                gram[i, j] = rng.uniform(0.0, 0.15)
        gram = np.triu(gram) + np.triu(gram, 1).T
        try:
            chol = np.linalg.cholesky(gram)
            break
        except np.linalg.LinAlgError:
            continue
    basis, _ = np.linalg.qr(rng.normal(size=(channels, channels)))
    if channels >= 5 + extra:
        return chol @ basis[:, :5].T, basis[:, 5 : 5 + extra].T
    # too few channels for orthogonal extras: random unit directions are the honest fallback
    protos = chol @ basis[:, :5].T if channels >= 5 else _unit(rng.normal(size=(5, channels)))
    extras = _unit(rng.normal(size=(extra, channels)))
    return protos, extras


def _surface_patterns(
    rng: np.random.Generator, cam: _Camera, render: _Render, objects: list[_Object]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel albedo (N, 3) and a texture signal tau (N,) in about [-1, 1] that also drives the features."""
    n = len(render.sid)
    albedo = np.zeros((n, 3))
    tau = np.zeros(n)
    p = render.point
    to_point = p - cam.pos
    dist = np.linalg.norm(to_point, axis=1)
    # image pixels per metre along the view on a horizontal surface (foreshortened by the grazing angle)
    px_per_m = cam.focal * np.clip(-to_point[:, 1] / dist, 0.05, 1) / dist

    def visible(freq: float, where: np.ndarray) -> np.ndarray:
        """Contrast a camera keeps of a pattern of ``freq`` cycles per metre: a lens and sensor average out
        patterns finer than a few pixels (and render them grey, not as moire)."""
        return np.clip((px_per_m[where] / freq - 2.0) / 3.0, 0.0, 1.0)

    # table: wood (grain along x with warped rings and plank seams) or a checked cloth
    m = render.sid == _TABLE
    if rng.random() < 0.6:
        warp = _Waves(rng, 2, 6, 0.5, 2.5)
        streak = _Waves(rng, 2, 12, 20.0, 60.0)
        light = np.array(rng.choice([(0.62, 0.42, 0.24), (0.78, 0.62, 0.43), (0.45, 0.28, 0.16)]))
        ring_freq = rng.uniform(25, 60)  # growth rings, a few per plank width
        plank = rng.uniform(0.1, 0.2)
        xz = p[m][:, [0, 2]]
        # fibres run along x: rings across z, gently wandering; thin dark late-wood lines
        rings = (0.5 + 0.5 * np.sin(2 * np.pi * (ring_freq * xz[:, 1] + 1.2 * warp(xz)))) ** 3
        rings = 0.3125 + (rings - 0.3125) * visible(ring_freq, m)  # 0.3125: the rings' mean
        fibre = np.clip(streak(xz * np.array([0.1, 1.0])), -2, 2) / 2 * visible(60.0, m)
        plank_tone = np.sin(np.floor(xz[:, 1] / plank) * 12.9898) * 0.5  # neighbouring planks differ slightly
        grain = np.clip(0.5 * plank_tone + 0.6 * (1 - 2 * rings) + 0.2 * fibre, -1, 1)
        seam = np.abs(((xz[:, 1] / plank) % 1.0) - 0.5) > 0.485
        tau[m] = np.where(seam, -1.0, grain)
        tone = 1 + 0.12 * plank_tone - 0.22 * rings + 0.05 * fibre
        albedo[m] = light * (tone * np.where(seam, 0.55, 1.0))[:, None]
    else:
        period = rng.uniform(0.025, 0.06)
        colour = np.array(rng.choice([(0.75, 0.15, 0.15), (0.2, 0.35, 0.7), (0.25, 0.55, 0.3)]))
        xz = p[m][:, [0, 2]]
        bands = 0.5 + ((np.sin(2 * np.pi * xz / period) > 0) - 0.5) * visible(1 / period, m)[:, None]
        check = bands.mean(-1)  # 0, 0.5, 1: white, half tint, full tint
        tau[m] = 2 * check - 1
        albedo[m] = (1 - check)[:, None] * np.array([0.92, 0.92, 0.9]) + check[:, None] * colour

    # floor: planks or tiles
    m = render.sid == _FLOOR
    xz = p[m][:, [0, 2]]
    if rng.random() < 0.5:
        width = rng.uniform(0.1, 0.2)
        var = _Waves(rng, 2, 8, 0.5, 2.0)
        plank_id = np.floor(xz[:, 0] / width)
        shade = np.sin(plank_id * 12.9898) * 0.5 + 0.2 * var(xz)
        seam = np.abs(((xz[:, 0] / width) % 1.0) - 0.5) > 0.47
        tau[m] = np.clip(np.where(seam, -1.0, shade), -1, 1)
        base = np.array(rng.choice([(0.5, 0.34, 0.2), (0.36, 0.24, 0.15)]))
    else:
        tile = rng.uniform(0.25, 0.5)
        frac = (xz / tile) % 1.0
        grout = (np.abs(frac - 0.5) > 0.47).any(-1)
        tau[m] = np.where(grout, -1.0, 0.3)
        base = np.array(rng.choice([(0.6, 0.6, 0.58), (0.7, 0.62, 0.52)]))
    albedo[m] = base * (1 + 0.2 * tau[m][:, None])

    # wall: plain paint with a faint blotchiness and a skirting board near the floor
    m = render.sid == _WALL
    paint = np.array(rng.choice([(0.85, 0.83, 0.78), (0.72, 0.80, 0.82), (0.86, 0.78, 0.66)]))
    blotch = _Waves(rng, 2, 6, 0.5, 2.0)
    skirting_top = -0.68 + rng.uniform(0.0, 0.06)
    xy = p[m][:, :2]
    skirt = xy[:, 1] < skirting_top
    tau[m] = np.where(skirt, 0.8, 0.15 * blotch(xy))
    albedo[m] = np.where(skirt[:, None], np.array([0.93, 0.93, 0.9]), paint * (1 + 0.04 * blotch(xy))[:, None])

    for k, ob in enumerate(objects):
        m = render.sid == _N_STUFF + k
        if not m.any():
            continue
        loc = render.local[m]
        if ob.kind == "fruit":
            mottle = _Waves(rng, 3, 10, 0.4, 1.5)(loc)
            speck = _Waves(rng, 3, 16, 12.0, 30.0)(loc)
            mottle = np.clip(mottle, -1.5, 1.5) / 1.5 if ob.textured else np.zeros_like(mottle)
            speck = np.clip(speck, -2, 2) / 2
            tau[m] = 0.8 * mottle + 0.2 * speck
            # blush and tiny pores: visible, but much subtler in colour than in the features
            colour = ob.colour * (1 + 0.15 * mottle + 0.04 * speck)[:, None]
            stem = (loc[:, 1] > 0.985) & (ob.dims[0] < 1.2 * ob.dims[2])  # a stem dot on top (not on lemons)
            albedo[m] = np.where(stem[:, None], np.array([0.25, 0.18, 0.08]), colour)
        elif ob.kind in ("mug", "jar"):
            phi, height, radial = loc.T
            band_lo, band_hi = sorted(rng.uniform(0.2, 0.85, 2))
            stripes = np.sin(rng.integers(3, 9) * phi) > 0
            in_band = (height > band_lo) & (height < band_hi) & ~render.part[m]
            accent = np.array(rng.choice([(0.9, 0.8, 0.2), (0.1, 0.1, 0.12), (0.85, 0.25, 0.2), (0.95, 0.95, 0.95)]))
            if ob.textured:
                tau[m] = np.where(in_band, np.where(stripes, 1.0, 0.2), -0.3)
                albedo[m] = np.where((in_band & stripes)[:, None], accent, ob.colour)
            else:
                tau[m] = -0.3
                albedo[m] = ob.colour
            top = render.part[m]
            if ob.kind == "jar":  # a metal lid
                albedo[m] = np.where(top[:, None], np.array([0.6, 0.58, 0.52]), albedo[m])
            else:  # the inside darkens with depth (coffee or shadow)
                inside = top & (radial < 0.5)
                albedo[m] = np.where(inside[:, None], ob.colour * 0.45, albedo[m])
        else:  # box: printed label blocks on the sides
            u, v, w = loc.T
            blocks = (np.sin(rng.uniform(2, 5) * np.pi * (u + w)) > 0.3) & (np.abs(v) < rng.uniform(0.3, 0.8))
            top = render.part[m]
            if ob.textured:
                tau[m] = np.where(blocks & ~top, 1.0, -0.3)
                accent = np.array(rng.choice([(0.85, 0.2, 0.2), (0.15, 0.3, 0.6), (0.95, 0.95, 0.95)]))
                albedo[m] = np.where((blocks & ~top)[:, None], accent, ob.colour)
            else:
                tau[m] = -0.3
                albedo[m] = ob.colour
    return np.clip(albedo, 0, 1), tau


def _block_mean(x: np.ndarray, size: int, patch: int) -> np.ndarray:
    """(N, ...) per-pixel values -> (h, w, ...) per-patch means."""
    g = size // patch
    return x.reshape(g, patch, g, patch, *x.shape[1:]).mean(axis=(1, 3))


def _smooth_map(field: _Waves, size: int) -> np.ndarray:
    """A low-frequency field over the image (coordinates in [0, 1]), sampled coarsely and interpolated."""
    coarse = np.linspace(0.0, 1.0, 33)
    v, u = np.meshgrid(coarse, coarse, indexing="ij")
    values = field(np.stack([u, v], -1))
    fine = (np.arange(size) + 0.5) / size * 32
    return ndimage.map_coordinates(values, np.meshgrid(fine, fine, indexing="ij"), order=1, mode="nearest")


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(x, sigma, mode="nearest") if sigma > 0 else x


def make_tabletop_scene(
    seed: int, grid: int = 30, patch_size: int = 8, channels: int = 64, far_backdrop: bool = False
) -> Scene:
    """Scene ``seed`` of the ``tabletop`` family (see the module docstring); H = W = ``grid * patch_size``."""
    if grid < 4 or patch_size < 1 or channels < 1:
        raise ValueError(f"need grid >= 4, patch_size >= 1, channels >= 1; got {grid}, {patch_size}, {channels}")
    rng = np.random.default_rng(seed)
    size = grid * patch_size
    cam, room, objects, render = _layout(rng, size, patch_size)
    n_obj = len(objects)
    n_labels = _N_STUFF + n_obj

    # ---- lighting and RGB
    elevation = math.radians(rng.uniform(35, 70))
    azimuth = rng.uniform(-np.pi, np.pi)
    light = np.array(
        [math.cos(elevation) * math.sin(azimuth), math.sin(elevation), -math.cos(elevation) * math.cos(azimuth)]
    )
    albedo, tau = _surface_patterns(rng, cam, render, objects)
    shadow = _shadowed(render.point, render.normal, light, objects).astype(float)
    # contact shadows on the table are soft (an area light), an object's own shading is crisp
    soft = _blur(shadow.reshape(size, size), size / 200 + 0.4).ravel()
    shadow = np.where(render.sid < _N_STUFF, soft, shadow)
    lit = 1 - shadow
    lambert = np.clip(render.normal @ light, 0, None) * lit
    ambient = rng.uniform(0.3, 0.45)
    ambient_map = np.full(len(tau), ambient)
    view = -_unit(cam.grid_rays())
    half = _unit(light + view)
    gloss = np.zeros(len(tau))
    shininess = np.full(len(tau), 40.0)
    for k, ob in enumerate(objects):
        m = render.sid == _N_STUFF + k
        gloss[m] = {"fruit": 0.25, "mug": 0.35, "jar": 0.3, "box": 0.03}[ob.kind]
        shininess[m] = {"fruit": 25.0, "mug": 60.0, "jar": 80.0, "box": 10.0}[ob.kind]
        if ob.kind == "mug":  # the inside of a mug sees little of the room
            inside = m & render.part & (render.local[:, 2] < 0.5)
            ambient_map[inside] *= 0.5
    gloss[render.sid == _TABLE] = 0.06
    spec = gloss * np.clip((render.normal * half).sum(-1), 0, None) ** shininess * lit
    shade = ambient_map + (1 - ambient) * lambert
    colour = albedo * shade[:, None] + spec[:, None]
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
    vignette = 1 - 0.25 * (xx**2 + yy**2).ravel()
    colour = colour * vignette[:, None] * rng.uniform(0.85, 1.05)
    colour += rng.normal(0, 0.012, colour.shape)
    image = (np.clip(colour, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(size, size, 3)

    # ---- features
    extra = 2 + 2 * n_labels  # shading, parts, then a texture and an instance-offset direction per label
    protos, dirs = _prototypes(rng, channels, extra)
    shade_dir, part_dir = dirs[0], dirs[1]
    tex_dirs = dirs[2 : 2 + n_labels]
    offsets = dirs[2 + n_labels : 2 + 2 * n_labels]
    label_proto = np.zeros((n_labels, channels))
    label_proto[:_N_STUFF] = protos[2:5]
    tex_amp = np.zeros(n_labels)
    tex_amp[_TABLE] = rng.uniform(0.25, 0.45)
    tex_amp[_FLOOR] = rng.uniform(0.2, 0.4)
    tex_amp[_WALL] = rng.uniform(0.05, 0.15)
    for k, ob in enumerate(objects):
        # same-class instances differ by a small offset: semantics alone can hardly tell them apart
        label_proto[_N_STUFF + k] = _unit(protos[ob.cls] + rng.uniform(0.15, 0.3) * offsets[_N_STUFF + k])
        tex_amp[_N_STUFF + k] = rng.uniform(0.15, 0.35) if ob.textured else rng.uniform(0.03, 0.08)
    onehot = np.zeros((len(tau), n_labels))
    onehot[np.arange(len(tau)), render.sid] = 1.0
    coverage = _block_mean(onehot, size, patch_size)  # (h, w, L): share of each surface in each patch
    textured = _block_mean(onehot * (tau * tex_amp[render.sid])[:, None], size, patch_size)
    is_container = np.array([False] * _N_STUFF + [ob.cls == CONTAINER for ob in objects])
    part_share = _block_mean((render.part & is_container[render.sid]).astype(float), size, patch_size)
    shade_dev = _block_mean(shade - shade.mean(), size, patch_size)
    feats = coverage @ label_proto + np.einsum("hwl,lc->hwc", textured, tex_dirs)
    feats += rng.uniform(0.25, 0.45) * part_share[..., None] * part_dir
    feats += rng.uniform(0.1, 0.2) * shade_dev[..., None] * shade_dir
    # a smooth positional drift shared by all surfaces, as in ViT keys; noise sized by its norm per patch so
    # that a patch keeps a cosine of about 0.85-0.93 to its surface's clean feature whatever ``channels`` is
    drift = rng.normal(0, 0.12 / math.sqrt(channels), (3, 3, channels))
    feats += ndimage.zoom(drift, (grid / 3, grid / 3, 1), order=1, mode="nearest")[:grid, :grid]
    feats += rng.normal(0, rng.uniform(0.4, 0.65) / math.sqrt(channels), feats.shape)
    features = np.ascontiguousarray(feats.transpose(2, 0, 1), dtype=np.float32)

    # ---- depth as a monocular estimator sees it
    z = render.t.reshape(size, size).copy()
    obj_pix = render.sid >= _N_STUFF
    backdrop = ((render.sid == _FLOOR) | (render.sid == _WALL)).reshape(size, size)
    far_rng = np.random.default_rng([seed, 1])
    ratio = far_rng.uniform(20, 60)
    window = _Waves(far_rng, 2, 6, 0.3, 1.5)
    if far_backdrop:
        median_obj = float(np.median(render.t[obj_pix])) if obj_pix.any() else float(np.median(z))
        far = ratio * median_obj * np.exp(0.05 * _smooth_map(window, size))
        z[backdrop] = far[backdrop]
    blur_sigma = rng.uniform(0.2, 0.5) * patch_size
    log_z = _blur(np.log(z), blur_sigma)
    # estimator errors are correlated: a fine grain plus blotches about half a patch wide
    fine = _blur(rng.normal(size=(size, size)), 0.6)
    blotch = _blur(rng.normal(size=(size, size)), 0.5 * patch_size)
    noise = rng.uniform(0.005, 0.012) * fine / max(fine.std(), 1e-12)
    noise += rng.uniform(0.012, 0.03) * blotch / max(blotch.std(), 1e-12)
    bias_field = _Waves(rng, 2, 5, 0.3, 1.5)
    bias = rng.uniform(0.03, 0.07) * _smooth_map(bias_field, size) + math.log(rng.uniform(0.9, 1.1))
    depth = np.exp(log_z + noise + bias).astype(np.float32)

    # ---- ground truth: visible objects covering at least 1 % of the image
    masks, classes = [], []
    for k, ob in enumerate(objects):
        m = (render.sid == _N_STUFF + k).reshape(size, size)
        if m.sum() >= _MIN_AREA * size * size:
            masks.append(m)
            classes.append(ob.cls)
    mask_arr = np.stack(masks) if masks else np.zeros((0, size, size), bool)
    return Scene(
        features=features,
        depth=depth,
        image=image,
        masks=mask_arr,
        classes=np.asarray(classes, dtype=np.int64),
        patch_size=patch_size,
    )


__all__ = ["CONTAINER", "FRUIT", "make_tabletop_scene"]
