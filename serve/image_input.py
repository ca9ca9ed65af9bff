"""Turn the `images` of a generate request into pictures: base64 always; URLs and paths only when allowed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

from llava.images import DEFAULT_LIMITS, ImageError, decode_base64, decode_image, load_image

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True, slots=True)
class ImageSource:
    allow_urls: bool = False  # the operator's --allow-image-urls
    allow_paths: bool = False  # the operator's --allow-image-paths
    url_timeout: float = 10.0


def _looks_like_path(s: str) -> bool:
    return s.startswith("file://") or (len(s) < 4096 and s.lower().endswith(_IMAGE_SUFFIXES))


def resolve_image(s: str, source: ImageSource) -> Image.Image:
    if not isinstance(s, str) or not s:
        raise ImageError("each image must be a non-empty base64 string")
    if s.startswith(("http://", "https://")):
        if not source.allow_urls:
            raise ImageError(
                "image URLs are refused by this worker; send the picture itself as base64 "
                "(the operator can allow URLs with --allow-image-urls)"
            )
        try:
            with httpx.stream("GET", s, timeout=source.url_timeout, follow_redirects=True) as r:
                r.raise_for_status()
                data = b""
                for piece in r.iter_bytes():
                    data += piece
                    if len(data) > DEFAULT_LIMITS.max_bytes:
                        raise ImageError(f"the image at {s} is larger than the {DEFAULT_LIMITS.max_bytes} byte limit")
        except httpx.HTTPError as e:
            raise ImageError(f"could not fetch the image at {s}: {e}") from e
        return decode_image(data)
    if _looks_like_path(s):
        if not source.allow_paths:
            raise ImageError(
                "image file paths are refused by this worker; send the picture itself as base64 "
                "(the operator can allow paths with --allow-image-paths)"
            )
        return load_image(Path(s.removeprefix("file://")))
    return decode_base64(s)


def resolve_images(items: list[str], source: ImageSource) -> list[Image.Image]:
    images = []
    for i, item in enumerate(items):
        try:
            images.append(resolve_image(item, source))
        except ImageError as e:
            raise ImageError(f"image {i + 1} of {len(items)}: {e}") from e
    return images
