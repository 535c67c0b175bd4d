"""Tile pre-rendering as a background job, and keeping the tile cache within its budget."""

import logging

import django_rq
from django.conf import settings
from redis.exceptions import RedisError

from . import deepzoom
from .models import Slide

log = logging.getLogger(__name__)

# How many of the highest-resolution Deep Zoom levels each TILE_PRERENDER mode leaves
# to on-demand rendering (the top two levels hold ~15/16 of a slide's tiles).
SKIPPED_TOP_LEVELS = {"all": 0, "overview": 2}


def prerender_slide(slide_id: int, progress=iter) -> deepzoom.Prerendered:
    """Render a slide's uncached tiles (as TILE_PRERENDER says), record the tiles found
    undecodable on the slide, then prune the cache. A slide deleted meanwhile renders none."""
    slide = Slide.objects.filter(pk=slide_id).only("file", "sha256").first()
    if slide is None or settings.TILE_PRERENDER not in SKIPPED_TOP_LEVELS:
        return deepzoom.Prerendered(0, 0)
    source = deepzoom.TileSource(slide.path, slide.sha256)
    done = deepzoom.prerender(source, SKIPPED_TOP_LEVELS[settings.TILE_PRERENDER], progress)
    record_damage(slide.sha256, done.undecodable)
    prune_tile_cache()
    return done


def record_damage(sha256: str, undecodable: int) -> None:
    """Mark the slides stored as this file damaged, with ``undecodable`` bad tiles; a count
    never goes down (the file cannot change), and an unchanged one writes nothing."""
    if undecodable:
        Slide.objects.filter(sha256=sha256, damaged_tiles__lt=undecodable).update(
            damaged_tiles=undecodable
        )


def prune_tile_cache() -> int:
    """Drop cached tiles of deleted slides and, beyond TILE_CACHE_MAX_BYTES, of the least
    recently viewed ones. Returns how many slides' tiles were removed."""
    registered = set(Slide.objects.values_list("sha256", flat=True))
    return len(deepzoom.prune(registered, settings.TILE_CACHE_MAX_BYTES))


def note_undecodable(sha256: str, level: int, col: int, row: int) -> None:
    """Record a tile found undecodable while serving (one write per newly seen tile in a
    process, none for a viewer asking for the same bad tile again)."""
    count = deepzoom.damage_log.add(sha256, level, col, row)
    if count:
        record_damage(sha256, count)


def queue_prerender(slide: Slide) -> None:
    """Queue pre-rendering on the tiles queue (its own worker, so a long render never
    delays explanations); without a queue, tiles render on demand."""
    if settings.TILE_PRERENDER == "off":
        return
    try:
        django_rq.get_queue("tiles").enqueue(prerender_slide, slide.pk, job_id=f"tiles-{slide.pk}")
    except RedisError as error:
        log.warning("Tiles of slide %s will render on demand: %s", slide.pk, error)


def queue_prune() -> None:
    """Queue a prune (after a slide is deleted: its tiles go, whatever TILE_PRERENDER)."""
    try:
        django_rq.get_queue("tiles").enqueue(prune_tile_cache)
    except RedisError as error:
        log.warning("Tile cache not pruned (prerender_tiles --prune-only will): %s", error)
