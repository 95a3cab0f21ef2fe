"""cuts3d: unsupervised instance segmentation with CutS3D (ICCV 2025).

Public API::

    from cuts3d import CutConfig, Instance, segment
    instances = segment(features, depth=None, image=None, config=CutConfig())
"""

from cuts3d.cuts.config import CutConfig
from cuts3d.cuts.segment import Instance, segment

__version__ = "0.1.0"

__all__ = ["CutConfig", "Instance", "segment", "__version__"]
