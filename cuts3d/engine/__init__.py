"""Detector training, prediction and self-training (paper Sec. 3.4 and 4; spec 4)."""
