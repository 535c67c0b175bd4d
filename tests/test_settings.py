"""Settings from the environment: production passes check --deploy; embedded Redis starts."""

import os
import subprocess
import sys
from pathlib import Path

import redis
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent


def test_production_settings_pass_check_deploy(tmp_path):
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": "x" * 60 + "production-secret-key-for-tests",
        "ALLOWED_HOSTS": "mitolens.example.org",
        "MITOLENS_VAR_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_to_start_without_secret_key(tmp_path):
    env = {**os.environ, "DEBUG": "0", "MITOLENS_VAR_DIR": str(tmp_path)}
    env.pop("SECRET_KEY", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_embedded_redis_is_a_real_server(settings, tmp_path):
    from portal import embedded_redis

    settings.REDIS_EMBEDDED_SOCKET = tmp_path / "redis.sock"
    process = embedded_redis.start()
    try:
        connection = redis.Redis(unix_socket_path=str(settings.REDIS_EMBEDDED_SOCKET))
        connection.set("mitolens:probe", "1")
        assert connection.get("mitolens:probe") == b"1"
        assert connection.info("server")["redis_version"]
        assert embedded_redis.start() is None  # a second start reuses the running server
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_default_database_is_sqlite_under_var_unless_database_url():
    engine = settings.DATABASES["default"]["ENGINE"]
    if os.environ.get("DATABASE_URL"):
        assert "postgresql" in engine
    else:
        assert engine.endswith("sqlite3")


def test_an_empty_database_url_means_the_embedded_default(tmp_path):
    env = {**os.environ, "DATABASE_URL": "", "MITOLENS_VAR_DIR": str(tmp_path)}
    code = (
        "from django.conf import settings; "
        "print(settings.DATABASES['default']['ENGINE'], settings.DATABASES['default']['NAME'])"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.splitlines()[-1]
        == f"django.db.backends.sqlite3 {tmp_path / 'mitolens.sqlite3'}"
    )
