"""A health probe for load balancers and compose: 200 only when the database and Redis
answer and every queue has a live worker; otherwise 503 naming what is down."""

import django_rq
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError, connection
from django.http import JsonResponse
from redis import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from rq import Queue, Worker

# A down or hanging Redis answers the probe within seconds, never hangs it.
REDIS_TIMEOUT_SECONDS = 2


@login_not_required
def healthz(request):
    """{"status", "database", "redis", "workers": {queue: live workers}}. A worker counts
    while its RQ registration lives: a killed one drops out after its worker TTL."""
    report = {"database": _database(), "redis": "ok", "workers": {}}
    try:
        report["workers"] = _live_workers()
    except RedisError as error:
        report["redis"] = f"down: {type(error).__name__}"
        report["workers"] = dict.fromkeys(settings.RQ_QUEUES)  # unknown
    healthy = report["database"] == report["redis"] == "ok" and all(report["workers"].values())
    return JsonResponse(
        {"status": "ok" if healthy else "down", **report}, status=200 if healthy else 503
    )


def _live_workers() -> dict[str, int]:
    counts = {}
    for name in settings.RQ_QUEUES:
        redis = _bounded(django_rq.get_connection(name))
        try:
            counts[name] = len(Worker.all(queue=Queue(name, connection=redis)))
        finally:
            redis.connection_pool.disconnect()
    return counts


def _database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as error:
        return f"down: {type(error).__name__}"
    return "ok"


def _bounded(redis: Redis) -> Redis:
    """The same Redis with short timeouts and no retries."""
    pool = redis.connection_pool
    kwargs = {
        **pool.connection_kwargs,
        "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
        "socket_timeout": REDIS_TIMEOUT_SECONDS,
        "retry": Retry(NoBackoff(), 0),
    }
    return Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class, **kwargs))
