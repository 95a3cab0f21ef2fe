"""Pseudo-mask engine: affinity, Spatial Importance, NCut, LocalCut, Spatial Confidence (paper Sec. 3.1-3.4)."""
