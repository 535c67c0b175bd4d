import os
from importlib import import_module

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
application = get_wsgi_application()
# Import the URLconf and the views behind it now rather than in the first request, so a
# worker answers at full speed from the start (with gunicorn --preload, once for all).
import_module(settings.ROOT_URLCONF)
