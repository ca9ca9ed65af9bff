"""Tests for llava.images: validation of untrusted input, colour modes, process modes, downscaling."""

from __future__ import annotations

import base64
import io
import struct
import warnings
import zlib

import pytest
from PIL import Image

from llava.images import (
    CLIP_MEAN_RGB,
    DEFAULT_LIMITS,
    PROCESS_MODES,
    ImageError,
    ImageLimits,
    decode_base64,
    decode_image,
    downscale,
    encode_base64,
    image_hash,
    load_image,
    process_image,
    to_rgb,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(size: tuple[int, int] = (48, 32)) -> Image.Image:
    return Image.effect_noise(size, 60).convert("RGB")


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size but carries no pixel data: enough for Image.open, not for load."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------
# Validation: every bad input is an ImageError that says what was wrong


def test_empty_input():
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageError, match="empty"):
        decode_base64("  \n ")
    with pytest.raises(ImageError, match="empty"):
        decode_base64("data:image/png;base64,")


@pytest.mark.parametrize("data", [bytes(range(256)) * 4, b"hello, this is plain text\n", b"\x89PNG"])
def test_not_an_image(data):
    with pytest.raises(ImageError, match="not a recognised image.*accepted formats: BMP, GIF, JPEG"):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA"])
def test_format_not_in_allow_list(fmt):
    with pytest.raises(ImageError, match=f"format {fmt} is not accepted; send one of: BMP, GIF"):
        decode_image(encode(noise((16, 16)), fmt))


def test_custom_allow_list():
    png_only = ImageLimits(formats=frozenset({"PNG"}))
    assert decode_image(encode(noise()), png_only).size == (48, 32)
    with pytest.raises(ImageError, match="format JPEG is not accepted; send one of: PNG"):
        decode_image(encode(noise(), "JPEG"), png_only)


def test_multi_picture_jpeg_counts_as_jpeg():
    data = encode(noise(), "MPO", save_all=True, append_images=[noise()])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert decode_image(data).size == (48, 32)


def test_over_byte_cap():
    data = encode(noise())
    small = ImageLimits(max_bytes=len(data) - 1)
    with pytest.raises(ImageError, match="MB; the limit is 0.0 MB"):
        decode_image(data, small)
    with pytest.raises(ImageError, match="the limit is"):
        decode_base64(base64.b64encode(data).decode(), small)
    assert decode_image(data, ImageLimits(max_bytes=len(data))).size == (48, 32)


def test_over_pixel_cap_is_checked_from_the_header():
    with pytest.raises(ImageError, match="48x32 = 1536 pixels; the limit is 1000 pixels"):
        decode_image(encode(noise()), ImageLimits(max_pixels=1000))
    # No pixel data at all: had it been decoded, this would be a "truncated" error instead.
    with pytest.raises(ImageError, match=r"7000x7000 = 49\.0 megapixels; the limit is 40\.0 megapixels"):
        decode_image(png_header(7000, 7000))


def test_decompression_bomb_refused_by_pil_itself():
    with pytest.raises(ImageError, match="dimensions are too large"):
        decode_image(png_header(100_000, 100_000))  # PIL raises DecompressionBombError
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageError, match="dimensions are too large"):
            decode_image(png_header(10_000, 10_000))  # PIL warns; here the warning is an error


def test_zero_size_dimension():
    with pytest.raises(ImageError, match="not a recognised image"):  # PIL refuses a 0-wide header
        decode_image(png_header(0, 10))
    with pytest.raises(ImageError, match="empty dimension"):
        process_image(Image.new("RGB", (0, 10)), "Pad")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(fmt):
    data = encode(noise((64, 64)), fmt)
    with pytest.raises(ImageError, match=f"{fmt} image could not be decoded; the file is truncated"):
        decode_image(data[: len(data) // 2])


def test_invalid_base64():
    with pytest.raises(ImageError, match="not valid base64"):
        decode_base64("this is not base64!")
    with pytest.raises(ImageError, match="must be base64-encoded"):
        decode_base64("data:image/png,rawdata")


def test_load_image(tmp_path):
    img = noise()
    (tmp_path / "ok.png").write_bytes(encode(img))
    assert load_image(tmp_path / "ok.png").tobytes() == img.tobytes()
    assert load_image(str(tmp_path / "ok.png")).mode == "RGB"
    with pytest.raises(ImageError, match="image file not found: .*missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is not a file"):
        load_image(tmp_path)
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(ImageError, match="notes.txt: data is not a recognised image"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(ImageError, match="the limit is"):
        load_image(tmp_path / "ok.png", ImageLimits(max_bytes=10))


# ---------------------------------------------------------------------------------------------
# Base64


def test_base64_round_trip_is_pixel_exact():
    img = noise()
    s = encode_base64(img)
    assert not s.startswith("data:")
    out = decode_base64(s)
    assert out.mode == "RGB" and out.size == img.size
    assert out.tobytes() == img.tobytes()


def test_data_url_prefix_whitespace_and_missing_padding():
    img = noise((7, 5))
    s = encode_base64(img).rstrip("=")
    wrapped = "\n".join(s[i : i + 76] for i in range(0, len(s), 76))
    out = decode_base64(f"  data:image/png;base64,{wrapped}\r\n")
    assert out.tobytes() == img.tobytes()


def test_encode_base64_jpeg_drops_alpha():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    out = decode_base64(encode_base64(rgba, "JPEG"))
    assert out.size == (8, 8)
    assert all(c >= 250 for c in out.getpixel((4, 4)))  # transparent -> white, up to JPEG rounding


# ---------------------------------------------------------------------------------------------
# Colour modes: everything comes out as 8-bit RGB with the pixel values one would expect


def test_rgba_composited_on_white():
    img = Image.new("RGBA", (3, 1))
    img.putdata([(255, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 128)])
    out = decode_image(encode(img))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == WHITE  # fully transparent
    assert out.getpixel((1, 0)) == RED  # opaque
    assert out.getpixel((2, 0)) == (127, 127, 127)  # half-transparent black over white


def test_la_composited_on_white():
    img = Image.new("LA", (2, 1))
    img.putdata([(0, 0), (100, 255)])
    out = to_rgb(img)
    assert out.mode == "RGB"
    assert [out.getpixel((x, 0)) for x in range(2)] == [WHITE, (100, 100, 100)]


def test_palette_with_and_without_transparency():
    img = Image.new("P", (2, 1))
    img.putpalette([*RED, *BLUE] + [0] * 762)
    img.putdata([0, 1])
    out = decode_image(encode(img))
    assert [out.getpixel((x, 0)) for x in range(2)] == [RED, BLUE]

    img.info["transparency"] = 0  # index 0 is see-through
    gif = encode(img, "GIF", transparency=0)
    out = decode_image(gif)
    assert out.mode == "RGB"
    assert [out.getpixel((x, 0)) for x in range(2)] == [WHITE, BLUE]


def test_cmyk_jpeg():
    data = encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    r, g, b = decode_image(data).getpixel((4, 4))
    assert r >= 250 and g <= 5 and b <= 5


def test_greyscale_and_bilevel():
    assert to_rgb(Image.new("L", (2, 2), 77)).getpixel((1, 1)) == (77, 77, 77)
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    out = decode_image(encode(bilevel))
    assert [out.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), WHITE]


def test_16_bit_png_scaled_to_8_bit():
    img = Image.new("I;16", (3, 1))
    img.putdata([0, 257 * 100, 65535])
    data = encode(img)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data)
    assert out.mode == "RGB"
    assert [out.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (100, 100, 100), WHITE]


def test_32_bit_int_and_float():
    i32 = Image.new("I", (2, 1))
    i32.putdata([257 * 10, 65535])  # 16-bit data in a 32-bit container: fixed 16 -> 8 bit scale
    assert [to_rgb(i32).getpixel((x, 0)) for x in range(2)] == [(10, 10, 10), WHITE]
    i32.putdata([-1000, 1000])  # outside 0..65535: stretched by min..max
    assert [to_rgb(i32).getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), WHITE]

    f = Image.new("F", (3, 1))
    f.putdata([-0.5, 0.0, 0.5])  # stretched by min..max
    out = to_rgb(f)
    assert out.mode == "RGB"
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_rgb_is_returned_as_is():
    img = noise()
    assert to_rgb(img) is img


def test_exif_orientation_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(noise((20, 10)), "JPEG", exif=exif)
    assert decode_image(data).size == (10, 20)


# ---------------------------------------------------------------------------------------------
# Process modes


def test_pad_centres_on_background():
    wide = process_image(Image.new("RGB", (40, 20), RED), "Pad")
    assert wide.size == (40, 40)
    assert wide.getpixel((0, 0)) == wide.getpixel((39, 39)) == CLIP_MEAN_RGB
    assert wide.getpixel((0, 9)) == CLIP_MEAN_RGB and wide.getpixel((0, 10)) == RED
    assert wide.getpixel((39, 29)) == RED and wide.getpixel((39, 30)) == CLIP_MEAN_RGB

    tall = process_image(Image.new("RGB", (10, 30), RED), "Pad", background=WHITE)
    assert tall.size == (30, 30)
    assert tall.getpixel((0, 0)) == tall.getpixel((9, 15)) == WHITE
    assert tall.getpixel((10, 0)) == tall.getpixel((19, 29)) == RED and tall.getpixel((20, 0)) == WHITE

    assert process_image(Image.new("RGB", (40, 20), RED), "Pad", size=16).size == (16, 16)


def test_crop_keeps_the_centre():
    img = Image.new("RGB", (30, 10), RED)
    img.paste(GREEN, (10, 0, 20, 10))
    img.paste(BLUE, (20, 0, 30, 10))
    out = process_image(img, "Crop")
    assert out.size == (10, 10)
    assert out.getcolors() == [(100, GREEN)]  # every pixel green
    assert process_image(img, "Crop", size=5).size == (5, 5)
    assert process_image(img.rotate(90, expand=True), "Crop").getpixel((5, 5)) == GREEN


def test_resize_squashes():
    img = Image.new("RGB", (30, 10), RED)
    assert process_image(img, "Resize").size == (10, 10)
    out = process_image(img, "Resize", size=7)
    assert out.size == (7, 7) and out.getpixel((3, 3)) == RED


def test_default_is_unchanged_and_modes_are_listed():
    img = noise()
    assert process_image(img) is img
    assert process_image(img, "Default", size=10) is img
    assert process_image(Image.new("RGBA", (4, 4), (0, 0, 0, 0))).getpixel((0, 0)) == WHITE
    assert PROCESS_MODES == ("Crop", "Resize", "Pad", "Default")
    with pytest.raises(
        ImageError, match="unknown image process mode 'Stretch'; use one of: Crop, Resize, Pad, Default"
    ):
        process_image(img, "Stretch")


# ---------------------------------------------------------------------------------------------
# Downscaling and hashing


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1600, 1200), (533, 400)),  # min_len bounds the short side
        ((1200, 1600), (400, 533)),
        ((3000, 1000), (798, 266)),  # max_len / aspect bounds the short side
        ((1000, 1000), (400, 400)),
        ((800, 200), (800, 200)),  # already small enough
        ((300, 200), (300, 200)),  # never upscaled
    ],
)
def test_downscale(size, expected):
    assert downscale(Image.new("RGB", size)).size == expected


def test_downscale_returns_small_images_as_is_and_respects_arguments():
    small = Image.new("RGB", (50, 30))
    assert downscale(small) is small
    assert downscale(Image.new("RGB", (1344, 1008)), max_len=1344, min_len=672).size == (896, 672)
    assert downscale(Image.new("RGB", (5000, 2))).size == (2500, 1)  # extreme aspect: never 0 wide


def test_image_hash():
    img = noise()
    h = image_hash(img)
    assert len(h) == 32 and int(h, 16) >= 0
    assert image_hash(img.copy()) == h == image_hash(decode_image(encode(img)))
    other = img.copy()
    other.putpixel((0, 0), tuple(255 - c for c in img.getpixel((0, 0))))
    assert image_hash(other) != h
    # The same bytes in a different shape are a different image.
    assert image_hash(Image.new("RGB", (2, 1), RED)) != image_hash(Image.new("RGB", (1, 2), RED))


def test_default_limits():
    assert ImageLimits() == DEFAULT_LIMITS
    assert DEFAULT_LIMITS.max_bytes == 20 * 1024 * 1024 and DEFAULT_LIMITS.max_pixels == 40_000_000
    with pytest.raises(AttributeError):
        DEFAULT_LIMITS.max_bytes = 1  # frozen
