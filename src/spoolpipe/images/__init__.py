"""Built-in image operations and the no-Python recipe format of ``image.process`` activities.

One private module per mechanism, all on Pillow:

- ``_decode``: guarded decoding (``open_image`` checks bytes, pixels and format
  from the header before any pixel is decoded);
- ``_budget``: the memory budget (``PixelBudget``) that keeps concurrent jobs
  on a small host within memory;
- ``_ops``: the operations, pure functions on decoded images that never modify
  their input, so several outputs can be made from one decode;
- ``_save``: encoding, and atomic replacement of the target (``durable.write_atomic``);
- ``spoolpipe.confine`` (shared with ``files.*``): confinement of every path to the image roots;
- ``_recipe``: the recipe schema, validated in full by ``parse_recipe`` (every
  error, each named by its JSON path, before any work starts);
- ``_run``: ``run_recipe``, which decodes once, shrunk on load, and makes each
  output, smaller ones from larger results where quality allows.

See docs/images.md for the catalogue.
"""

from __future__ import annotations

from ..confine import (
    PathRejected,
    real_roots,
    resolve_path,
)
from ._budget import (
    PIXEL_BUDGET,
    WORKING_COPIES,
    PixelBudget,
)
from ._decode import (
    AVIF_SUPPORTED,
    DEFAULT_FORMATS,
    DEFAULT_LIMITS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageRejected,
    Limits,
    open_image,
)
from ._ops import (
    MAX_DIMENSION,
    Gravity,
    ImageInfo,
    ResizeMode,
    auto_orient,
    blur,
    crop,
    crop_box,
    dominant_color,
    file_sha256,
    flip,
    flop,
    grayscale,
    image_info,
    normalize_mode,
    pixel_sha256,
    placeholder,
    resize,
    rotate,
    sharpen,
    strip,
    thumbnail,
    to_srgb,
    watermark,
)
from ._recipe import (
    AutoOrientOp,
    BlurOp,
    CropOp,
    FlipOp,
    FlopOp,
    GrayscaleOp,
    Op,
    Output,
    PlaceholderOp,
    Recipe,
    RecipeError,
    ResizeOp,
    RotateOp,
    SaveOp,
    SharpenOp,
    SrgbOp,
    StripOp,
    ThumbnailOp,
    WatermarkOp,
    parse_recipe,
)
from ._run import (
    DERIVE_GAP,
    recipe_megapixels,
    run_recipe,
)
from ._save import (
    SAVE_FORMATS,
    SavedImage,
    save_image,
)

__all__ = [
    "AVIF_SUPPORTED",
    "DEFAULT_FORMATS",
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DERIVE_GAP",
    "MAX_DIMENSION",
    "PIXEL_BUDGET",
    "SAVE_FORMATS",
    "WORKING_COPIES",
    "AutoOrientOp",
    "BlurOp",
    "CropOp",
    "FlipOp",
    "FlopOp",
    "Gravity",
    "GrayscaleOp",
    "ImageInfo",
    "ImageRejected",
    "Limits",
    "Op",
    "Output",
    "PathRejected",
    "PixelBudget",
    "PlaceholderOp",
    "Recipe",
    "RecipeError",
    "ResizeMode",
    "ResizeOp",
    "RotateOp",
    "SaveOp",
    "SavedImage",
    "SharpenOp",
    "SrgbOp",
    "StripOp",
    "ThumbnailOp",
    "WatermarkOp",
    "auto_orient",
    "blur",
    "crop",
    "crop_box",
    "dominant_color",
    "file_sha256",
    "flip",
    "flop",
    "grayscale",
    "image_info",
    "normalize_mode",
    "open_image",
    "parse_recipe",
    "pixel_sha256",
    "placeholder",
    "real_roots",
    "recipe_megapixels",
    "resize",
    "resolve_path",
    "rotate",
    "run_recipe",
    "save_image",
    "sharpen",
    "strip",
    "thumbnail",
    "to_srgb",
    "watermark",
]
