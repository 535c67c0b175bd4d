"""Authenticated Deep Zoom tiles through the portal vs OpenSlide's example-style server.

Starts each server fresh for every scenario and client count, plays the same request
lists against both, and prints tiles/s and p50/p95 latency. The portal runs twice:
cold (empty tile cache, every tile rendered on demand) and pre-rendered (after the
job that registration queues has rendered the pyramid into the tile cache). The
baseline's tiles are its defaults' (254 px, overlap 1), the portal's its settings'
(256 px, no overlap: where a level is the slide's own, its JPEG tiles are sent as they
are); each server gets the same plan drawn on its own pyramid's tiles.

Scenarios:
  viewing  each client is a pathologist browsing: overview first, then random
           viewports (7×4 tiles) at the four highest-resolution levels, each
           client on its own seeded path; clients share tiles only where their
           views overlap (overview levels, nearby regions).
  unique   every tile of the top levels is requested exactly once, shuffled and
           split between clients: no tile is ever asked for twice.

With nginx on PATH (Debian: apt-get install nginx-light) three more servers run: nginx
sending the pre-rendered tile files itself (the static-file anchor, no authentication),
and the portal as compose deploys it, behind deploy/nginx.conf with TILE_ACCEL_REDIRECT
(Django checks the session, nginx sends the file), pre-rendered and cold.

Usage: python benchmarks/tiles.py [--slide PATH | --size 16000x12000] [--clients 1,4,8]
"""

import argparse
import http.client
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_model  # noqa: E402
from benchmarks.portal import bench_case, bench_user, portal_env, setup_portal  # noqa: E402
from tests.front import front_command, nginx_command  # noqa: E402

VIEW_COLS, VIEW_ROWS = 7, 4


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, help="slide to serve (default: a synthetic one)")
    parser.add_argument("--size", default="16000x12000", help="synthetic slide size")
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--requests", type=int, default=3000, help="tile requests per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (median kept)")
    parser.add_argument("--scenarios", default="viewing,unique")
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    parser.add_argument("--gunicorn-threads", type=int, default=8)
    parser.add_argument(
        "--cold-cache",
        type=Path,
        help="folder for the cold runs' tile cache (default: the temp folder; e.g. /dev/shm "
        "to take the file system's cost of creating files out of the cold figures)",
    )
    return parser.parse_args()


def setup_tile_portal(var_dir: Path, slide_path: Path) -> tuple[int, str]:
    """Migrate a fresh portal, register the slide, return (slide id, session cookie)."""
    setup_portal(var_dir, **tile_settings(var_dir))
    from django.contrib.sessions.backends.db import SessionStore

    from cases.registration import register_slide

    user = bench_user("bench", "pathologist")
    slide = register_slide(slide_path, bench_case(reader=user), slide_path.name)
    session = SessionStore()
    session["_auth_user_id"] = str(user.pk)
    session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    session["_auth_user_hash"] = user.get_session_auth_hash()
    session.create()
    return slide.pk, session.session_key


def tile_settings(var_dir: Path) -> dict[str, str]:
    """The tile cache under var_dir, the whole pyramid rendered at registration."""
    return {"TILE_CACHE_DIR": str(var_dir / "tiles"), "TILE_PRERENDER": "all"}


# OpenSlide's example server's tiles (its defaults): 254 px with a 1 px overlap.
ANCHOR_GEOMETRY = (254, 1)


def tile_levels(slide_path: Path, geometry: tuple[int, int]):
    """Level count and tiles per level of the slide's Deep Zoom pyramid with ``geometry``
    (tile px, overlap px): each server is asked for the tiles its own pyramid has."""
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    with openslide.OpenSlide(slide_path) as slide:
        generator = DeepZoomGenerator(slide, *geometry, limit_bounds=False)
        return generator.level_count, generator.level_tiles


def viewing_requests(level_count, level_tiles, clients, total, seed=1):
    """Per client: the overview levels, then random 7×4-tile viewports at high resolution."""
    per_client = total // clients
    plans = []
    for client in range(clients):
        rng = random.Random(seed + client)
        plan = []
        for level in range(level_count - 5, level_count - 3):
            cols, rows = level_tiles[level]
            plan += [(level, c, r) for c in range(cols) for r in range(rows)]
        while len(plan) < per_client:
            level = rng.randrange(level_count - 4, level_count)
            cols, rows = level_tiles[level]
            col0 = rng.randrange(max(1, cols - VIEW_COLS + 1))
            row0 = rng.randrange(max(1, rows - VIEW_ROWS + 1))
            plan += [
                (level, c, r)
                for c in range(col0, min(cols, col0 + VIEW_COLS))
                for r in range(row0, min(rows, row0 + VIEW_ROWS))
            ]
        plans.append(plan[:per_client])
    return plans


def unique_requests(level_count, level_tiles, clients, total, seed=1):
    """Every tile of the top levels at most once, shuffled, split between clients."""
    tiles = [
        (level, c, r)
        for level in range(level_count - 4, level_count)
        for c in range(level_tiles[level][0])
        for r in range(level_tiles[level][1])
    ]
    random.Random(seed).shuffle(tiles)
    tiles = tiles[:total]
    return [tiles[i::clients] for i in range(clients)]


def play(port: int, plans, url_for, headers) -> dict:
    """Play each plan from its own client process (as browsers are: no client waits on
    another's interpreter lock), all released at once; throughput over the span from the
    first client's start to the last one's end."""
    context = multiprocessing.get_context("fork")
    go, results = context.Event(), context.Queue()
    clients = [
        context.Process(target=_client, args=(port, plan, url_for, headers, go, results))
        for plan in plans
    ]
    for client in clients:
        client.start()
    go.set()
    reports = [results.get() for _ in clients]
    for client in clients:
        client.join()
    errors = [status for report in reports for status in report["errors"]]
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. HTTP {errors[0]}")
    latencies = sorted(ms for report in reports for ms in report["latencies"])
    wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    return {
        "tiles_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
    }


def _client(port: int, plan, url_for, headers, go, results) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    latencies, errors = [], []
    go.wait()
    first = time.perf_counter()
    for level, col, row in plan:
        start = time.perf_counter()
        connection.request("GET", url_for(level, col, row), headers=headers)
        response = connection.getresponse()
        response.read()
        latencies.append(time.perf_counter() - start)
        if response.status != 200:
            errors.append(response.status)
    results.put(
        {"latencies": latencies, "errors": errors, "start": first, "end": time.perf_counter()}
    )


def wait_until_up(port: int, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            raise RuntimeError("server exited during start-up")
        try:
            # A bound socket is not a server that answers: wait for a worker's reply.
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/healthz")
            if connection.getresponse().status in (200, 404, 503):  # 503: no workers here
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not start")


def run_server(commands, env, port, plans, url_for, headers) -> dict:
    """Start the server's processes (e.g. gunicorn, then nginx in front), play, stop them."""
    log = Path(env["MITOLENS_VAR_DIR"]) / "server.log"
    processes = []
    try:
        with log.open("ab") as stderr:
            for command in commands:
                processes.append(
                    subprocess.Popen(
                        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr
                    )
                )
        wait_until_up(port, processes)
        return play(port, plans, url_for, headers)
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=20)


def nginx_anchor(work: Path, port: int) -> list[str]:
    """nginx sending the pre-rendered tile files, nothing else (the static-file anchor)."""
    tiles = work / "tiles"
    return nginx_command(
        work,
        port,
        f"server {{ listen 127.0.0.1:{port}; location /tiles/ {{ alias {tiles}/; }}"
        f" location = /healthz {{ return 200; }} }}",
    )


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput (its latencies come with it)."""
    return sorted(runs, key=lambda run: run["tiles_per_s"])[len(runs) // 2]


def portal_command(args) -> list[list[str]]:
    return [
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "portal.wsgi:application",
            "-b",
            "127.0.0.1:8772",
            "-k",
            "gthread",
            "-w",
            str(args.gunicorn_workers),
            "--threads",
            str(args.gunicorn_threads),
            "--preload",  # every worker is ready when the socket answers
        ]
    ]


def prerender(slide_id: int, tile_dir: Path) -> dict:
    """Render the whole pyramid into the tile cache, as the registration job does."""
    from cases.tiles import prerender_slide

    start = time.perf_counter()
    tiles = prerender_slide(slide_id).rendered
    seconds = time.perf_counter() - start
    size = sum(file.stat().st_size for file in tile_dir.rglob("*.jpeg"))
    return {"tiles": tiles, "seconds": seconds, "mib": size / 1024**2}


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="mitolens-tiles-"))
    (work / "import").mkdir()
    slide_path = args.slide
    if slide_path is None:
        from inference.tools.synth import generate_slide

        width, height = (int(v) for v in args.size.split("x"))
        slide_path = work / "import" / "bench.tiff"
        print(f"Synthesising a {args.size} slide…", file=sys.stderr)
        generate_slide(slide_path, seed=11, size=(width, height), mpp=0.25)
    slide_id, session_key = setup_tile_portal(work, slide_path)
    from django.conf import settings

    portal_geometry = (settings.DEEPZOOM_TILE_SIZE, settings.DEEPZOOM_OVERLAP)
    env = {**os.environ, **portal_env(work, **tile_settings(work))}
    rendering = prerender(slide_id, Path(env["TILE_CACHE_DIR"]))
    print(f"Pre-rendered {rendering}", flush=True)
    cold_cache = Path(tempfile.mkdtemp(dir=args.cold_cache, prefix="mitolens-cold-"))
    cold_env = {**env, "TILE_CACHE_DIR": str(cold_cache / "tiles")}
    servers = {
        "baseline": (
            [[sys.executable, "benchmarks/deepzoom_baseline.py", str(slide_path), "8771"]],
            env,
            8771,
            lambda lv, c, r: f"/slide_files/{lv}/{c}_{r}.jpeg",
            {},
        ),
        "cold": (
            portal_command(args),
            cold_env,
            8772,
            lambda lv, c, r: f"/slides/{slide_id}_files/{lv}/{c}_{r}.jpeg",
            {"Cookie": f"sessionid={session_key}"},
        ),
    }
    servers["pre-rendered"] = (portal_command(args), env, *servers["cold"][2:])
    if shutil.which("nginx"):
        tile_dir = Path(env["TILE_CACHE_DIR"]).relative_to(work)
        folder = next(Path(env["TILE_CACHE_DIR"]).iterdir()).name
        servers["nginx"] = (
            [nginx_anchor(work, 8774)],
            env,
            8774,
            lambda lv, c, r: f"/{tile_dir}/{folder}/{lv}/{c}_{r}.jpeg",
            {},
        )
        servers["portal behind nginx"] = (
            [*portal_command(args), front_command(work, 8773, 8772, work / "tiles")],
            {**env, "TILE_ACCEL_REDIRECT": "/_tiles/"},
            8773,
            *servers["cold"][3:],
        )
        servers["cold behind nginx"] = (
            [*portal_command(args), front_command(work, 8775, 8772, cold_cache / "tiles")],
            {**cold_env, "TILE_ACCEL_REDIRECT": "/_tiles/"},
            8775,
            *servers["cold"][3:],
        )
    rows = []
    for scenario in args.scenarios.split(","):
        make_plans = viewing_requests if scenario == "viewing" else unique_requests
        for clients in (int(c) for c in args.clients.split(",")):
            plans = {
                geometry: make_plans(*tile_levels(slide_path, geometry), clients, args.requests)
                for geometry in {ANCHOR_GEOMETRY, portal_geometry}
            }
            runs = {name: [] for name in servers}
            for _ in range(args.repeats):  # interleaved, so load on the machine hits all alike
                for name, (command, server_env, port, url_for, headers) in servers.items():
                    if name.startswith("cold"):  # nothing rendered yet
                        shutil.rmtree(cold_env["TILE_CACHE_DIR"], ignore_errors=True)
                    geometry = ANCHOR_GEOMETRY if name == "baseline" else portal_geometry
                    runs[name].append(
                        run_server(command, server_env, port, plans[geometry], url_for, headers)
                    )
            rows.append((scenario, clients, {name: median_run(runs[name]) for name in servers}))
            compared = [n for n in ("cold", "pre-rendered", "cold behind nginx") if n in servers]
            print(format_row(rows[-1], "baseline", tuple(compared)), flush=True)
    print_report(args, slide_path, rows, rendering, portal_geometry)
    shutil.rmtree(work)
    shutil.rmtree(cold_cache)


def format_row(row, anchor: str, compared: tuple[str, ...]) -> str:
    """Throughput and latency of the anchor, then of each compared server with its ratio."""
    scenario, clients, results = row
    base = results[anchor]
    cells = [
        scenario,
        str(clients),
        f"{base['tiles_per_s']:.0f}",
        f"{base['p50_ms']:.1f} / {base['p95_ms']:.1f}",
    ]
    for portal in (results[name] for name in compared):
        cells += [
            f"{portal['tiles_per_s']:.0f}",
            f"{portal['p50_ms']:.1f} / {portal['p95_ms']:.1f}",
            f"{portal['tiles_per_s'] / base['tiles_per_s']:.2f}×",
        ]
    return "| " + " | ".join(cells) + " |"


def print_report(args, slide_path: Path, rows, rendering: dict, portal_geometry) -> None:
    print(f"\nMachine: {platform.node()}, {os.cpu_count()} cores, {cpu_model()}")
    print(f"Python {platform.python_version()}; date: {time.strftime('%Y-%m-%d')}")
    print(
        f"Slide: {slide_path.name}; {args.requests} requests per run; "
        f"median of {args.repeats} interleaved runs per row"
    )
    print(
        f"Portal: gunicorn gthread {args.gunicorn_workers} workers × "
        f"{args.gunicorn_threads} threads, session-authenticated, permission-checked"
    )
    print(
        f"Tiles (px, overlap): baseline {ANCHOR_GEOMETRY} (its defaults), portal "
        f"{portal_geometry}; each server is asked for its own pyramid's tiles"
    )
    print(
        f"Pre-rendering: {rendering['tiles']} tiles in {rendering['seconds']:.1f} s, "
        f"{rendering['mib']:.1f} MiB on disk"
    )
    print(f"Cold runs' tile cache under {args.cold_cache or tempfile.gettempdir()}")
    print_table(rows, "baseline", {"cold": "cold portal", "pre-rendered": "pre-rendered portal"})
    if "cold behind nginx" in rows[0][2]:
        print_table(rows, "baseline", {"cold behind nginx": "cold portal behind nginx"})
    if "nginx" in rows[0][2]:
        compared = {
            "pre-rendered": "pre-rendered portal (gunicorn)",
            "portal behind nginx": "portal behind nginx",
        }
        print_table(rows, "nginx", compared)


def print_table(rows, anchor: str, compared: dict[str, str]) -> None:
    """A markdown table: the anchor's figures, then each compared server's (by its label)."""
    header = ["scenario", "clients", f"{anchor} tiles/s", f"{anchor} p50 / p95 ms"]
    for label in compared.values():
        header += [f"{label} tiles/s", "p50 / p95 ms", f"÷ {anchor}"]
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print(format_row(row, anchor, tuple(compared)))


if __name__ == "__main__":
    main()
