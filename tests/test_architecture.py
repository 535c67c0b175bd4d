"""The architecture holds: the import contracts in pyproject.toml (review -> inference ->
cases -> slides; engine, tools and slides free of Django), web processes never import
torch, workers load the engine once, before they fork."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter: this test process has torch loaded by other tests.
SCRIPT = r"""
import importlib, importlib.util, json, pkgutil, sys
from pathlib import Path

import django

django.setup()
from django.apps import apps
from django.conf import settings
from django.core.management import find_commands
from django.urls import URLPattern, get_resolver

HEAVY = ("torch", "torchvision", "captum")
DEV_COMMANDS = {"check_explanations", "describe_domain", "evaluate_models", "train_models"}  # tools


def loaded():
    return sorted(name for name in HEAVY if name in sys.modules)


def callbacks(patterns):
    for pattern in patterns:
        if isinstance(pattern, URLPattern):
            yield pattern.callback
        else:
            yield from callbacks(pattern.url_patterns)


modules = [settings.ROOT_URLCONF]
modules += [callback.__module__ for callback in callbacks(get_resolver().url_patterns)]
modules += ["inference.jobs", "inference.explain", "inference.registry", "inference.hpf"]
for app in apps.get_app_configs():
    if Path(app.path).parent != Path(settings.BASE_DIR):
        continue  # not one of ours
    for part in ("admin", "api", "apps", "forms", "models", "signals", "urls", "views"):
        if importlib.util.find_spec(f"{app.name}.{part}"):
            modules.append(f"{app.name}.{part}")
    tags = Path(app.path) / "templatetags"
    modules += [f"{app.name}.templatetags.{m.name}" for m in pkgutil.iter_modules([str(tags)])]
    commands = set(find_commands(str(Path(app.path) / "management"))) - DEV_COMMANDS
    modules += [f"{app.name}.management.commands.{name}" for name in sorted(commands)]

culprit = None
for name in dict.fromkeys(modules):
    importlib.import_module(name)
    if loaded():
        culprit = name
        break

from portal.workers import preload

preload(["tiles", "default"])
after_light = loaded()
preload(["inference", "explain"])
print(json.dumps({
    "checked": list(dict.fromkeys(modules)),
    "culprit": culprit,
    "web": loaded() if culprit else [],
    "light_worker": after_light,
    "engine_worker": loaded(),
}))
"""


@pytest.fixture(scope="module")
def imports() -> dict:
    """What the fresh interpreter imported: see SCRIPT."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_web_modules_load_without_torch(imports) -> None:
    assert imports["culprit"] is None, f"{imports['culprit']} imports {imports['web']}"
    checked = set(imports["checked"])
    assert {"cases.views", "inference.views", "inference.admin", "portal.api"} <= checked
    assert "inference.management.commands.run_inference" in checked


def test_workers_preload_the_engine_only_for_its_queues(imports) -> None:
    assert imports["light_worker"] == []
    assert imports["engine_worker"] == ["captum", "torch", "torchvision"]


def test_the_import_contracts_hold():
    """import-linter's contracts in pyproject.toml: every broken import chain is named."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "3 kept, 0 broken" in result.stdout
