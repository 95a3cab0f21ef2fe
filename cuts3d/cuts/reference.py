"""Reference MaskCut, structured like CutLER's ``maskcut.py`` (spec 2.2-2.5), for equivalence tests and speed.

It recomputes the affinity from the (masked) features in every round, builds dense D and solves the dense
generalized eigenproblem with ``scipy.linalg.eigh(D - W, D, subset_by_index=[1, 2])`` as CutLER does, keeps
the seed's connected component, applies the IoU/area filters, paints found patches, upsamples with
``F.interpolate(mode="nearest")``, subtracts earlier masks and runs CutLER's CRF post-processing. It is the
baseline that :func:`cuts3d.segment` with ``CutConfig(method="maskcut", eigensolver="dense")`` must match and
that ``benchmarks/cut_speed.py`` times. Not part of the public API.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from scipy import ndimage

from cuts3d.masks.crf import densecrf


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / (a | b).sum())  # nan for two empty masks, as in CutLER's metric.IoU


def reference_maskcut(
    features: torch.Tensor,
    image: np.ndarray | None,
    out_size: tuple[int, int],
    tau: float = 0.15,
    n_iters: int = 3,
    eps: float = 1e-5,
    crf: bool = True,
) -> list[np.ndarray]:
    """CutLER's MaskCut on one image.

    Args:
        features: (C, h, w) float tensor.
        image: (H, W, 3) uint8 for the CRF (None skips the CRF).
        out_size: (H, W) of the output masks.
        tau, n_iters, eps: MaskCut's tau_ncut, N and eps.
        crf: run the CRF post-processing (needs ``image``).

    Returns:
        list of (H, W) bool masks in discovery order, empty ones removed.
    """
    dims = tuple(features.shape[1:])
    feats = features.reshape(features.shape[0], -1).float()
    painting = torch.zeros(dims, dtype=torch.float64)
    bipartitions: list[np.ndarray] = []
    current = None
    for i in range(n_iters):
        if i > 0:
            painting = painting + current
            painting = (painting > 0).double()
            # float64 painting * float32 keys -> float64 keys from round 1 on, as in CutLER
            feats = (1 - painting).reshape(1, -1) * feats
        f = F.normalize(feats, p=2, dim=0)
        a = (f.T @ f).numpy()
        a = a > tau
        a = np.where(a.astype(float) == 0, eps, a)
        d = np.diag(np.sum(a, axis=1))
        _, vecs = scipy.linalg.eigh(d - a, d, subset_by_index=[1, 2])
        vec = np.copy(vecs[:, 0])
        part = vec > np.sum(vec) / len(vec)
        seed = np.argmax(np.abs(vec))
        p2 = part.reshape(dims)
        corners = int(p2[0][0]) + int(p2[0][-1]) + int(p2[-1][0]) + int(p2[-1][-1])
        reverse = True if corners >= 3 else part[seed] != 1
        if reverse:
            vec = vec * -1
            part = np.logical_not(part)
            seed = np.argmax(vec)
        else:
            seed = np.argmax(vec)
        labels, _ = ndimage.label(part.reshape(dims).astype(float))
        cc = labels[np.unravel_index(seed, dims)]
        mask = torch.from_numpy((labels == cc).astype(np.float64))
        if i >= 1:
            ratio = torch.sum(mask) / mask.shape[0] / mask.shape[1]
            if _iou(current, mask) > 0.5 or ratio <= 0.01:
                mask = torch.zeros(dims, dtype=torch.float64)
        current = mask
        masked_out = 0 if not bipartitions else np.sum(bipartitions, axis=0)
        up = F.interpolate(mask[None, None], size=out_size, mode="nearest")[0, 0].numpy()
        up = up - masked_out
        up[up <= 0] = 0
        bipartitions.append(up)

    out = []
    for part in bipartitions:
        result = part > 0
        if crf and image is not None:
            refined = ndimage.binary_fill_holes(densecrf(image, part) >= 0.5)
            if _iou(torch.from_numpy(part), torch.from_numpy(refined.astype(np.float64))) < 0.5:
                refined = np.zeros_like(refined)
            result = refined
        if result.sum() >= 1:
            out.append(result)
    return out
