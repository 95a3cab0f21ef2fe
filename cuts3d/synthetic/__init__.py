"""Synthetic 3D scenes with known instance masks, for tests, the demo and benchmarks.

Usage::

    from cuts3d.synthetic import FAMILIES, make_family_scene, make_scene
    scene = make_family_scene("blobs", seed=3, far_backdrop=True)
    scene.features, scene.depth, scene.image, scene.masks

Each family is an independently designed generator (its own geometry, semantics, texture and depth noise), so
that defaults chosen on all of them together are not tuned to one generator's quirks. Every family takes
``far_backdrop``: a backdrop 20-60 times deeper than the objects (sky, a distant street), as metric depth
models and inverted disparity give for outdoor photos.
"""

from __future__ import annotations

from typing import Callable

from cuts3d.synthetic.blobs import make_scene, touching_pair_scene
from cuts3d.synthetic.indoor import make_indoor_scene
from cuts3d.synthetic.scene import Scene
from cuts3d.synthetic.street import make_street_scene
from cuts3d.synthetic.tabletop import make_tabletop_scene

FAMILIES: dict[str, Callable[..., Scene]] = {
    "blobs": make_scene,
    "indoor": make_indoor_scene,
    "street": make_street_scene,
    "tabletop": make_tabletop_scene,
}


def make_family_scene(family: str, seed: int, far_backdrop: bool = False, **kwargs) -> Scene:
    """Scene ``seed`` of ``family`` (a key of :data:`FAMILIES`), optionally with a far backdrop."""
    if family not in FAMILIES:
        raise ValueError(f"unknown scene family {family!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[family](seed=seed, far_backdrop=far_backdrop, **kwargs)


__all__ = ["FAMILIES", "Scene", "make_family_scene", "make_scene", "touching_pair_scene"]
