"""/healthz: 200 only when the database and Redis answer and every queue has a live worker;
otherwise 503 naming what is down. Real workers, a real Redis that the tests stop."""

import subprocess
import sys
import time

import pytest
from django.conf import settings

from tests.conftest import subprocess_env

QUEUES = list(settings.RQ_QUEUES)


def health(client) -> tuple[int, dict]:
    response = client.get("/healthz")
    return response.status_code, response.json()


def wait_for_health(client, status: int, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while (answer := health(client))[0] != status:
        assert time.monotonic() < deadline, answer
        time.sleep(0.3)
    return answer[1]


@pytest.mark.django_db
def test_no_worker_listening_is_down_and_names_the_queues(client, own_redis):
    code, body = health(client)
    assert code == 503
    assert body == {
        "status": "down",
        "database": "ok",
        "redis": "ok",
        "workers": dict.fromkeys(QUEUES, 0),
    }


@pytest.mark.django_db
def test_live_workers_on_every_queue_are_healthy_until_one_stops(client, own_redis):
    env = {**subprocess_env(), "REDIS_URL": own_redis.url}
    workers = [
        subprocess.Popen(
            [sys.executable, "manage.py", "rqworker", *queues],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for queues in (["inference"], ["explain", "default", "tiles", "training"])
    ]
    try:
        body = wait_for_health(client, 200)
        assert body == {
            "status": "ok",
            "database": "ok",
            "redis": "ok",
            "workers": dict.fromkeys(QUEUES, 1),
        }
        workers[0].terminate()  # a warm shutdown unregisters the worker
        workers[0].wait(timeout=30)
        body = wait_for_health(client, 503, timeout=10)
        assert body["workers"] == {**dict.fromkeys(QUEUES, 1), "inference": 0}
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


@pytest.mark.django_db
def test_redis_down_is_503_at_once_naming_redis(client, own_redis):
    own_redis.stop()
    started = time.monotonic()
    code, body = health(client)
    assert time.monotonic() - started < 3  # no redis-py retries, bounded timeouts
    assert code == 503
    assert body["status"] == "down" and body["database"] == "ok"
    assert body["redis"].startswith("down: ")
    assert body["workers"] == dict.fromkeys(QUEUES)  # unknown without Redis
    assert str(own_redis.socket) not in str(body)  # no server paths


def test_compose_checks_the_web_with_the_probe():
    compose = (settings.BASE_DIR / "docker-compose.yml").read_text()
    web = compose[compose.index("\n  web:") :].split("\n  worker")[0]
    assert "/healthz" in web.split("healthcheck:")[1]
