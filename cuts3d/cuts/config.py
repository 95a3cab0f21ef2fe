"""Configuration of the pseudo-mask engine (paper Sec. 3.1-3.4, spec sections 2, 3 and 7).

Every number the paper leaves open is a field here, with the spec's recommendation (or the value our
measurements on synthetic scenes chose) as its default; each field's docstring names the paper symbol.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from cuts3d.config_io import check_keys, coerce_fields, load_yaml_mapping, parse_overrides

Method = Literal["cuts3d", "maskcut"]
Eigensolver = Literal["auto", "dense", "lanczos", "lobpcg", "torch"]


def _default_confidence_taus() -> tuple[float, ...]:
    # GUESS (spec 3.5 / 7.7): T = 6 thresholds linearly spaced over the tau_knn ablation range 0.10-0.13.
    return tuple(float(t) for t in np.linspace(0.10, 0.13, 6))


@dataclass
class CutConfig:
    """Settings of :func:`cuts3d.segment`. Defaults reproduce the paper where it is explicit.

    Attributes:
        method: ``"cuts3d"`` (NCut with Spatial Importance, then LocalCut in 3D and Spatial
            Confidence) or ``"maskcut"`` (CutLER's MaskCut, reproduced exactly; depth is ignored).
        n_iters: N, the number of NCut rounds per image (CutLER: 3).
        tau_ncut: tau_ncut, threshold that binarises the cosine affinity W (CutLER README: 0.15).
        eps: weight given to affinity edges below tau_ncut (CutLER: 1e-5).
        affinity: edge weights of the NCut graph for cuts3d. ``"binary"``: MaskCut's W = 1 where S > tau_ncut
            else eps. ``"similarity"`` (default): the same edges weighted by the cosine similarity S itself
            (the paper's "affinity graph with cosine similarities as edge weights", Sec. 3.1); measured +4 to
            +9 mean AP50 over binary on the synthetic families (benchmarks/RESULTS.md). maskcut is always binary.
        spatial_importance: use the Spatial Importance map (Eq. 1-2) in the way ``si_apply`` says (cuts3d).
        si_apply: how Spatial Importance enters. ``"grow"`` (default): the semantic mask handed to LocalCut
            is grown by ``si_grow`` patches into the neighbouring patches of high importance (s >=
            (1 + beta) / 2), the paper's stated purpose ("include the spatially important areas of the object
            in the semantic mask for LocalCut to find the accurate 3D boundary"); NCut's graph is unchanged and
            LocalCut cuts the added patches off again where they lie across a 3D border. ``"binarize"``: Eq. 3
            as printed, W = clip(S, 0, 1) ** e_ij, then MaskCut's tau_ncut (edges can appear and disappear;
            with ``si_form="literal"`` this is the paper's reading, kept for its ablation). ``"weights"``: the
            exponent only re-weights the edges of ``affinity="similarity"`` (creates and removes none). On
            the synthetic families every Eq. 3 form cost AP50 (literal + binarize: about -12 mean); ``"grow"``
            was neutral (within 0.2); see README, "Defaults".
        si_grow: patches by which ``si_apply="grow"`` grows the semantic mask. GUESS 1.
        si_beta: beta, lower bound of the normalised Spatial Importance (Eq. 2). GUESS 0.6.
        si_sigma: sigma of the Gaussian in Eq. 1, in patches of the feature grid. GUESS 1.0.
        si_abs: take |G*D - D| (True) or the signed, then min-max normalised, difference. GUESS True.
        si_form: how the normalised importance s (Eq. 2, in [beta, 1]) becomes node exponents in Eq. 3 (see
            :func:`cuts3d.cuts.spatial_importance.si_exponents`): ``"literal"`` e = s (the equations as
            printed: flat regions get beta, which raises their similarities), ``"inverted"`` e = 1 + beta - s
            (3D borders raised), ``"reciprocal"`` e = 1 / s (only pairs at 3D borders are lowered). Used by
            ``si_apply="binarize"`` and ``"weights"``.
        si_exponent: how the node-wise exponents become the exponent of edge (i, j) in Eq. 3:
            ``"pair_mean"`` uses (e_i + e_j) / 2 (symmetric, GUESS default); ``"column"`` uses e_j
            (numpy broadcasting, not symmetric: an edge is kept when either direction passes).
        depth_scale: how depth becomes the point cloud's z (see :mod:`cuts3d.cuts.pointcloud`): ``"log"``
            (default) z = depth_gain * ln(D / median D), so LocalCut sees depth ratios and a far backdrop does
            not matter; ``"minmax"`` z = per-image min-max normalised depth (the spec's GUESS; a backdrop
            20-60x deeper than the objects flattens them to below tau_knn). Spatial Importance uses the same z.
        depth_gain: multiplier of the log depth (about the focal length in image widths). GUESS 1.0.
        tau_knn: tau_knn, LocalCut drops kNN edges longer than this (unit-scale cloud; Table 5a: 0.115).
        knn_k: k of the kNN graph on the 3D points. GUESS 10.
        knn_capacity: ``"unit"`` (every kept edge has capacity 1, mirroring MaskCut's binary W) or
            ``"gaussian"`` (capacity exp(-w^2 / tau_knn^2)). GUESS ``"unit"``.
        depth_pool: how the (H, W) depth is brought to the (h, w) patch grid: ``"median"``,
            ``"avg"`` (adaptive average pooling, what depthg does) or ``"center"`` (the pixel at each
            patch centre). Average pooling gives border patches intermediate depths that bridge two
            surfaces (spec 8); median was best by measurement on synthetic scenes (README, "Defaults").
        sink: LocalCut sink t. ``"min_abs"``: argmin |x| over the semantic mask (paper's wording,
            default, best measured); ``"far"``: the mask point farthest from the source in 3D.
        trivial_cut: what LocalCut returns when the minimum s-t cut costs as much as cutting off a
            terminal's own edges, i.e. there is no 3D border between s and t. ``"literal"`` keeps the
            source side reachable from s in the residual graph (the smallest source side of a minimum cut;
            for one flat object this is the source patch alone), ``"max_side"`` the largest one (every node
            that cannot reach t), ``"guard"`` (default) the literal side unless the cut only cuts the source
            off (flow >= deg(s)), then the source's component; ``"component"`` keeps the source's whole
            3D-connected component whenever the cut is no cheaper than a terminal's edges. Without any 3D cue (constant depth) both fall back to the semantic 2D
            connected component of the seed, as MaskCut.
        confidence_taus: the T thresholds tau_knn^(t) of Eq. 4 (GUESS: linspace(0.10, 0.13, 6)).
        confidence_floor: minimum value of the Spatial Confidence map inside its region (Table 5c: 0.5).
        rest_iou: stop when the semantic bipartition has IoU >= this with the complement of all masks
            found so far, the paper's "rest" rule. GUESS 0.9.
        score_front: multiply each cuts3d mask's score (mean Spatial Confidence, Sec. 3.4) by
            (1 + f) / 2, f = the share of the patches around the mask that lie behind it by more than
            tau_knn / 2 (:func:`cuts3d.cuts.foreground.front_fraction`; the image frame counts as not behind).
            Objects stand in front of their surroundings, walls, floors and skies do not, so background
            masks (mean SC 1.0: nothing to cut inside them) no longer rank first or go first into confident
            copy-paste. Not in the paper; False gives the paper's score. Chosen by measurement.
        max_iou_prev: MaskCut drops a mask whose IoU with the previous round's mask exceeds this (0.5).
        min_area: MaskCut drops a mask covering at most this fraction of the patch grid (0.01).
        crf: refine each mask with a dense CRF when an image is given (cuts3d's own compiled copy of
            pydensecrf's arithmetic, :class:`cuts3d.masks.crf.DenseCRF`).
        crf_iters, crf_pos_xy, crf_pos_w, crf_bi_xy, crf_bi_rgb, crf_bi_w: MaskCut's dense CRF settings
            (10 iterations, Gaussian sxy 3 compat 7, bilateral sxy 50 srgb 5 compat 10).
        crf_min_iou: a mask whose CRF result has IoU below this with the mask before the CRF is dropped (0.5).
        eigensolver: Fiedler vector solver. ``"dense"`` is scipy.linalg.eigh on (D - W, D), exactly as
            CutLER; ``"lanczos"`` (scipy eigsh) and ``"lobpcg"`` (scipy) work on the normalised affinity;
            ``"torch"`` runs torch.linalg.eigh on ``device``; ``"auto"`` picks lanczos on CPU and torch on
            CUDA for cuts3d, and dense for maskcut (CutLER's sign-dependent reverse rule is reproduced
            exactly only with LAPACK's eigenvector sign; the other solvers agree up to sign).
        device: torch device for the affinity matrix (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"``).
        seed: seed of the random start vectors of the iterative eigensolvers (results are deterministic).
    """

    method: Method = "cuts3d"
    n_iters: int = 3
    tau_ncut: float = 0.15
    eps: float = 1e-5
    affinity: Literal["binary", "similarity"] = "similarity"
    spatial_importance: bool = True
    si_apply: Literal["grow", "binarize", "weights"] = "grow"
    si_grow: int = 1
    si_beta: float = 0.6
    si_sigma: float = 1.0
    si_abs: bool = True
    si_form: Literal["literal", "inverted", "reciprocal"] = "literal"
    si_exponent: Literal["pair_mean", "column"] = "pair_mean"
    depth_scale: Literal["log", "minmax"] = "log"
    depth_gain: float = 1.0
    tau_knn: float = 0.115
    knn_k: int = 10
    knn_capacity: Literal["unit", "gaussian"] = "unit"
    depth_pool: Literal["median", "avg", "center"] = "median"
    sink: Literal["min_abs", "far"] = "min_abs"
    trivial_cut: Literal["guard", "component", "literal", "max_side"] = "guard"
    confidence_taus: tuple[float, ...] = field(default_factory=_default_confidence_taus)
    confidence_floor: float = 0.5
    rest_iou: float = 0.9
    score_front: bool = True
    max_iou_prev: float = 0.5
    min_area: float = 0.01
    crf: bool = True
    crf_iters: int = 10
    crf_pos_xy: float = 3.0
    crf_pos_w: float = 7.0
    crf_bi_xy: float = 50.0
    crf_bi_rgb: float = 5.0
    crf_bi_w: float = 10.0
    crf_min_iou: float = 0.5
    eigensolver: Eigensolver = "auto"
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        self.confidence_taus = tuple(float(t) for t in self.confidence_taus)
        self.validate()

    def validate(self) -> None:
        """Refuse choices and ranges that would crash later or silently give no masks (one-line ValueError).

        Ranges (every number must also be finite): n_iters >= 1; 0 < tau_ncut < 1; 0 < eps < 1; si_grow >= 0;
        0 < si_beta <= 1; si_sigma > 0; depth_gain > 0; tau_knn > 0 (LocalCut drops every kNN edge otherwise);
        knn_k >= 1; every confidence_taus > 0 and at least one; 0 <= confidence_floor <= 1; 0 < rest_iou <= 1;
        0 <= max_iou_prev <= 1; 0 <= min_area < 1 (1 drops every mask); crf_iters >= 0; crf_pos_xy, crf_bi_xy,
        crf_bi_rgb > 0; crf_pos_w, crf_bi_w >= 0; 0 <= crf_min_iou <= 1; seed >= 0.
        """
        choices = {
            "method": ("cuts3d", "maskcut"),
            "si_form": ("literal", "inverted", "reciprocal"),
            "si_apply": ("grow", "binarize", "weights"),
            "affinity": ("binary", "similarity"),
            "si_exponent": ("pair_mean", "column"),
            "depth_scale": ("log", "minmax"),
            "knn_capacity": ("unit", "gaussian"),
            "depth_pool": ("median", "avg", "center"),
            "sink": ("min_abs", "far"),
            "trivial_cut": ("guard", "component", "literal", "max_side"),
            "eigensolver": ("auto", "dense", "lanczos", "lobpcg", "torch"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"CutConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")
        if self.si_apply == "weights" and self.affinity != "similarity":
            raise ValueError("CutConfig.si_apply='weights' sharpens edge weights, so it needs affinity='similarity' (binary weights are 1 ** e = 1)")
        # (field, test, rule as the message states it). `not (lo < x)` style tests are False for NaN, so NaN fails.
        rules: list[tuple[str, Any, str]] = [
            ("n_iters", lambda v: v >= 1, ">= 1"),
            ("tau_ncut", lambda v: 0.0 < v < 1.0, "in (0, 1) (a cosine-similarity threshold; CutLER: 0.15)"),
            ("eps", lambda v: 0.0 < v < 1.0, "in (0, 1) (CutLER: 1e-5)"),
            ("si_grow", lambda v: v >= 0, ">= 0"),
            ("si_beta", lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
            ("si_sigma", lambda v: 0.0 < v < math.inf, "> 0"),
            ("depth_gain", lambda v: 0.0 < v < math.inf, "> 0"),
            ("tau_knn", lambda v: 0.0 < v < math.inf, "> 0 (LocalCut drops every kNN edge longer than it; Table 5a: 0.115)"),
            ("knn_k", lambda v: v >= 1, ">= 1"),
            ("confidence_floor", lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
            ("rest_iou", lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
            ("max_iou_prev", lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
            ("min_area", lambda v: 0.0 <= v < 1.0, "in [0, 1) (a fraction of the patch grid)"),
            ("crf_iters", lambda v: v >= 0, ">= 0"),
            ("crf_pos_xy", lambda v: 0.0 < v < math.inf, "> 0"),
            ("crf_pos_w", lambda v: 0.0 <= v < math.inf, ">= 0"),
            ("crf_bi_xy", lambda v: 0.0 < v < math.inf, "> 0"),
            ("crf_bi_rgb", lambda v: 0.0 < v < math.inf, "> 0"),
            ("crf_bi_w", lambda v: 0.0 <= v < math.inf, ">= 0"),
            ("crf_min_iou", lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
            ("seed", lambda v: v >= 0, ">= 0"),
        ]
        for name, ok, rule in rules:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"CutConfig.{name}={value!r} must be a number {rule}")
            if not ok(value):
                finite = "" if math.isfinite(value) else "finite and "
                raise ValueError(f"CutConfig.{name} must be {finite}{rule}, got {value}")
        if not self.confidence_taus:
            raise ValueError("CutConfig.confidence_taus needs at least one threshold")
        if not all(0.0 < t < math.inf for t in self.confidence_taus):
            raise ValueError(f"CutConfig.confidence_taus must all be > 0, got {list(self.confidence_taus)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists) for YAML/JSON."""
        d = asdict(self)
        d["confidence_taus"] = list(self.confidence_taus)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CutConfig":
        """Build from a dict: unknown keys are refused with the list of valid ones, values are converted to the
        field types (``crf=maybe`` and ``tau_knn=abc`` are one-line errors) and ranges are checked (:meth:`validate`)."""
        if not isinstance(d, dict):
            raise ValueError(f"CutConfig settings must be a mapping of CutConfig fields, got {type(d).__name__}")
        check_keys(cls, d, "CutConfig keys")
        return cls(**coerce_fields(cls, d, "CutConfig"))


def load_cut_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> CutConfig:
    """CutConfig from an optional YAML file (a mapping of CutConfig fields) and ``key=value`` overrides.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable or malformed file, unknown key, wrong type or out-of-range value (one line).
    """
    values: dict[str, Any] = CutConfig().to_dict()
    if path is not None:
        values.update(load_yaml_mapping(path, "CutConfig fields"))
    values.update(parse_overrides(overrides))
    return CutConfig.from_dict(values)
