"""Figures: instance overlays, depth and Spatial Confidence panels."""
