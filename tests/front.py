"""deploy/nginx.conf, as compose runs it, pointed at this machine's paths and ports: for
the front-server test and the tile benchmark (both run where nginx is installed)."""

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NGINX_MAIN = """daemon off;
{user}
worker_processes 2;
pid {work}/nginx-{port}.pid;
error_log {work}/nginx-{port}.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    types {{ image/jpeg jpeg; text/css css; application/javascript js; }}
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    {server}
}}
"""


def nginx_command(work: Path, port: int, server: str) -> list[str]:
    """nginx in the foreground with ``server`` as its only site (files under ``work``)."""
    config = work / f"nginx-{port}.conf"
    user = "user root;" if os.geteuid() == 0 else ""  # workers read the test's temp files
    config.write_text(NGINX_MAIN.format(work=work, port=port, server=server, user=user))
    return [shutil.which("nginx"), "-c", str(config), "-p", str(work), "-e", "stderr"]


def front_command(work: Path, port: int, portal_port: int, tile_dir: Path) -> list[str]:
    """deploy/nginx.conf listening on ``port`` in front of the portal on ``portal_port``,
    sending tiles from ``tile_dir``."""
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    for deployed, local in (
        ("server web:8000;", f"server 127.0.0.1:{portal_port};"),
        ("listen 8000;", f"listen 127.0.0.1:{port};"),
        ("/slides/tiles", str(tile_dir)),
        ("/var/cache/nginx/", f"{work / 'nginx-cache'}/"),
    ):
        assert deployed in site, deployed
        site = site.replace(deployed, local)
    (work / "nginx-cache").mkdir(exist_ok=True)
    return nginx_command(work, port, site)
