"""MaskCut as CutLER computes it (issue 10, items 1, 2 and 5), round by round.

``_cutler_maskcut_forward`` below is CutLER's ``maskcut/maskcut.py`` (get_affinity_matrix,
second_smallest_eigenvector, get_salient_areas, check_num_fg_corners, get_masked_affinity_matrix,
maskcut_forward) and TokenCut's ``detect_box`` label selection, written out on CPU with their dtypes: float32
keys in round 0, float64 from round 1 on (the painting tensor is float64). It returns, per round, the binary
affinity, the eigenvector as solved and the pseudo-mask; cuts3d's maskcut rounds must give the same.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.linalg import eigh

from cuts3d import CutConfig, segment
from cuts3d.cuts.segment import _maskcut_rounds


def _iou(a, b):
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / (a | b).sum())


def _cutler_maskcut_forward(feats: torch.Tensor, dims, tau=0.15, N=3, eps=1e-5):
    # On a GPU CutLER moves the keys and the painting to CUDA (its `cpu=False` path); the affinity is computed
    # there and the eigenproblem is solved by scipy on the CPU copy, as here.
    trace = []
    ps = dims[0]
    for i in range(N):
        if i == 0:
            painting = torch.from_numpy(np.zeros(dims)).to(feats.device)
        else:
            dim, num_patch = feats.size()[0], feats.size()[1]
            painting = painting + current_mask.unsqueeze(0).to(feats.device)
            painting[painting > 0] = 1
            painting[painting <= 0] = 0
            feats = feats.clone().view(dim, ps, ps)
            feats = ((1 - painting) * feats).view(dim, num_patch)
        f = F.normalize(feats, p=2, dim=0)
        A = (f.transpose(0, 1) @ f).cpu().numpy()
        A = A > tau
        A = np.where(A.astype(float) == 0, eps, A)
        D = np.diag(np.sum(A, axis=1))
        _, eigenvectors = eigh(D - A, D, subset_by_index=[1, 2])
        eigenvec = np.copy(eigenvectors[:, 0])
        second_smallest_vec = eigenvectors[:, 0]
        bipartition = second_smallest_vec > np.sum(second_smallest_vec) / len(second_smallest_vec)
        seed = np.argmax(np.abs(second_smallest_vec))
        b2 = bipartition.reshape(dims)
        nc = int(b2[0][0]) + int(b2[0][-1]) + int(b2[-1][0]) + int(b2[-1][-1])
        reverse = True if nc >= 3 else bipartition[seed] != 1
        if reverse:
            eigenvec = eigenvec * -1
            bipartition = np.logical_not(bipartition)
            seed = np.argmax(eigenvec)
        else:
            seed = np.argmax(second_smallest_vec)
        objects, _ = ndimage.label(bipartition.reshape(dims).astype(float))
        cc = objects[np.unravel_index(seed, dims)]
        pseudo_mask = np.zeros(dims)
        pseudo_mask[np.where(objects == cc)] = 1
        pseudo_mask = torch.from_numpy(pseudo_mask)
        if i >= 1:
            ratio = torch.sum(pseudo_mask) / pseudo_mask.size()[0] / pseudo_mask.size()[1]
            if _iou(current_mask, pseudo_mask) > 0.5 or ratio <= 0.01:
                pseudo_mask = torch.from_numpy(np.zeros(dims))
        current_mask = pseudo_mask
        trace.append((A, second_smallest_vec.copy(), pseudo_mask.numpy().astype(bool), feats.dtype))
    return trace


def _blobs(rng, g, c, k):
    centres = rng.uniform(0, g, (k, 2))
    protos = rng.standard_normal((k + 1, c))
    yy, xx = np.mgrid[0:g, 0:g]
    lab = np.zeros((g, g), int)
    for j, (cy, cx) in enumerate(centres):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(2, g / 3) ** 2] = j + 1
    f = protos[lab].transpose(2, 0, 1) + 0.6 * rng.standard_normal((c, g, g))
    return f.astype(np.float32)


def _at_tau(rng, g, c):
    # background pairs with cosine similarity right at tau: f = a e0 + b e_i (unit), <f_i, f_j> = a^2 = 0.15
    a = np.sqrt(0.15)
    f = np.zeros((c, g * g), np.float32)
    f[0] = a
    idx = rng.integers(1, c, g * g)
    f[idx, np.arange(g * g)] = np.sqrt(1 - a * a)
    obj = np.zeros((g, g), bool)
    obj[g // 4 : g // 2, g // 4 : 3 * g // 4] = True
    f[:, obj.ravel()] = rng.standard_normal((c, 1)).astype(np.float32) + 0.05 * rng.standard_normal((c, obj.sum())).astype(np.float32)
    return f.reshape(c, g, g)


def _cases():
    rng = np.random.default_rng(0)
    cases = []
    for g in (6, 9, 12, 16):
        cases.append((f"random g{g}", rng.standard_normal((32, g, g)).astype(np.float32)))
        cases.append((f"blobs g{g}", _blobs(rng, g, 48, 3)))
    cases.append(("at tau", _at_tau(rng, 12, 40)))
    cases.append(("homogeneous", np.ones((16, 10, 10), np.float32)))
    cases.append(("zero", np.zeros((16, 10, 10), np.float32)))
    return cases


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,features", _cases(), ids=[c[0] for c in _cases()])
def test_maskcut_rounds_equal_cutler_round_by_round(name, features, device):
    C, h, w = features.shape
    keys = torch.from_numpy(features).reshape(C, -1).to(device)
    expected = _cutler_maskcut_forward(keys, (h, w))
    trace = []
    config = CutConfig(method="maskcut", eigensolver="dense", crf=False, device=device)
    cuts = _maskcut_rounds(keys, (h, w), config, torch.device(device), trace)
    assert len(trace) == len(expected) == len(cuts) == config.n_iters
    for k, ((w_ours, x_ours), (w_ref, x_ref, m_ref, dtype), cut) in enumerate(zip(trace, expected, cuts)):
        assert dtype == (torch.float32 if k == 0 else torch.float64)
        np.testing.assert_array_equal(w_ours, w_ref, err_msg=f"{name}: W of round {k}")
        np.testing.assert_array_equal(x_ours, x_ref, err_msg=f"{name}: Fiedler vector of round {k}")
        np.testing.assert_array_equal(cut.patch_mask, m_ref, err_msg=f"{name}: mask of round {k}")
    # and through the public API: CutLER's masks minus the earlier ones (its masked_out), empty ones dropped
    found = segment(features, None, None, config)  # on `device` too (config.device)
    taken = np.zeros((h, w), dtype=bool)
    final = []
    for _, _, m, _ in expected:
        if (m & ~taken).any():
            final.append(m & ~taken)
        taken |= m
    assert [i.mask.tolist() for i in found] == [m.tolist() for m in final]


def test_round_one_is_float64_where_float32_would_differ():
    # Features whose masked similarities sit within float32 rounding of tau: recomputing them in float32
    # (what cuts3d did before) flips entries of W in round 1; CutLER's float64 does not.
    rng = np.random.default_rng(3)
    feats = _at_tau(rng, 12, 40)
    C, h, w = feats.shape
    ref = _cutler_maskcut_forward(torch.from_numpy(feats).reshape(C, -1), (h, w))
    f = torch.from_numpy(feats).reshape(C, -1)
    keep = torch.from_numpy(~ref[0][2].ravel()).float()
    f32 = F.normalize(f * keep[None, :], dim=0)
    w32 = np.where((f32.T @ f32).numpy() > 0.15, 1.0, 1e-5)
    assert not np.array_equal(w32, ref[1][0])
