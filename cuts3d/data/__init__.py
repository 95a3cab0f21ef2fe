"""Training data for the CutS3D detector: copy-paste augmentation (spec 4.3, 4.5; Eq. 5) and the pseudo-mask dataset."""
