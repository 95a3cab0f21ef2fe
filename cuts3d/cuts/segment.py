"""Per-image pseudo-mask extraction: MaskCut and CutS3D (paper Sec. 3.1-3.4; spec 2.3-2.5 and 3.3).

Usage::

    from cuts3d import CutConfig, segment
    instances = segment(features, depth, image, CutConfig(method="cuts3d"))
    for inst in instances:
        inst.mask, inst.confidence, inst.score

For each of N rounds:

1. NCut on the binarised cosine affinity of the patches not yet assigned (cuts3d: sharpened by Spatial
   Importance, Eq. 1-3) gives the Fiedler vector x and MaskCut's semantic bipartition B.
2. maskcut: the 4-connected component of B holding the seed is the mask; it is dropped when its IoU with the
   previous round's mask is > 0.5 or it covers <= 1 % of the grid.
   cuts3d: stop if B is the "rest" (the complement of everything found so far); otherwise LocalCut on the 3D
   points of B cuts out one instance, and T more LocalCuts give its Spatial Confidence map (Eq. 4).
3. The mask's patches are removed from the graph for the next round.

Each mask is then upsampled to the output resolution, earlier masks are subtracted, and (with an image) it is
refined by the dense CRF, holes are filled and it is dropped when the CRF changed it too much. Empty masks are
never returned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from cuts3d.cuts.affinity import RoundGraph, binarize, cosine_similarity, round_graph, similarity_matrix
from cuts3d.cuts.confidence import spatial_confidence
from cuts3d.cuts.config import CutConfig
from cuts3d.cuts.foreground import front_fraction
from cuts3d.cuts.localcut import knn_graph, localcut
from cuts3d.cuts.ncut import bipartition, fiedler_vector, resolve_solver, seed_component
from cuts3d.cuts.pointcloud import depth_to_grid, unproject
from cuts3d.cuts.spatial_importance import edge_exponents, sharpened_threshold, si_exponents, spatial_importance
from cuts3d.masks.crf import DenseCRF
from cuts3d.masks.filters import mask_iou, passes_maskcut_filters, upsample_nearest


@dataclass
class Instance:
    """One pseudo-instance.

    Attributes:
        mask: (H, W) bool at the image's resolution if an image was given, else the depth's, else the grid's.
        patch_mask: (h, w) bool on the feature grid (before upsampling and CRF).
        confidence: (h, w) float32 Spatial Confidence map in [0, 1] (1 outside the instance's confidence
            region); None for maskcut.
        score: in [0, 1], for ranking. cuts3d: ``mean_confidence``, times (1 + ``front``) / 2 when
            ``CutConfig.score_front`` (the default). maskcut: mean over ``patch_mask`` of the oriented Fiedler
            vector min-max scaled to [0, 1] (how strongly NCut put the mask in the foreground).
        iteration: the NCut round (0-based) that found it.
        mean_confidence: cuts3d: mean Spatial Confidence over ``mask`` (the paper's per-mask score); None
            for maskcut.
        front: cuts3d: share of the surrounding patches lying behind the mask in 3D
            (:func:`cuts3d.cuts.foreground.front_fraction`; 1.0 without depth structure); None for maskcut.
    """

    mask: np.ndarray
    patch_mask: np.ndarray
    confidence: np.ndarray | None
    score: float
    iteration: int
    mean_confidence: float | None = None
    front: float | None = None


@dataclass
class _Cut:
    patch_mask: np.ndarray
    confidence: np.ndarray | None
    score: float
    iteration: int
    front: float = 1.0


def _as_features(features: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    f = torch.as_tensor(features)
    if f.ndim != 3:
        raise ValueError(f"features must be (C, h, w), got shape {tuple(f.shape)}")
    if not torch.is_floating_point(f):
        f = f.float()
    # numpy's test is several times faster than torch's on the strided (C, h, w) views backbones return
    numpy_ok = f.device.type == "cpu" and not f.requires_grad and f.dtype in (torch.float32, torch.float64)
    finite = np.isfinite(f.numpy()).all() if numpy_ok else torch.isfinite(f).all()
    if not finite:
        raise ValueError("features contain NaN or inf; check the backbone output")
    return f.to(device=device, dtype=torch.float32)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _output_shape(grid: tuple[int, int], depth: np.ndarray | None, image: np.ndarray | None) -> tuple[int, int]:
    if image is not None:
        return tuple(image.shape[:2])
    if depth is not None:
        return tuple(np.shape(depth))
    return grid


def _check_image(image: np.ndarray | None) -> np.ndarray | None:
    if image is None:
        return None
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    return np.ascontiguousarray(image)


def segment(
    features: np.ndarray | torch.Tensor,
    depth: np.ndarray | None = None,
    image: np.ndarray | None = None,
    config: CutConfig | None = None,
    timings: dict[str, float] | None = None,
) -> list[Instance]:
    """Instance pseudo-masks of one image, in discovery order.

    Args:
        features: (C, h, w) float patch features (e.g. DINO last-block keys), numpy or torch.
        depth: (H, W) float depth, larger = farther, any resolution; NaN/inf are missing values; a
            constant map means no 3D cue (CutS3D then cuts by semantic connectivity alone). Required for
            ``method="cuts3d"``; ``"maskcut"`` only takes its resolution for the output masks.
        image: optional (H, W, 3) uint8 RGB; enables the CRF and sets the output resolution.
        config: :class:`CutConfig`; defaults to ``CutConfig()`` (CutS3D).
        timings: optional dict; seconds spent are added under ``"cuts"`` (graph, NCut, LocalCut, confidence)
            and ``"crf"`` (upsampling and CRF refinement), for per-stage benchmarks.

    Returns:
        list of :class:`Instance`; never contains empty masks.
    """
    config = config or CutConfig()
    device = _resolve_device(config.device)
    feats = _as_features(features, device)
    image = _check_image(image)
    C, h, w = feats.shape
    grid = (h, w)
    n = h * w
    if config.method == "cuts3d" and depth is None:
        raise ValueError("method='cuts3d' needs a depth map; pass depth=... or use CutConfig(method='maskcut')")
    if depth is not None:
        depth = np.asarray(depth)
        if depth.ndim != 2:
            raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    out_shape = _output_shape(grid, depth, image)
    if n < 2:
        return []

    t0 = time.perf_counter()
    if config.method == "maskcut":
        cuts = _maskcut_rounds(feats.reshape(C, n), grid, config, device)
    else:
        cuts = _cuts3d_rounds(similarity_matrix(feats.reshape(C, n)), grid, depth, config, device)
    t1 = time.perf_counter()
    instances = _finalize(cuts, out_shape, image, config)
    if timings is not None:
        timings["cuts"] = timings.get("cuts", 0.0) + t1 - t0
        timings["crf"] = timings.get("crf", 0.0) + time.perf_counter() - t1
    return instances


def _fiedler(w: np.ndarray | RoundGraph, config: CutConfig, device: torch.device) -> np.ndarray | None:
    """Fiedler vector, or None when the graph carries no partition (all edges equal).

    CutLER solves even that degenerate problem (e.g. a blank image: every similarity above tau) and keeps
    whatever vector LAPACK returns, so maskcut with the dense solver does too.
    """
    solver = resolve_solver(config.eigensolver, device, config.method)
    if isinstance(w, RoundGraph):
        constant = w.is_constant()
    else:
        # (row 0 first: a graph whose first row varies is not constant, and the full test costs two n x n passes)
        constant = w[0].min() == w[0].max() and w.min() == w.max()
    if constant and not (config.method == "maskcut" and solver == "dense"):
        return None
    return fiedler_vector(w, solver, seed=config.seed, device=device)


def _fg_score(x: np.ndarray, patch_mask: np.ndarray) -> float:
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 0 or not patch_mask.any():
        return 0.0
    return float(((x.reshape(patch_mask.shape) - lo) / (hi - lo))[patch_mask].mean())


def _maskcut_rounds(
    features: torch.Tensor, grid: tuple[int, int], config: CutConfig, device: torch.device, trace: list | None = None
) -> list[_Cut]:
    """CutLER's MaskCut rounds (spec 2.3-2.4), including its rule that a dropped mask paints nothing.

    Round 0 works on the float32 keys. From round 1 on CutLER multiplies the keys by its float64 painting
    tensor, which promotes them to float64, so the normalisation, the affinity and its comparison with tau
    happen in float64 there; this does the same (``features``: (C, n) float32). ``trace``, if given, gets
    one ``(W, x)`` per round: the affinity and the Fiedler vector as solved (before any reversal).
    """
    n = grid[0] * grid[1]
    painted = np.zeros(n, dtype=bool)
    previous = None
    cuts: list[_Cut] = []
    for k in range(config.n_iters):
        if k == 0:
            similarity = cosine_similarity(features)
        else:
            keep = torch.as_tensor(~painted, dtype=torch.float64, device=features.device)
            similarity = cosine_similarity(features.double() * keep[None, :], dtype=torch.float64)
        w = binarize(similarity, config.tau_ncut, config.eps)
        x = _fiedler(w, config, device)
        if trace is not None:
            trace.append((w, x))
        if x is None:
            break
        fg, x, seed = bipartition(x, grid)
        m = seed_component(fg, seed, outside="complement")
        if not passes_maskcut_filters(previous, m, config.max_iou_prev, config.min_area):
            m = np.zeros_like(m)
        previous = m
        painted |= m.ravel()
        cuts.append(_Cut(m, None, _fg_score(x, m), k))
    return cuts


def _cuts3d_rounds(
    similarity: np.ndarray, grid: tuple[int, int], depth: np.ndarray, config: CutConfig, device: torch.device
) -> list[_Cut]:
    """CutS3D rounds (spec 3.3): sharpened NCut -> rest check -> LocalCut -> Spatial Confidence.

    ``similarity``: (n, n) float32 cosine similarity; it becomes the graph (built once, in place).
    """
    n = grid[0] * grid[1]
    z, has_3d = depth_to_grid(depth, grid, config.depth_pool, config.depth_scale, config.depth_gain)
    points = unproject(z)
    threshold = exponent = grow_mask = None
    if config.spatial_importance and has_3d:
        importance = spatial_importance(z, config.si_sigma, config.si_beta, config.si_abs)
        if config.si_apply == "grow":
            grow_mask = importance >= 0.5 * (1.0 + config.si_beta)
        else:
            exponents = si_exponents(importance, config.si_beta, config.si_form).ravel()
            if config.si_apply == "weights":
                exponent = edge_exponents(exponents, config.si_exponent, device)
            else:
                threshold = sharpened_threshold(exponents, config.tau_ncut, config.si_exponent, device)
    affinity = round_graph(similarity, config.tau_ncut, config.eps, config.affinity == "binary", threshold, exponent)
    painted = np.zeros(n, dtype=bool)
    previous = None
    cuts: list[_Cut] = []
    for k in range(config.n_iters):
        affinity.remove(painted)  # the patches found so far leave the graph
        x = _fiedler(affinity, config, device)
        if x is None:
            break
        fg, x, _ = bipartition(x, grid)
        fg = fg.ravel()
        if k >= 1 and mask_iou(fg, ~painted) >= config.rest_iou:
            break  # NCut returned the "rest": everything is assigned (paper Sec. 3.1)
        semantic = np.flatnonzero(fg & ~painted)
        if semantic.size == 0:
            break
        if has_3d:
            core = semantic
            if grow_mask is not None:
                grown = ndimage.binary_dilation(fg.reshape(grid), structure=np.ones((3, 3), bool), iterations=config.si_grow) & grow_mask
                semantic = np.flatnonzero((fg | grown.ravel()) & ~painted)
            # Terminals come from NCut's own foreground (``core``), located in the (possibly grown) mask.
            pos = np.searchsorted(semantic, core)
            graph = knn_graph(points[semantic], config.knn_k)
            top = int(np.argmax(np.abs(x[core])))
            source = int(pos[top])
            sink = int(pos[_sink(points[core], x[core], top, config.sink)])

            def cut(tau: float) -> np.ndarray:
                side = localcut(graph, source, sink, tau, config.knn_capacity, config.trivial_cut)
                full = np.zeros(n, dtype=bool)
                full[semantic[side]] = True
                return full.reshape(grid)

            m = cut(config.tau_knn)
            confidence = spatial_confidence(np.stack([cut(t) for t in config.confidence_taus]), m, config.confidence_floor)
        else:
            # No 3D cue (constant or missing depth): LocalCut has nothing to cut along, so fall back to
            # MaskCut's 2D connected component of the seed; confidence is uniform.
            m = seed_component(fg.reshape(grid) & ~painted.reshape(grid), int(semantic[np.argmax(x[semantic])]))
            confidence = np.ones(grid, dtype=np.float32)
        painted |= m.ravel()  # painted even if dropped below, so the next round cannot find it again
        if not passes_maskcut_filters(previous, m, config.max_iou_prev, config.min_area):
            continue
        previous = m
        front = front_fraction(m, z, 0.5 * config.tau_knn) if has_3d else 1.0
        cuts.append(_Cut(m, confidence, 0.0, k, front))
    return cuts


def _sink(points: np.ndarray, x: np.ndarray, source: int, mode: str) -> int:
    """LocalCut sink among the semantic mask's points (see CutConfig.sink)."""
    if mode == "min_abs":
        return int(np.argmin(np.abs(x)))
    if mode == "far":
        return int(np.argmax(np.linalg.norm(points - points[source], axis=1)))
    raise ValueError(f"unknown sink rule {mode!r}; choose min_abs or far")


def _finalize(cuts: list[_Cut], out_shape: tuple[int, int], image: np.ndarray | None, config: CutConfig) -> list[Instance]:
    """Upsample, remove overlap with earlier masks, CRF-refine and drop empty masks (spec 2.4-2.5)."""
    use_crf = config.crf and image is not None
    taken = np.zeros(out_shape, dtype=bool)
    upsampled = []
    for c in cuts:
        up = upsample_nearest(c.patch_mask, out_shape) & ~taken
        taken |= up
        upsampled.append(up)
    masks = upsampled
    if use_crf:
        # every mask's unary is known now: one CRF of the image refines them all together
        crf = DenseCRF(image, config.crf_iters, pos_xy=config.crf_pos_xy, pos_w=config.crf_pos_w,
                       bi_xy=config.crf_bi_xy, bi_rgb=config.crf_bi_rgb, bi_w=config.crf_bi_w)
        nonempty = [i for i, up in enumerate(upsampled) if up.any()]
        refined = dict(zip(nonempty, crf.refine([upsampled[i] for i in nonempty], min_iou=config.crf_min_iou)))
        masks = [refined.get(i, up) for i, up in enumerate(upsampled)]
    instances: list[Instance] = []
    for c, mask in zip(cuts, masks):
        if mask.sum() < 1:
            continue
        score, mean_sc, front = c.score, None, None
        if c.confidence is not None:
            mean_sc = float(upsample_nearest(c.confidence, out_shape)[mask].mean())
            front = c.front
            score = mean_sc * 0.5 * (1.0 + front) if config.score_front else mean_sc
        instances.append(Instance(mask, c.patch_mask, c.confidence, score, c.iteration, mean_sc, front))
    return instances
