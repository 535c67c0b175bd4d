"""A slide's physical scale in µm/px: read from its properties, never guessed."""

from __future__ import annotations

import math
from collections.abc import Mapping

import openslide


class MissingMppError(ValueError):
    """The slide does not declare its µm/px and no override was given."""


def positive_number(value: str | float | None) -> float | None:
    """``value`` as a positive finite number; None when absent, unparsable or not one."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def declared_mpp(properties: Mapping[str, str]) -> tuple[float | None, float | None]:
    """The (x, y) µm/px a slide's properties declare, each None when missing or invalid."""
    return (
        positive_number(properties.get(openslide.PROPERTY_NAME_MPP_X)),
        positive_number(properties.get(openslide.PROPERTY_NAME_MPP_Y)),
    )


def slide_mpp(
    slide: openslide.AbstractSlide, override: float | tuple[float, float] | None = None
) -> tuple[float, float]:
    """Return the slide's (x, y) µm/px; ``override`` wins; never guessed.

    Raises MissingMppError when the slide has no valid ``openslide.mpp-x``/``mpp-y`` and
    no override is given, or when the override is not positive.
    """
    if override is not None:
        mpp = (override, override) if isinstance(override, int | float) else tuple(override)
        mpp_x, mpp_y = (positive_number(value) for value in mpp)
        if mpp_x is None or mpp_y is None:
            raise MissingMppError(f"invalid µm/px ({mpp[0]}, {mpp[1]})")
        return mpp_x, mpp_y
    mpp_x, mpp_y = declared_mpp(slide.properties)
    if mpp_x is None or mpp_y is None:
        raise MissingMppError(
            "slide has no valid openslide.mpp-x/mpp-y; give its µm/px explicitly (mpp override)"
        )
    return mpp_x, mpp_y
