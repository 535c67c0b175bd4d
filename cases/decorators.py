"""View decorators shared by the apps that read slide files."""

import logging
from functools import wraps

import openslide
from django.http import HttpResponse

from slides import ReadTooLarge

log = logging.getLogger(__name__)


def slide_file_errors(view):
    """A slide file that went missing or unreadable on disk, or a read past the memory
    bound, answers 503, not a 500 (and never with the server's path to the file)."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except ReadTooLarge as error:
            return unavailable(f"The slide cannot be shown: {error}.")
        except (openslide.OpenSlideError, OSError) as error:
            log.warning("Slide file unreadable (%s): %s", request.path, error)
            return unavailable("The slide file cannot be read.")

    return wrapper


def unavailable(message: str) -> HttpResponse:
    """503 with a plain-text reason the viewer can show."""
    return HttpResponse(message, status=503, content_type="text/plain")
