"""Draw docs/images/synthetic_gallery.png: a synthetic slide at low power, a medium-power
field, and crops of every mitotic phase and look-alike kind read back through OpenSlide.
With --domains, draw docs/images/synthetic_domains.png instead: the same figures of one
seed in the default and the shifted domain, side by side.

    .venv/bin/python docs/synthetic_gallery.py [OUT.png]
    .venv/bin/python docs/synthetic_gallery.py --domains [OUT.png]
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


def _same_objects(default: dict, shifted: dict) -> dict[str, list[dict]]:
    """Per phase/kind, the first objects that sit at the same place in both domains."""
    there = {(o["x"], o["y"]): o for o in shifted["mitoses"] + shifted["hard_negatives"]}
    out: dict[str, list[dict]] = {}
    for obj in default["mitoses"] + default["hard_negatives"]:
        name = obj.get("phase") or obj["kind"]
        twin = there.get((obj["x"], obj["y"]))
        same = twin is not None and (twin.get("phase") or twin["kind"]) == name
        if same and len(out.setdefault(name, [])) < DOMAIN_EXAMPLES:
            out[name].append(obj)
    return out


DOMAIN_EXAMPLES = 2
DOMAIN_SCALE = 1.0


def domains(out: Path) -> None:
    """The same objects of one seed in each domain: two crops per kind, default above
    shifted, and a medium-power field of each."""
    size = (6000, 4500)
    with tempfile.TemporaryDirectory() as tmp:
        truths, slides = {}, {}
        for domain in synth.DOMAINS:
            path = Path(tmp) / f"{domain}.tiff"
            truths[domain] = synth.generate_slide(
                path, 4, size, mitoses_per_mm2=30, hard_negatives_per_mm2=40, domain=domain
            )
            slides[domain] = openslide.OpenSlide(str(path))
        chosen = _same_objects(truths["default"], truths["shifted"])
        cx, cy = _busiest(truths["default"]["mitoses"], radius=1200)
        kinds = [*synth.PHASES, *synth.NEGATIVE_KINDS]
        cell = int(CROP * DOMAIN_SCALE)
        width = len(kinds) * (DOMAIN_EXAMPLES * (cell + 2) + PAD) + PAD
        fw, fh = 640, 384
        height = 36 + 2 * (cell + PAD) + 30 + fh + PAD
        canvas = Image.new("RGB", (width, height + 32), "white")
        draw = ImageDraw.Draw(canvas)
        small = _font(16)
        for col, kind in enumerate(kinds):
            x = PAD + col * (DOMAIN_EXAMPLES * (cell + 2) + PAD)
            label = kind if kind in synth.PHASES else f"{kind} (neg.)"
            draw.text((x, 8), label, fill="black", font=small)
            for k, obj in enumerate(chosen.get(kind, [])):
                for row, domain in enumerate(synth.DOMAINS):
                    x0, y0 = int(obj["x"]) - CROP // 2, int(obj["y"]) - CROP // 2
                    img = slides[domain].read_region((x0, y0), 0, (CROP, CROP)).convert("RGB")
                    img = img.resize((cell, cell), Image.LANCZOS)
                    canvas.paste(img, (x + k * (cell + 2), 32 + row * (cell + PAD)))
        top = 32 + 2 * (cell + PAD) + 4
        for k, domain in enumerate(synth.DOMAINS):
            region = slides[domain].read_region((cx - 1000, cy - 600), 0, (2000, 1200))
            x = PAD + k * (fw + PAD)
            draw.text((x, top), f"{domain}: 500 x 300 um field", fill="black", font=small)
            canvas.paste(region.convert("RGB").resize((fw, fh), Image.LANCZOS), (x, top + 24))
        note = "Crops, 32 um each: default domain above,\nshifted below (same seed, same objects)."
        draw.multiline_text((PAD + 2 * (fw + PAD) + 16, top + 24), note, fill="black", font=small)
        for slide in slides.values():
            slide.close()
    canvas.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, optimize=True
    )
    print(f"wrote {out} ({canvas.width}x{canvas.height})")


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
    args = sys.argv[1:]
    if args[:1] == ["--domains"]:
        domains(
            Path(args[1])
            if len(args) > 1
            else Path(__file__).parent / "images/synthetic_domains.png"
        )
    else:
        main(Path(args[0]) if args else Path(__file__).parent / "images/synthetic_gallery.png")
