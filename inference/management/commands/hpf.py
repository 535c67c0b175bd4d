"""Print a slide's mitotic count per 10 HPF from its latest run: hotspot, per mm², grade."""

import json

from django.core.management.base import BaseCommand, CommandError

from cases.services import Slide
from inference import services


class Command(BaseCommand):
    help = "The HPF summary of a slide's latest successful AI run."

    def add_arguments(self, parser):
        parser.add_argument("--slide", type=int, required=True)
        parser.add_argument("--json", action="store_true", help="print JSON")

    def handle(self, *args, slide, **options):
        target = Slide.objects.select_related("case").filter(pk=slide).first()
        if target is None:
            raise CommandError(f"No slide {slide}")
        try:
            hpf_map, summary = services.slide_hpf(target)
        except services.MissingScale as error:
            raise CommandError(str(error)) from None
        if hpf_map is None:
            raise CommandError(f"Slide {slide} has no finished AI run")
        if options["json"]:
            self.stdout.write(json.dumps(summary, indent=1))
            return
        h = summary["hotspot"]
        count = f"{summary['count_per_10_hpf']} per 10 HPF"
        if summary["count_per_10_hpf_extrapolated"] is not None:
            count = (
                f"{summary['count_per_10_hpf']} in {summary['counted_area_mm2']} mm² (partial), "
                f"{summary['count_per_10_hpf_extrapolated']} per 10 HPF extrapolated"
            )
        self.stdout.write(
            f"Slide {slide} (run {summary['run']}, {summary['basis']} findings)\n"
            f"  hotspot: x={h['x']:.0f} y={h['y']:.0f} w={h['w']:.0f} h={h['h']:.0f} px (level 0)\n"
            f"  count: {count}, {summary['count_per_mm2']:.2f} per mm²\n"
            f"  area: {summary['area_mm2']} mm² (10 × {summary['hpf_area_mm2']} mm²) "
            f"at {summary['mpp']} µm/px; counted {summary['counted_area_mm2']} mm²"
            + (" (partial)" if summary["partial"] else "")
            + f"\n  rule: {summary['hotspot_rule']}"
            + f"\n  grade: {summary['grade'] or '–'} ({summary['grade_rule']})"
            + f"\n  domain: {summary['domain']['status']}"
            + (" (count unverified)" if summary["unverified"] else "")
        )
