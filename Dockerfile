# MitoLens web and worker image. CUDA is used by workers when the host exposes a GPU.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MITOLENS_VAR_DIR=/var/lib/mitolens SLIDE_STORE=/slides/store SLIDE_IMPORT_DIRS=/slides/import \
    TILE_CACHE_DIR=/slides/tiles MODEL_STORE=/slides/models \
    STATIC_ROOT=/app/staticfiles

WORKDIR /app
COPY pyproject.toml ./
RUN pip install --no-cache-dir -e . && useradd --create-home --uid 1000 mitolens
COPY . .
RUN scripts/build-static \
    && mkdir -p /var/lib/mitolens /slides && chown -R mitolens /var/lib/mitolens /slides
USER mitolens
EXPOSE 8000
# Settings in gunicorn.conf.py; GUNICORN_CMD_ARGS overrides them.
CMD ["gunicorn", "portal.wsgi:application"]
