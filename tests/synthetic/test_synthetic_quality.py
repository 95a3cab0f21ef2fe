"""The 3D gain per scene family and far backdrop, and the background-ranking count (cuts3d.synthetic.quality)."""

import dataclasses

import numpy as np
import pytest

from cuts3d import CutConfig, Instance
from cuts3d.synthetic.quality import background_outranks, score_config, scene_set

MASKCUT = CutConfig(method="maskcut", eigensolver="dense", crf=False)


def _inst(mask, score):
    return Instance(mask, mask, None, score, 0)


def test_background_outranks_counts_only_a_top_ranked_background_mask():
    gt = np.zeros((1, 10, 10), dtype=bool)
    gt[0, 2:5, 2:5] = True
    obj = gt[0].copy()
    wall = np.zeros((10, 10), dtype=bool)
    wall[6:] = True
    assert not background_outranks([_inst(obj, 0.9), _inst(wall, 0.8)], gt)
    assert background_outranks([_inst(obj, 0.8), _inst(wall, 0.9)], gt)
    assert background_outranks([_inst(obj, 0.9), _inst(wall, 0.9)], gt)  # ties go against it
    assert not background_outranks([], gt)
    half = obj | wall  # mostly off the objects but overlapping one: IoU 9/49 >= 0.1, not background
    assert not background_outranks([_inst(half, 1.0)], gt)


# tabletop is left out: there CutS3D is still below MaskCut in AP50 (README, "Defaults").
@pytest.mark.parametrize("family", ["blobs", "indoor", "street"])
@pytest.mark.parametrize("far", [False, True])
def test_cuts3d_beats_maskcut_and_ranks_objects_first(family, far):
    scenes = scene_set(family, range(6), far)
    cuts3d = score_config(CutConfig(crf=False), scenes)
    maskcut = score_config(MASKCUT, scenes)
    assert cuts3d["AP50"] >= maskcut["AP50"] + 10
    assert cuts3d["AP"] >= maskcut["AP"] + 5
    assert cuts3d["bg_outranks"] <= 1


def test_min_max_depth_loses_the_gain_on_far_backdrops():
    scenes = scene_set("blobs", range(4), far_backdrop=True)
    log = score_config(CutConfig(crf=False), scenes)
    minmax = score_config(dataclasses.replace(CutConfig(crf=False), depth_scale="minmax"), scenes)
    assert minmax["AP50"] + 30 < log["AP50"]
