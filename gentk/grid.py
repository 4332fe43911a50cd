"""Sample grids as images a reader can read: tiled, enlarged with sharp pixels, rows labelled,
mean images beside the samples.

A grid is a tile of images (B, C, H, W) in [0, 1], `nrow` to a row, separated by white
gaps. `compose` puts panels of equal layout side by side (the samples, then their mean
images), each under a title, with a label left of each row (a categorical model's
category and the majority label of its cluster, PixelGAN paper Fig. 6), and enlarges the
pixels by an integer factor with nearest-neighbour copies, so a 28-pixel digit stays sharp
at 84 pixels in any viewer (a browser, a markdown preview, an image viewer).

Axis legend: r grid rows, n images per row, c channels, h height, w width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw, ImageFont

GAP = 16  # white pixels between panels, and around the labels


def tile(images: torch.Tensor, *, nrow: int, pad: int = 2) -> np.ndarray:
    """Images (B, C, H, W) in [0, 1] as one uint8 array (rows, cols, C), `nrow` images a row,
    `pad` white pixels around each; a short last row is filled with white."""
    images = images.detach().float().clamp(0, 1).cpu()
    b, c, h, w = images.shape
    rows = math.ceil(b / nrow)
    if rows * nrow > b:
        images = torch.cat([images, torch.ones(rows * nrow - b, c, h, w)])
    images = torch.nn.functional.pad(images, (pad, 0, pad, 0), value=1.0)
    grid = rearrange(images, "(r n) c h w -> (r h) (n w) c", n=nrow)
    grid = torch.nn.functional.pad(grid, (0, 0, 0, pad, 0, pad), value=1.0)
    return (grid * 255).round().to(torch.uint8).numpy()


def to_image(array: np.ndarray) -> Image.Image:
    """A uint8 (H, W, 1) or (H, W, 3) array as a PIL image ("L" or "RGB")."""
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def compose(
    panels: Sequence[tuple[str, torch.Tensor]],
    *,
    nrow: int,
    row_labels: Sequence[str] | None = None,
    scale: int = 3,
    pad: int = 2,
) -> Image.Image:
    """Panels (title, images (B, C, H, W)) of the same number of images side by side, each tiled
    `nrow` to a row and enlarged `scale` times; `row_labels` (one per grid row) on the left.

    Returns an RGB image (white background, black text).
    """
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    counts = {len(images) for _, images in panels}
    if len(counts) != 1:
        raise ValueError(f"every panel needs the same number of images, got {sorted(counts)}")
    tiles = [np.repeat(np.repeat(tile(images, nrow=nrow, pad=pad), scale, 0), scale, 1) for _, images in panels]
    rows = math.ceil(counts.pop() / nrow)
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} grid rows")
    font = _font(12 if scale < 2 else 16)
    text_height = font.getbbox("Ag")[3] + 6
    label_width = max((math.ceil(font.getlength(t)) for t in row_labels), default=0) + GAP if row_labels else 0
    height, width = tiles[0].shape[:2]
    width = max(width, *(math.ceil(font.getlength(title)) + pad * scale for title, _ in panels))  # a title wider than its grid widens it
    canvas = Image.new("RGB", (label_width + len(tiles) * width + (len(tiles) - 1) * GAP, text_height + height), "white")
    draw = ImageDraw.Draw(canvas)
    row_height = (height - pad * scale) / rows  # each grid row: its images and the gap above them
    for r, text in enumerate(row_labels or []):
        middle = text_height + pad * scale + (r + 0.5) * row_height
        draw.text((label_width - GAP // 2, middle), text, fill="black", font=font, anchor="rm")
    for i, ((title, _), array) in enumerate(zip(panels, tiles)):
        left = label_width + i * (width + GAP)
        canvas.paste(to_image(array).convert("RGB"), (left, text_height))
        draw.text((left + pad * scale, 2), title, fill="black", font=font)
    return canvas


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own font at `size` pixels (scalable where Pillow has FreeType, else its small bitmap font)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow before 10.1, or one built without FreeType
        return ImageFont.load_default()
