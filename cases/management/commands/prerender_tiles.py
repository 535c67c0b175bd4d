"""Render slides' Deep Zoom tiles into the shared tile cache ahead of their viewers."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from cases.models import Slide
from cases.tiles import prerender_slide, prune_tile_cache


class Command(BaseCommand):
    help = (
        "Pre-render the tiles of the given slides (or --all), as TILE_PRERENDER says, "
        "then prune the tile cache to TILE_CACHE_MAX_BYTES; --prune-only just prunes."
    )

    def add_arguments(self, parser):
        parser.add_argument("--slide", type=int, nargs="*", default=[], help="slide ids")
        parser.add_argument("--all", action="store_true", help="every registered slide")
        parser.add_argument("--prune-only", action="store_true")

    def handle(self, *args, slide, **options):
        if options["prune_only"]:
            removed = prune_tile_cache()
            self.stdout.write(f"Removed the cached tiles of {removed} slide(s).")
            return
        if settings.TILE_PRERENDER == "off":
            raise CommandError("TILE_PRERENDER is off: set it to all or overview")
        ids = list(Slide.objects.values_list("pk", flat=True)) if options["all"] else slide
        if not ids:
            raise CommandError("Name slides with --slide ID ... or use --all")
        missing = set(ids) - set(Slide.objects.filter(pk__in=ids).values_list("pk", flat=True))
        if missing:
            raise CommandError(f"No slide {', '.join(map(str, sorted(missing)))}")
        for slide_id in ids:

            def progress(addresses, slide_id=slide_id):
                return tqdm(addresses, desc=f"slide {slide_id}", unit="tile")

            done = prerender_slide(slide_id, progress)
            damaged = f", {done.undecodable} undecodable (damaged)" if done.undecodable else ""
            self.stdout.write(f"Slide {slide_id}: {done.rendered} tiles rendered{damaged}.")
