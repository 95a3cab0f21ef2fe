"""Dense CRF refinement of a pseudo-mask (MaskCut post-processing, spec 2.5; used by CutS3D, Sec. 3.2).

Two-label fully connected CRF (Kraehenbuehl & Koltun) on the image: unary from softmax([1 - m, m]) of the
bilinearly resized mask, a Gaussian smoothness term and a bilateral appearance term, mean-field inference,
argmax. Holes are filled, and the mask is rejected when the refined mask has IoU < 0.5 with the input.

:class:`DenseCRF` (what ``segment`` runs) computes pydensecrf's lattices and filters bit for bit with its own
compiled code (:mod:`cuts3d.masks.lattice`), so it needs no C++ compiler. :func:`densecrf` is CutLER's exact
call of pydensecrf itself (``pydensecrf2``, a maintained fork that builds from source with ``pip install
"cuts3d[crf]"``), kept as the reference the tests and :mod:`cuts3d.cuts.reference` compare against.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from cuts3d.masks.filters import mask_iou
from cuts3d.masks.lattice import Lattice, mean_field, pixel_features

_MISSING_HINT = (
    "the reference dense CRF (CutLER's call of pydensecrf) needs pydensecrf2, which is not installed; install it "
    "with `pip install \"cuts3d[crf]\"` (needs a C++ compiler). cuts3d's own CRF (DenseCRF) does not need it"
)


def crf_available() -> bool:
    """True when pydensecrf2, the reference CRF of :func:`densecrf`, can be imported."""
    return importlib.util.find_spec("pydensecrf") is not None


class DenseCRF:
    """The two-label dense CRF of one image, run for all of its masks at once.

    Mean-field inference is pydensecrf's (Kraehenbuehl's code: same lattices, kernels, normalisation and
    update, reproduced bit for bit by :mod:`cuts3d.masks.lattice`), organised for many two-label problems on one
    image:

    - the pairwise kernels (permutohedral lattices) depend on the image only and are built once; the Gaussian
      (position) kernel depends on the image size only and is kept for the next image of that size;
    - the kernels are linear and Q_bg = 1 - Q_fg, so filtering Q_bg equals filter(1) - filter(Q_fg): one
      channel per mask is filtered instead of two, and the K masks are filtered together as K channels.

    Mean-field often reaches a float32 fixed point (Q unchanged to the bit) before ``iters``; inference stops
    there, which changes nothing, as every later iteration would repeat it.

    The update follows pydensecrf's ``expAndNormalize`` in float32. Only float rounding differs from
    :func:`densecrf` (filter(1) - filter(Q_fg) instead of filter(Q_bg)); the labels are equal except for pixels
    whose two probabilities tie to a unit in the last place (tested).

    Args:
        image: (H, W, 3) uint8 RGB.
        iters: mean-field iterations.
        pos_xy, pos_w: Gaussian kernel standard deviation (pixels) and weight.
        bi_xy, bi_rgb, bi_w: bilateral kernel standard deviations (pixels, intensity) and weight.
    """

    def __init__(self, image: np.ndarray, iters: int = 10, pos_xy: float = 3.0, pos_w: float = 7.0,
                 bi_xy: float = 50.0, bi_rgb: float = 5.0, bi_w: float = 10.0) -> None:
        self.image = np.ascontiguousarray(image, dtype=np.uint8)
        if self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(f"the CRF needs an (H, W, 3) uint8 RGB image, got shape {self.image.shape}")
        self.iters = iters
        self.kernels = dict(pos_xy=pos_xy, pos_w=pos_w, bi_xy=bi_xy, bi_rgb=bi_rgb, bi_w=bi_w)

    def pairwise(self) -> list[tuple[Lattice, float]]:
        """(lattice, weight) of the Gaussian and the bilateral kernel, in the order pydensecrf adds them
        (MaskCut: Gaussian first), which its sum of messages follows."""
        H, W = self.image.shape[:2]
        k = self.kernels
        return [(_position_lattice(H, W, k["pos_xy"]), k["pos_w"]),
                (Lattice.build(pixel_features(self.image, k["bi_xy"], k["bi_rgb"])), k["bi_w"])]

    def labels(self, masks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """MAP labelling of each mask's CRF.

        Args:
            masks: K (h, w) float or bool foreground masks, each resized bilinearly to (H, W).

        Returns:
            K (H, W) float32 arrays in {0, 1}, as :func:`densecrf` gives them one by one.
        """
        if not masks:
            return []
        H, W = self.image.shape[:2]
        K, N = len(masks), H * W
        unary = np.stack([_unary(m, H, W) for m in masks])  # (K, 2, N): background, foreground
        fg, bg, _ = mean_field(self.pairwise(), -unary[:, 1], -unary[:, 0], self.iters)
        return [(fg[i] > bg[i]).reshape(H, W).astype(np.float32) for i in range(K)]  # argmax: ties go to 0

    def refine(self, masks: Sequence[np.ndarray], min_iou: float = 0.5) -> list[np.ndarray]:
        """MaskCut's refinement of each mask: CRF, fill holes, reject when IoU(refined, input) < ``min_iou``.

        Args:
            masks: (H, W) bool masks at image resolution.
            min_iou: acceptance threshold.

        Returns:
            (H, W) bool refined masks, all False where rejected.
        """
        return [_accept(mask, labels, min_iou) for mask, labels in zip(masks, self.labels(masks))]


@functools.lru_cache(maxsize=2)
def _position_lattice(H: int, W: int, sxy: float) -> Lattice:
    """The Gaussian kernel's lattice depends on the image size only (images of a dataset share few sizes)."""
    return Lattice.build(pixel_features(np.zeros((H, W, 3), np.uint8), sxy))


def _accept(mask: np.ndarray, labels: np.ndarray, min_iou: float) -> np.ndarray:
    """MaskCut's step after the CRF: fill the holes of ``labels``; all False when IoU with ``mask`` < ``min_iou``."""
    refined = ndimage.binary_fill_holes(labels >= 0.5)
    if mask_iou(mask, refined) < min_iou:
        return np.zeros_like(refined)
    return refined


def _unary(mask: np.ndarray, H: int, W: int) -> np.ndarray:
    """(2, H * W) float32 unary energies -log softmax([1 - m, m]) of the mask resized bilinearly to (H, W).

    As CutLER computes them: pydensecrf's ``unary_from_softmax`` (probabilities clipped to [1e-5, 1], negative
    log in float64, then float32).
    """
    fg = torch.as_tensor(np.asarray(mask, dtype=np.float64))[None]
    logits = torch.cat([1.0 - fg, fg])[None]
    logits = torch.nn.functional.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)[0]
    probs = np.clip(torch.softmax(logits, dim=0).numpy(), 1e-5, 1.0)
    return np.ascontiguousarray((-np.log(probs)).reshape(2, -1).astype(np.float32))


def densecrf(
    image: np.ndarray,
    mask: np.ndarray,
    iters: int = 10,
    pos_xy: float = 3.0,
    pos_w: float = 7.0,
    bi_xy: float = 50.0,
    bi_rgb: float = 5.0,
    bi_w: float = 10.0,
) -> np.ndarray:
    """MAP labelling of a two-label dense CRF for one mask, exactly as CutLER runs pydensecrf.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (h, w) float or bool foreground mask, resized bilinearly to (H, W).
        iters, pos_xy, pos_w, bi_xy, bi_rgb, bi_w: as for :class:`DenseCRF`.

    Returns:
        (H, W) float32 in {0, 1}.
    """
    if not crf_available():
        raise ImportError(_MISSING_HINT)
    import pydensecrf.densecrf as dcrf

    H, W = image.shape[:2]
    crf = dcrf.DenseCRF2D(W, H, 2)
    crf.setUnaryEnergy(_unary(mask, H, W))
    crf.addPairwiseGaussian(sxy=pos_xy, compat=pos_w)
    # pydensecrf needs a writable C-contiguous buffer; arrays from PIL (np.asarray) are read-only.
    rgb = np.require(image, dtype=np.uint8, requirements=["C_CONTIGUOUS", "WRITEABLE"])
    crf.addPairwiseBilateral(sxy=bi_xy, srgb=bi_rgb, rgbim=rgb, compat=bi_w)
    q = np.array(crf.inference(iters)).reshape(2, H, W)
    return np.argmax(q, axis=0).astype(np.float32)


def refine(image: np.ndarray, mask: np.ndarray, min_iou: float = 0.5, **crf_kwargs: float) -> np.ndarray:
    """MaskCut's refinement of one mask with :func:`densecrf`: CRF, fill holes, reject when
    IoU(refined, input) < ``min_iou``.

    Args:
        image: (H, W, 3) uint8.
        mask: (H, W) bool mask at image resolution.
        min_iou: acceptance threshold.
        crf_kwargs: forwarded to :func:`densecrf`.

    Returns:
        (H, W) bool refined mask, all False when rejected.
    """
    return _accept(mask, densecrf(image, mask, **crf_kwargs), min_iou)
