"""Dense CRF refinement of a pseudo-mask (MaskCut post-processing, spec 2.5; used by CutS3D, Sec. 3.2).

Two-label fully connected CRF (Kraehenbuehl & Koltun) on the image: unary from softmax([1 - m, m]) of the
bilinearly resized mask, a Gaussian smoothness term and a bilateral appearance term, mean-field inference,
argmax. Holes are filled, and the mask is rejected when the refined mask has IoU < 0.5 with the input.

The CRF comes from ``pydensecrf2`` (a maintained, Cython-3-compatible fork of pydensecrf; it builds from
source). It is optional: ``pip install "cuts3d[crf]"``.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import torch
from scipy import ndimage

from cuts3d.masks.filters import mask_iou

_MISSING_HINT = (
    "dense CRF refinement needs pydensecrf2, which is not installed; install it with "
    "`pip install \"cuts3d[crf]\"` (needs a C++ compiler) or set crf=False"
)


def crf_available() -> bool:
    """True when pydensecrf2 can be imported."""
    return importlib.util.find_spec("pydensecrf") is not None


def warn_crf_missing() -> None:
    """Warn (once per call site) that CRF refinement is skipped."""
    warnings.warn(_MISSING_HINT + "; CRF refinement is skipped", RuntimeWarning, stacklevel=3)


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
    """MAP labelling of a two-label dense CRF.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (h, w) float or bool foreground mask, resized bilinearly to (H, W).
        iters: mean-field iterations.
        pos_xy, pos_w: Gaussian kernel standard deviation (pixels) and weight.
        bi_xy, bi_rgb, bi_w: bilateral kernel standard deviations (pixels, intensity) and weight.

    Returns:
        (H, W) float32 in {0, 1}.
    """
    if not crf_available():
        raise ImportError(_MISSING_HINT)
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    H, W = image.shape[:2]
    fg = torch.as_tensor(np.asarray(mask, dtype=np.float64))[None]
    logits = torch.cat([1.0 - fg, fg])[None]
    logits = torch.nn.functional.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)[0]
    probs = torch.softmax(logits, dim=0).numpy()
    crf = dcrf.DenseCRF2D(W, H, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=pos_xy, compat=pos_w)
    # pydensecrf needs a writable C-contiguous buffer; arrays from PIL (np.asarray) are read-only.
    rgb = np.require(image, dtype=np.uint8, requirements=["C_CONTIGUOUS", "WRITEABLE"])
    crf.addPairwiseBilateral(sxy=bi_xy, srgb=bi_rgb, rgbim=rgb, compat=bi_w)
    q = np.array(crf.inference(iters)).reshape(2, H, W)
    return np.argmax(q, axis=0).astype(np.float32)


def refine(image: np.ndarray, mask: np.ndarray, min_iou: float = 0.5, **crf_kwargs: float) -> np.ndarray:
    """MaskCut's refinement: CRF, fill holes, reject when IoU(refined, input) < ``min_iou``.

    Args:
        image: (H, W, 3) uint8.
        mask: (H, W) bool mask at image resolution.
        min_iou: acceptance threshold.
        crf_kwargs: forwarded to :func:`densecrf`.

    Returns:
        (H, W) bool refined mask, all False when rejected.
    """
    refined = ndimage.binary_fill_holes(densecrf(image, mask, **crf_kwargs) >= 0.5)
    if mask_iou(mask, refined) < min_iou:
        return np.zeros_like(refined)
    return refined
