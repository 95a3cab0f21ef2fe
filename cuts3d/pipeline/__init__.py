"""Extraction jobs: image folders -> pseudo-mask COCO JSON, sharded, resumable, locally or on Ray."""
