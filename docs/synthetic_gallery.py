"""Draw docs/images/synthetic_gallery.png: a synthetic slide at low power, a medium-power
field, and crops of every mitotic phase and look-alike kind read back through OpenSlide.

    .venv/bin/python docs/synthetic_gallery.py [OUT.png]
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import openslide
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.tools import synth  # noqa: E402

CROP = 128  # level-0 px per crop (32 um)
SCALE = 2
EXAMPLES = 3
PAD = 8


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _crops(slide: openslide.OpenSlide, objects: list[dict], key: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for obj in objects:
        name = obj[key]
        if len(out.setdefault(name, [])) < EXAMPLES:
            x, y = int(obj["x"]) - CROP // 2, int(obj["y"]) - CROP // 2
            img = slide.read_region((x, y), 0, (CROP, CROP)).convert("RGB")
            out[name].append(img.resize((CROP * SCALE, CROP * SCALE), Image.LANCZOS))
    return out


def _busiest(objects: list[dict], radius: float) -> tuple[int, int]:
    """Centre of the object with the most others within ``radius`` px (the hotspot)."""
    pts = np.array([[o["x"], o["y"]] for o in objects])
    near = (np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1)) < radius).sum(1)
    x, y = pts[int(np.argmax(near))]
    return int(x), int(y)


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gallery.tiff"
        gt = synth.generate_slide(
            path, 4, (12000, 9000), mitoses_per_mm2=30, hard_negatives_per_mm2=40
        )
        with openslide.OpenSlide(str(path)) as slide:
            crops = _crops(slide, gt["mitoses"], "phase")
            crops.update(_crops(slide, gt["hard_negatives"], "kind"))
            thumb = slide.get_thumbnail((900, 675))
            cx, cy = _busiest(gt["mitoses"], radius=2000)
            field = slide.read_region((cx - 1000, cy - 600), 0, (2000, 1200)).convert("RGB")
    field = field.resize((1000, 600), Image.LANCZOS)
    kinds = [*synth.PHASES, *synth.NEGATIVE_KINDS]
    cell = CROP * SCALE
    width = len(kinds) * (cell + PAD) + PAD
    top = max(thumb.height, field.height) + 40
    canvas = Image.new("RGB", (width, top + EXAMPLES * (cell + PAD) + 40), "white")
    draw = ImageDraw.Draw(canvas)
    canvas.paste(thumb, (PAD, 32))
    canvas.paste(field, (width - field.width - PAD, 32))
    big, small = _font(22), _font(18)
    draw.text((PAD, 6), "Low power (whole 3.0 x 2.25 mm slide)", fill="black", font=big)
    draw.text(
        (width - field.width - PAD, 6),
        "Medium power (500 x 300 um, in the mitotic hotspot)",
        fill="black",
        font=big,
    )
    for col, kind in enumerate(kinds):
        x = PAD + col * (cell + PAD)
        label = kind if kind in synth.PHASES else f"{kind} (negative)"
        draw.text((x, top + 10), label, fill="black", font=small)
        for row, img in enumerate(crops.get(kind, [])):
            canvas.paste(img, (x, top + 36 + row * (cell + PAD)))
    # 256 colours keep the file around 1 MB; H&E survives it well.
    canvas.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, optimize=True
    )
    print(f"wrote {out} ({canvas.width}x{canvas.height})")


if __name__ == "__main__":
    main(
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).parent / "images/synthetic_gallery.png"
    )
