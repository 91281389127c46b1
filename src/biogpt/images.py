"""Images for BiomedGPT, with Pillow and numpy (pip install 'biogpt[ofa]'): the original evaluation transform.

BiomedGPT/OFA evaluate with torchvision's
    Compose([lambda im: im.convert("RGB"), Resize((S, S), BICUBIC), ToTensor(), Normalize(0.5, 0.5)])
On a PIL image, torchvision's Resize is Pillow's own `resize` (bicubic, antialiased), ToTensor divides the 8-bit
values by 255 into [C, H, W], and Normalize maps [0, 1] to [-1, 1]. Here the same steps run without torchvision.
S is 256 for BiomedGPT-S/-M and 384 for -B (`OFAConfig.image_size`).

Modes: RGB/RGBA/L/LA/1 and palette (P, PA) and CMYK images are converted by Pillow's `convert("RGB")`, exactly as
the original does (alpha dropped, CMYK converted naively, without a colour profile). 16- and 32-bit images (I;16,
I, F) are refused: `convert("RGB")` clips their values to 8 bits, which would silently give the model a white or
black picture; convert them to 8-bit first (scaling their range as the data needs).
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from biogpt.errors import InputError

MEAN, STD = 0.5, 0.5
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "BMP": "BMP", "TIFF": "TIFF", "GIF": "GIF"}  # what the tasks' data use
MAX_PIXELS = 40_000_000  # a cap far above any medical image the tasks use (a 6,000 x 6,000 scan is 36M)
CONVERTIBLE = {"RGB", "RGBA", "RGBX", "L", "LA", "1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
WIDE = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N"}

ImageSource = str | Path | bytes | Image.Image


def decode_base64(data: str) -> bytes:
    """The bytes of a base64 image (as OFA's TSV files and `serve` requests carry them; a data: URL prefix is
    allowed)."""
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"an image given as base64 cannot be decoded ({e})") from None


def open_image(src: ImageSource, what: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB PIL image from a path, encoded bytes or a PIL image; one InputError for anything else: a format
    other than PNG, JPEG, BMP, TIFF or GIF, or more than `max_pixels` pixels (a decompression bomb is refused from
    its header, before it is decoded)."""
    name = what or (str(src) if isinstance(src, str | Path) else "the image")
    img = src if isinstance(src, Image.Image) else _decode(src, name, max_pixels)
    if img.mode in WIDE:
        raise InputError(
            f"{name}: a {img.mode} image ({'16' if 'I;16' in img.mode else '32'}-bit per pixel); BiomedGPT reads 8-bit "
            "images, and converting would clip its values: convert it to 8-bit first (e.g. rescale to 0..255)"
        )
    if img.mode not in CONVERTIBLE:
        raise InputError(f"{name}: images of mode {img.mode} are not supported; convert it to RGB first")
    return img.convert("RGB")


def probe_image(raw: bytes, name: str = "the image", max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of encoded image bytes from the header alone (no pixels decoded): one InputError if they
    are not a PNG, JPEG, BMP, TIFF or GIF of at most `max_pixels` pixels."""
    return _decode(raw, name, max_pixels, load=False).size


def _decode(src: str | Path | bytes, name: str, max_pixels: int, load: bool = True) -> Image.Image:
    """The image of a file or bytes, its format and size checked from the header before decoding (`load`: decode
    the pixels too)."""
    try:
        raw = Path(src).read_bytes() if isinstance(src, str | Path) else bytes(src)
    except OSError as e:
        raise InputError(f"{name}: cannot read ({e.strerror})") from None
    formats = ", ".join(FORMATS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw), formats=list(FORMATS))
            w, h = img.size
            if w * h > max_pixels:
                raise InputError(f"{name}: {w} x {h} = {w * h:,} pixels, over the limit of {max_pixels:,}; "
                                 "resize it first (the model sees it at 256 or 384 pixels a side)")  # fmt: skip
            if load:
                img.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{name}: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:  # its message names Pillow's internal buffer object, nothing of use
        raise InputError(f"{name}: not an image Pillow can read; give a {formats} image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"{name}: not an image Pillow can read ({e}); give a {formats} image") from None
    return img


def patch_image(src: ImageSource, size: int) -> torch.Tensor:
    """The model input for one image: [3, size, size] float32 in [-1, 1]."""
    img = open_image(src)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0  # [H, W, 3] in [0, 1]
    return torch.from_numpy(((arr - MEAN) / STD).transpose(2, 0, 1).copy())


def patch_images(sources: Sequence[ImageSource], size: int) -> torch.Tensor:
    """[B, 3, size, size] for a batch of images."""
    return torch.stack([patch_image(s, size) for s in sources])
