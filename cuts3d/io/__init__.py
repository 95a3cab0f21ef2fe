"""Image input for pseudo-mask extraction over real image folders (issue 5; spec 2.1).

Usage::

    from cuts3d.io import list_images, load_image, resize_square
    for record in list_images("path/to/images"):      # folder, list file or one image
        rgb = load_image(record.path)                   # (H, W, 3) uint8, or ImageLoadError with .reason
        small = resize_square(rgb, 480)                 # MaskCut's fixed-size input
"""

from cuts3d.io.images import (
    IMAGE_EXTENSIONS,
    ImageListing,
    ImageLoadError,
    ImageRecord,
    NoImagesError,
    image_id_for,
    list_images,
    load_image,
    resize_square,
    scan_images,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageListing",
    "ImageLoadError",
    "ImageRecord",
    "NoImagesError",
    "image_id_for",
    "list_images",
    "load_image",
    "resize_square",
    "scan_images",
]
