"""Pictures as the processor sees them, kept as uint8 so tens of thousands fit in memory.

`to_uint8` runs the checkpoint's own image processor (resize, centre crop) without rescaling;
`normalize` then does exactly what the processor's rescale + normalise would, so training sees the
pixels that serving sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image


def to_uint8(images: Sequence[Image.Image], image_processor, chunk: int = 512) -> torch.Tensor:
    """(N, 3, H, W) uint8: resized and cropped by `image_processor`, not yet normalised."""
    out = []
    for start in range(0, len(images), chunk):
        batch = image_processor(
            list(images[start : start + chunk]), do_rescale=False, do_normalize=False, return_tensors="pt"
        )
        out.append(batch.pixel_values.to(torch.uint8))
    return torch.cat(out)


def normalize(pixels: torch.Tensor, image_processor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> the float pixel_values the processor would have produced."""
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    return (pixels.float() * image_processor.rescale_factor - mean) / std
