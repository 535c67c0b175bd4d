"""Crops around findings, read at a fixed physical scale whatever the slide's µm/px."""

from PIL import Image

from slides import Scale, read_region

CROP_MPP = 0.25
CROP_PX = 256


def finding_crop_image(
    slide, slide_mpp: float, x: float, y: float, size: int = CROP_PX, mpp: float = CROP_MPP
) -> Image.Image:
    """A ``size`` px square at ``mpp`` µm/px centred on level-0 point (x, y)."""
    scale = Scale.between((slide_mpp, slide_mpp), mpp)
    origin = (round(x - size * scale.x / 2), round(y - size * scale.y / 2))
    return read_region(slide, origin, (size, size), scale)
