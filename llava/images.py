"""Image handling shared by the UI, the workers and the CLI.

Everything that turns untrusted input (bytes, base64 strings, files) into a picture goes through
`decode_image`, which validates size, format and pixel count *before* decoding, so a user gets one
kind of error (`ImageError`) with a message that says what to fix. The rest are small pure helpers:
`to_rgb`, the original LLaVA demo's process modes, its transport downscaling, and a stable hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from llava.errors import LlavaError


class ImageError(LlavaError, ValueError):
    """Bad image input; the message says what was wrong and what is accepted."""


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024  # encoded size cap
    max_pixels: int = 40_000_000  # width*height cap, checked from the header before decoding
    formats: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"})  # PIL names


DEFAULT_LIMITS = ImageLimits()
PROCESS_MODES = ("Crop", "Resize", "Pad", "Default")
CLIP_MEAN_RGB = (122, 116, 104)  # CLIP's image_mean * 255, the original LLaVA demo's pad colour

# Multi-picture JPEGs (most phone cameras) open as "MPO"; they are JPEGs for the allow-list.
_FORMAT_ALIASES = {"MPO": "JPEG"}
_WHITE = (255, 255, 255)


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def _megapixels(n: int) -> str:
    return f"{n / 1_000_000:.1f} megapixels" if n >= 100_000 else f"{n} pixels"


# ---------------------------------------------------------------------------------------------
# Decoding untrusted input


def decode_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Validate and decode encoded image bytes into a fully loaded RGB image.

    Checks run cheapest first: emptiness, byte size, header (is it an image, is the format allowed,
    how many pixels) and only then the full decode, so a decompression bomb is refused unread.
    EXIF orientation is applied, so phone photos come out upright as the browser shows them.
    """
    accepted = ", ".join(sorted(limits.formats))
    if not data:
        raise ImageError(f"image is empty (0 bytes); send an image in one of these formats: {accepted}")
    if len(data) > limits.max_bytes:
        raise ImageError(
            f"image is {_mb(len(data))}; the limit is {_mb(limits.max_bytes)}. Send a smaller or more compressed image."
        )
    try:
        img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL refuses absurd headers itself; its warning is an exception when filters say "error".
        raise ImageError(
            f"image dimensions are too large (over {_megapixels(limits.max_pixels)}); downscale it before sending"
        ) from e
    except UnidentifiedImageError as e:
        raise ImageError(f"data is not a recognised image ({len(data)} bytes); accepted formats: {accepted}") from e
    except Exception as e:  # a plugin choking on a malformed header
        raise ImageError(f"image header is corrupt ({e}); accepted formats: {accepted}") from e

    fmt = _FORMAT_ALIASES.get(img.format or "", img.format)
    if fmt not in limits.formats:
        raise ImageError(f"image format {img.format} is not accepted; send one of: {accepted}")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has an empty dimension ({width}x{height}); send a real picture")
    if width * height > limits.max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {_megapixels(width * height)}; the limit is "
            f"{_megapixels(limits.max_pixels)}. Downscale it before sending."
        )

    try:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as e:  # truncated data -> OSError; other corruptions raise zlib/struct errors
        raise ImageError(f"{img.format} image could not be decoded; the file is truncated or corrupt ({e})") from e
    return to_rgb(img)


def decode_base64(s: str, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode a base64 image, with or without a `data:image/...;base64,` prefix.

    Whitespace and newlines anywhere are ignored and missing `=` padding is restored, since browsers
    and hand-written clients differ on both.
    """
    s = s.strip()
    if s.startswith("data:"):
        header, sep, s = s.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ImageError("data URL must be base64-encoded, like 'data:image/png;base64,iVBOR...'")
    s = "".join(s.split())
    if not s:
        raise ImageError("image is empty (no base64 data); send a base64-encoded image")
    # Refuse before decoding: 4 base64 characters carry 3 bytes.
    if len(s) // 4 * 3 > limits.max_bytes:
        raise ImageError(
            f"image is about {_mb(len(s) // 4 * 3)}; the limit is {_mb(limits.max_bytes)}. "
            "Send a smaller or more compressed image."
        )
    try:
        data = base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"image is not valid base64 ({e}); send standard base64 (A-Z a-z 0-9 + /)") from e
    return decode_image(data, limits)


def encode_base64(img: Image.Image, fmt: str = "PNG") -> str:
    """Encode an image as plain base64 (no `data:` prefix), the wire form of the worker protocol.

    JPEG cannot hold alpha or palettes, so for JPEG the image goes through `to_rgb` first.
    """
    if fmt.upper() in ("JPEG", "JPG") and img.mode not in ("RGB", "L", "CMYK"):
        img = to_rgb(img)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def load_image(path: str | os.PathLike, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Read an image file and validate it like any other input (the size is checked before reading)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise ImageError(f"{p} is not a file; give the path of an image file")
        if size > limits.max_bytes:
            raise ImageError(f"image file {p} is {_mb(size)}; the limit is {_mb(limits.max_bytes)}")
        data = p.read_bytes()
    except FileNotFoundError as e:
        raise ImageError(f"image file not found: {p}") from e
    except OSError as e:
        raise ImageError(f"cannot read image file {p}: {e.strerror or e}") from e
    try:
        return decode_image(data, limits)
    except ImageError as e:
        raise ImageError(f"{p}: {e}") from e


# ---------------------------------------------------------------------------------------------
# Colour modes


def _to_8bit(img: Image.Image) -> Image.Image:
    """Map a 16-bit, 32-bit or float greyscale image to mode "L".

    I;16* is full-range 16-bit data, so it is scaled by 255/65535 (65535 -> 255, dark stays dark).
    "I" holding values in 0..65535 (how PIL stores 16-bit PNG/TIFF data) is treated the same way.
    Anything else ("F", or "I" outside 0..65535) has no intrinsic range and is stretched from its
    actual min..max to 0..255; a constant image keeps its value, clipped to 0..255.
    """
    a = np.asarray(img, dtype=np.float64)  # (H, W)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode.startswith("I;16") or (img.mode == "I" and lo >= 0 and hi <= 65535):
        a = a * (255 / 65535)
    elif hi > lo:
        a = (a - lo) * (255 / (hi - lo))
    a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(a)  # uint8 (H, W) -> mode "L"


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; an image already in RGB is returned as is.

    Transparency (RGBA, LA, PA, palette or colour-key transparency) is composited on white, the
    colour a chat UI shows behind it. CMYK, L, 1 and P convert the usual PIL way; high bit depth
    and float greyscale go through `_to_8bit`.
    """
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _to_8bit(img).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise ImageError(f"image colour mode {img.mode} cannot be converted to RGB") from e


# ---------------------------------------------------------------------------------------------
# The original LLaVA demo's image preparation


def process_image(
    img: Image.Image,
    mode: str = "Default",
    *,
    size: int | None = None,
    background: tuple[int, int, int] = CLIP_MEAN_RGB,
) -> Image.Image:
    """Prepare an image as the demo's "image process mode" asks; the result is RGB.

    "Pad": pad to a square on `background`, image centred (the paper's expand2square).
    "Crop": centre-crop to a square. "Resize": squash to a square, ignoring the aspect ratio.
    "Default": unchanged. For Pad, Crop and Resize the square's side is `size`, or for Pad the
    longer side and for Crop/Resize the shorter side when `size` is None; Default ignores `size`.
    """
    if mode not in PROCESS_MODES:
        raise ImageError(f"unknown image process mode {mode!r}; use one of: {', '.join(PROCESS_MODES)}")
    if size is not None and size <= 0:
        raise ImageError(f"image size must be a positive number of pixels, got {size}")
    img = to_rgb(img)
    if mode == "Default":
        return img
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has an empty dimension ({width}x{height}); nothing to {mode.lower()}")

    if mode == "Pad":
        side = max(width, height)
        square = Image.new("RGB", (side, side), background)
        square.paste(img, ((side - width) // 2, (side - height) // 2))
    elif mode == "Crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        square = img.crop((left, top, left + side, top + side))
    else:  # Resize: one resampling straight to the target side
        side = size or min(width, height)
        square = img

    target = size or side
    if square.size != (target, target):
        square = square.resize((target, target), Image.Resampling.BICUBIC)
    return square


def downscale(img: Image.Image, max_len: int = 800, min_len: int = 400) -> Image.Image:
    """Shrink an image for transport the way the original demo does; never upscales.

    The short side becomes min(max_len / aspect, min_len, short side), the long side follows the
    aspect ratio. An image that is already small enough is returned as is.
    """
    width, height = img.size
    long_side, short_side = max(width, height), min(width, height)
    if short_side <= 0:
        return img
    aspect = long_side / short_side
    shortest_edge = max(1, int(min(max_len / aspect, min_len, short_side)))
    if shortest_edge >= short_side:
        return img
    longest_edge = max(1, min(long_side, int(shortest_edge * aspect)))
    new_size = (shortest_edge, longest_edge) if height > width else (longest_edge, shortest_edge)
    return img.resize(new_size, Image.Resampling.BICUBIC)


def image_hash(img: Image.Image) -> str:
    """md5 hex digest of the image's RGB pixels and size: stable across encodings, for log names."""
    rgb = to_rgb(img)
    h = hashlib.md5(usedforsecurity=False)
    h.update(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()
