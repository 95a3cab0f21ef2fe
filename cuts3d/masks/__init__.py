"""Mask post-processing and encoding: dense CRF refinement (MaskCut), COCO RLE."""
