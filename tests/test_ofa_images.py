"""BiomedGPT's image transform (Pillow + numpy) against hand-computed pixels, and bad images."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from biogpt.errors import InputError
from biogpt.images import decode_base64, patch_image, patch_images


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_pixels_at_model_size_are_scaled_and_normalised():
    """No resampling at the target size: each value v becomes (v / 255 - 0.5) / 0.5, channels first."""
    arr = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
    x = patch_image(png(Image.fromarray(arr, "RGB")), 4)
    assert x.shape == (3, 4, 4) and x.dtype == torch.float32
    assert x[0, 0, 0].item() == pytest.approx(-1.0)  # 0 -> -1
    assert x[2, 3, 3].item() == pytest.approx((235 / 255 - 0.5) / 0.5)  # last pixel, blue: 47 * 5
    want = (torch.from_numpy(arr).float().permute(2, 0, 1) / 255 - 0.5) / 0.5
    torch.testing.assert_close(x, want, atol=0, rtol=0)


def test_uniform_image_stays_uniform_through_bicubic_resize():
    img = Image.new("RGB", (50, 30), (255, 0, 51))
    x = patch_image(img, 16)
    assert x.shape == (3, 16, 16)
    torch.testing.assert_close(x[0], torch.full((16, 16), 1.0))
    torch.testing.assert_close(x[1], torch.full((16, 16), -1.0))
    torch.testing.assert_close(x[2], torch.full((16, 16), 51 / 255 * 2 - 1))


def test_resize_is_pillows_bicubic_computed_by_hand():
    """torchvision's Resize on a PIL image is Pillow's bicubic resize: separable, a = -0.5, taps outside the
    image dropped and the rest renormalised, an 8-bit rounding after each pass. A 2x2 checkerboard to 4x4 by
    hand: output centres at input -0.25, 0.25, 0.75, 1.25 give weights (1.0882, -0.0882) and (0.7929, 0.2071)
    (mirrored for the last two), so the first row is 0, 255 -> [0, 53, 202, 255] then the columns mix rows."""
    board = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8), "L")
    x = patch_image(board, 4)
    got = torch.round((x + 1) / 2 * 255).to(torch.int64)
    want = [[0, 40, 215, 255], [53, 84, 171, 202], [202, 171, 84, 53], [255, 215, 40, 0]]
    for c in range(3):  # grey becomes three equal channels
        assert got[c].tolist() == want


def test_modes_converted_as_the_original():
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    torch.testing.assert_close(patch_image(rgba, 8), patch_image(Image.new("RGB", (8, 8), (10, 20, 30)), 8))
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 200, 100, 0])
    torch.testing.assert_close(patch_image(png(pal), 8)[:, 0, 0], torch.tensor([200, 100, 0]) / 255 * 2 - 1.0)
    gray = Image.new("L", (8, 8), 128)
    assert torch.equal(patch_image(gray, 8)[0], patch_image(gray, 8)[2])
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # no black, full magenta + yellow: red
    torch.testing.assert_close(patch_image(cmyk, 8)[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))


def test_batch_and_base64():
    img = Image.new("RGB", (8, 8), (1, 2, 3))
    b64 = base64.b64encode(png(img)).decode()
    batch = patch_images([decode_base64(b64), decode_base64("data:image/png;base64," + b64)], 8)
    assert batch.shape == (2, 3, 8, 8) and torch.equal(batch[0], batch[1])


def test_bad_images(tmp_path):
    with pytest.raises(InputError, match="not an image Pillow can read") as e:
        patch_image(b"this is text", 8)
    assert str(e.value) == "the image: not an image Pillow can read; give a PNG, JPEG, BMP, TIFF, GIF image"
    (tmp_path / "x.png").write_bytes(png(Image.new("RGB", (8, 8)))[:40])  # truncated
    with pytest.raises(InputError, match="x.png: not an image Pillow can read"):
        patch_image(tmp_path / "x.png", 8)
    with pytest.raises(InputError, match="cannot read"):
        patch_image(tmp_path / "missing.png", 8)
    wide = Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))
    with pytest.raises(InputError, match="16-bit per pixel.*convert it to 8-bit first"):
        patch_image(png(wide), 8)
    with pytest.raises(InputError, match="32-bit per pixel"):
        patch_image(Image.new("F", (8, 8)), 8)
