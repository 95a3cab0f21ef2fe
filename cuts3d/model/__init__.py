"""Detector-side pieces of CutS3D training (spec 4): DropLoss and the Spatial Confidence mask loss (Eq. 6)."""
