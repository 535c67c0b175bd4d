"""Web start-up: `manage.py check`, and gunicorn as the image starts it until it answers.

    .venv/bin/python benchmarks/startup.py [--repeat 5]

A fresh portal (SQLite, DEBUG=0, migrated and its static files built before timing).
Times, median of ``--repeat``: `manage.py check` from spawn to exit, and gunicorn with the
image's gunicorn.conf.py (4 gthread workers, the app preloaded) from spawn to the first
answer of the login page.
Also says whether any gunicorn process has libtorch mapped (the web never imports torch).
"""

import argparse
import datetime
import http.client
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_model  # noqa: E402
from benchmarks.portal import portal_env  # noqa: E402

PORT = 8773


def check_seconds(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def gunicorn_seconds(env: dict[str, str]) -> tuple[float, bool]:
    """Seconds from spawn to the login page's answer; whether torch was loaded."""
    command = [str(Path(sys.executable).parent / "gunicorn"), "portal.wsgi:application"]
    start = time.perf_counter()
    deadline = start + 60
    server = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**env, "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{PORT} --access-logfile /dev/null"},
        stderr=subprocess.DEVNULL,
    )
    try:
        while server.poll() is None and time.perf_counter() < deadline:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
                connection.request("GET", "/accounts/login/")
                status = connection.getresponse().status
            except OSError:
                time.sleep(0.02)
                continue
            if status != 200:
                raise RuntimeError(f"the login page answered {status}")
            return time.perf_counter() - start, torch_loaded(server.pid)
        raise RuntimeError("gunicorn did not answer within 60 s")
    finally:
        server.terminate()
        server.wait(timeout=30)


def torch_loaded(master: int) -> bool:
    """Whether the gunicorn master or any of its workers has libtorch mapped."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    for pid in [master, *map(int, children)]:
        if "libtorch" in Path(f"/proc/{pid}/maps").read_text():
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mitolens-startup-"))
    try:
        env = {**os.environ, **portal_env(work)}
        for command in (["migrate", "-v0"], ["collectstatic", "--noinput", "-v0"]):
            subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True)
        checks, starts, torch = [], [], False
        for _ in range(args.repeat):  # alternate the two, so load falls on both alike
            checks.append(check_seconds(env))
            seconds, loaded = gunicorn_seconds(env)
            starts.append(seconds)
            torch |= loaded
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"Machine: {os.cpu_count()} cores, {cpu_model()}; Python {platform.python_version()}")
    print(f"Date: {datetime.date.today()}; median of {args.repeat}")
    print("\n| measure | seconds (median) | runs |")
    print("|---|---|---|")
    print(f"| manage.py check | {statistics.median(checks):.2f} | {fmt(checks)} |")
    print(f"| gunicorn to the login page | {statistics.median(starts):.2f} | {fmt(starts)} |")
    print(f"\nlibtorch mapped in a web process: {'yes' if torch else 'no'}")


def fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
