"""Writing a generated image in the format its file suffix names, through the one atomic file
writer. Torch-free (numpy and Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtimes.files import OutputError, atomic_file

# suffix -> Pillow format; JPEG and WebP at a quality where the sampler's detail survives.
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}


def image_format(path: str | Path) -> str:
    """The Pillow format for `path`'s suffix, or an `OutputError` listing the suffixes we write."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(f"cannot tell an image format from {Path(path).name!r} (suffix {suffix or 'none'})",
                          f"end the path in one of {', '.join(FORMATS)}")
    from PIL import features

    name = FORMATS[suffix]
    if name == "WEBP" and not features.check("webp"):
        raise OutputError("this Pillow was built without WebP support", "write .png or .jpg, or install a Pillow with WebP")
    return name


def save_image(pixels: np.ndarray, path: str | Path) -> Path:
    """Write `[H, W, 3]` uint8 `pixels` to `path` in the format its suffix names, atomically."""
    from PIL import Image

    path = Path(path)
    name = image_format(path)
    with atomic_file(path, "wb") as f:
        Image.fromarray(pixels).save(f, format=name, **_SAVE_OPTIONS.get(name, {}))
    return path
