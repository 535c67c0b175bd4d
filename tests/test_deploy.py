"""The production stack's description: compose file, image, and deploy settings."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def test_compose_has_the_production_services():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert {"postgres", "redis", "migrate", "web", "worker-inference", "worker-interactive"} <= set(
        services
    )
    for name in ("postgres", "redis", "web"):
        assert "healthcheck" in services[name], name
    gpu = services["worker-inference"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert "inference" in services["worker-inference"]["command"]
    assert {"explain", "default"} <= set(services["worker-interactive"]["command"])
    assert "tiles" in services["worker-tiles"]["command"]
    web = services["web"]
    assert web["environment"]["DEBUG"] == "0" and "slides:/slides" in web["volumes"]


def test_the_front_web_server_sends_tiles_from_the_shared_cache():
    """nginx in front: the portal's X-Accel-Redirect prefix is an internal location whose
    alias is the image's TILE_CACHE_DIR on the shared volume."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    front, web = services["front"], services["web"]
    assert front["image"].startswith("nginx") and front["ports"] == ["8000:8000"]
    assert "slides:/slides:ro" in front["volumes"] and "ports" not in web
    prefix = web["environment"]["TILE_ACCEL_REDIRECT"]
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    tile_cache = re.search(r"TILE_CACHE_DIR=(\S+)", (ROOT / "Dockerfile").read_text())[1]
    location = re.search(r"location " + re.escape(prefix) + r" \{([^}]*)\}", conf)[1]
    assert "internal;" in location and f"alias {tile_cache}/;" in location
    assert f"root {tile_cache};" in conf  # granted tiles, sent without the portal


@pytest.mark.skipif(
    subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
    if shutil.which("docker")
    else True,
    reason="no docker compose plugin here",
)
def test_docker_compose_config_validates(tmp_path):
    env = tmp_path / ".env"
    env.write_text("SECRET_KEY=x\nALLOWED_HOSTS=example.org\nPOSTGRES_PASSWORD=y\n")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "--env-file", str(env), "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_the_image_builds_static_files_the_tested_way_and_runs_gunicorn():
    """tests/test_production.py drives exactly this build script and this command."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "RUN scripts/build-static" in dockerfile
    assert 'CMD ["gunicorn", "portal.wsgi:application"]' in dockerfile
    assert "USER mitolens" in dockerfile
    config = {}
    exec((ROOT / "gunicorn.conf.py").read_text(), config)
    assert config["control_socket_disable"] and config["preload_app"]
