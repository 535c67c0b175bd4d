"""The model registry: checking and recording model versions, and the shipped models.

A model file is accepted only if it loads in its declared format and its output matches
its spec (one forward pass on a blank input); anything else is refused with a message
for the user and nothing is stored.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from cases.services import file_sha256, record_audit

from .models import ModelVersion

DETECTOR_NAME = "mitolens-detector"
CLASSIFIER_NAME = "mitolens-phase"
MIL_NAME = "mitolens-mil"
# Each shipped model's version: a model retrained with different weights gets a new one.
SHIPPED_VERSIONS = {DETECTOR_NAME: "1.0", CLASSIFIER_NAME: "1.1", MIL_NAME: "1.0"}


class ModelRejected(Exception):
    """A model file or spec that cannot be registered; the message says why."""


def load_model(path: Path, task: str, fmt: str, spec: dict[str, Any] | None):
    """Load a registered file as the engine's detector, phase classifier or MIL model."""
    # The engine (torch) is imported here, never with this module, which web processes load.
    from .engine.model_io import load_classifier, load_detector, load_mil

    if task == ModelVersion.Task.DETECTOR:
        return load_detector(path, fmt, spec)
    if task == ModelVersion.Task.PHASE_CLASSIFIER:
        return load_classifier(path, fmt, spec)
    if task == ModelVersion.Task.MIL:
        return load_mil(path, fmt, spec)
    raise ModelRejected(f"models for the task {task!r} cannot be registered here")


def load_version(version: ModelVersion):
    """Load a registered model version from the model store (a fresh copy, free to train)."""
    return load_model(version.path, version.task, version.format, version.spec)


@lru_cache(maxsize=8)
def _loaded(version_pk: int, sha256: str):
    return load_version(ModelVersion.objects.get(pk=version_pk))


def loaded_version(version: ModelVersion):
    """The version's model, loaded once per process and shared: for inference only. A
    worker loads the active versions before it forks (``preload_active``), so each job's
    work horse starts with them in memory."""
    return _loaded(version.pk, version.sha256)


def preload_active(tasks: Iterable[str]) -> None:
    """Load the active versions of ``tasks`` into this process (see ``loaded_version``).

    On one thread: a process that has started torch's OpenMP thread pool and then forks
    (an RQ worker forking a work horse) gives a child whose first parallel operation hangs.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for version in ModelVersion.objects.filter(task__in=tasks, is_active=True):
            loaded_version(version)
    finally:
        torch.set_num_threads(threads)


def check_model(path: Path, task: str, fmt: str, spec: dict[str, Any] | None) -> dict[str, Any]:
    """Load the file and run it once on a blank input; returns the resolved spec as a dict.

    Raises ModelRejected with a message that names the problem.
    """
    # Lazy on purpose: registering a model (an admin's upload, or the shipped models on a
    # fresh install's first run) loads torch into that web process, so the check answers
    # at once; nothing else a web process does imports it.
    import torch

    from .engine.mil import GRID
    from .engine.model_io import FORMATS, ModelSpec

    if fmt not in FORMATS:
        raise ModelRejected(f"unknown model format {fmt!r}; expected one of {', '.join(FORMATS)}")
    try:
        model = load_model(path, task, fmt, spec)
    except ModelRejected:
        raise
    except Exception as error:  # torch raises many types for a file it cannot read
        raise ModelRejected(f"the file does not load as a {fmt} {task}: {error}") from None
    if task == ModelVersion.Task.MIL:
        model, resolved = model
        blank = torch.zeros(1, GRID * GRID, 3, resolved.patch_px, resolved.patch_px)
    else:
        resolved: ModelSpec = model.spec
        blank = torch.zeros(1, 3, resolved.patch_px, resolved.patch_px)
    try:
        with torch.inference_mode():
            if task == ModelVersion.Task.MIL:
                model(blank)
            elif task == ModelVersion.Task.DETECTOR:
                model(blank, 0.99)
            else:
                classes = model(blank).shape[-1]
                if classes != len(resolved.class_names):
                    raise ValueError(
                        f"model outputs {classes} classes but its spec names "
                        f"{len(resolved.class_names)}: {list(resolved.class_names)}"
                    )
    except Exception as error:
        raise ModelRejected(f"the model's output does not match its spec: {error}") from None
    return resolved.to_dict()


def register_model(
    source: Path,
    *,
    name: str,
    version: str,
    task: str,
    fmt: str,
    spec: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    training_note: str = "",
    registered_by=None,
    activate: bool = False,
    domain: dict[str, Any] | None = None,
) -> ModelVersion:
    """Check a model file, copy it into the model store and record it (or raise
    ModelRejected having stored nothing). ``activate`` makes it the task's active version;
    ``domain`` is a detector's description of its training data (without one, its runs'
    domain status is ``unknown``)."""
    if ModelVersion.objects.filter(name=name, version=version).exists():
        raise ModelRejected(f"{name} {version} is already registered")
    resolved = check_model(source, task, fmt, spec)
    domain = _checked_domain(domain, task)
    store = Path(settings.MODEL_STORE)
    sha256 = file_sha256(source)
    target = store / f"{sha256[:16]}-{Path(source).name}"
    copied = None
    try:
        if not target.exists():
            store.mkdir(parents=True, exist_ok=True)
            incoming = target.with_name(f".incoming-{target.name}")
            shutil.copyfile(source, incoming)
            incoming.replace(target)
            copied = target
        with transaction.atomic():
            if activate:
                ModelVersion.objects.filter(task=task, is_active=True).update(is_active=False)
            registered = ModelVersion.objects.create(
                name=name,
                version=version,
                task=task,
                format=fmt,
                weights=target.name,
                sha256=sha256,
                spec=resolved,
                metrics=metrics or {},
                training_note=training_note,
                registered_by=registered_by,
                is_active=activate,
                domain=domain,
            )
            record_audit(
                "model_registered",
                actor=registered_by,
                obj=registered,
                details={
                    "name": name,
                    "version": version,
                    "task": task,
                    "format": fmt,
                    "sha256": sha256,
                    "active": activate,
                },
            )
            return registered
    except BaseException:
        if copied is not None:
            copied.unlink(missing_ok=True)
        raise


def _add_shipped_description(version: ModelVersion, card: dict) -> None:
    """A shipped detector registered before its card described its training data gets the
    card's description (same weights only), audited as a change of the version."""
    if version.domain or not card.get("domain") or version.sha256 != card["sha256"]:
        return
    with transaction.atomic():
        version.domain = _checked_domain(card["domain"], version.task)
        version.save(update_fields=["domain"])
        record_audit(
            "modelversion_changed",
            obj=version,
            details={
                "changes": {"domain": ["", f"described ({card['domain'].get('method', '')})"]},
                "name": str(version),
                "why": "the shipped card describes the version's training data",
            },
        )


def _checked_domain(domain: dict[str, Any] | None, task: str) -> dict[str, Any]:
    """The domain description to store, refused when it cannot be used."""
    if not domain:
        return {}
    if task != ModelVersion.Task.DETECTOR:
        raise ModelRejected("only a detector carries a domain description")
    from .engine.domain import DomainDescription

    try:
        DomainDescription.from_dict(domain)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelRejected(f"the domain description cannot be read: {error}") from None
    return domain


def activate(version: ModelVersion, actor=None) -> ModelVersion | None:
    """Make ``version`` its task's active version (promotion or rollback), audited with the
    version it replaces; returns that previous version (None if there was none)."""
    with transaction.atomic():
        current = (
            ModelVersion.objects.select_for_update()
            .filter(task=version.task, is_active=True)
            .exclude(pk=version.pk)
            .first()
        )
        ModelVersion.objects.filter(task=version.task, is_active=True).update(is_active=False)
        ModelVersion.objects.filter(pk=version.pk).update(is_active=True)
        record_audit(
            "model_activated",
            actor=actor,
            obj=version,
            details={
                "task": version.task,
                "active": f"{version.name} {version.version}",
                "sha256": version.sha256,
                "replaced": f"{current.name} {current.version}" if current else "",
            },
        )
    version.is_active = True
    return current


def write_card(
    store: Path,
    name: str,
    task: str,
    weights: str,
    spec: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, Any],
) -> Path:
    """Write ``<name>-<version>.json``: what the model is, how it was made, how it scores."""
    card = {
        "name": name,
        "version": SHIPPED_VERSIONS[name],
        "task": task,
        "format": "native",
        "weights": weights,
        "sha256": file_sha256(store / weights),
        "spec": spec,
        "training": training,
        "metrics": metrics,
    }
    path = store / f"{name}-{SHIPPED_VERSIONS[name]}.json"
    path.write_text(json.dumps(card, indent=1) + "\n")
    return path


def shipped_cards() -> list[dict[str, Any]]:
    """The cards of the models shipped in the repository."""
    return [json.loads(p.read_text()) for p in sorted(settings.SHIPPED_MODELS.glob("*.json"))]


def register_shipped_models() -> list[ModelVersion]:
    """Register the shipped models that are not yet in the registry; each becomes active
    when its task has no active version. Returns the versions it registered."""
    added = []
    for card in shipped_cards():
        existing = ModelVersion.objects.filter(name=card["name"], version=card["version"]).first()
        if existing is not None:
            _add_shipped_description(existing, card)
            continue
        note = json.dumps(card["training"], indent=1)
        added.append(
            register_model(
                settings.SHIPPED_MODELS / card["weights"],
                name=card["name"],
                version=card["version"],
                task=card["task"],
                fmt=card["format"],
                spec=card["spec"],
                metrics=card["metrics"],
                training_note=note,
                domain=card.get("domain"),
                activate=not ModelVersion.objects.filter(
                    task=card["task"], is_active=True
                ).exists(),
            )
        )
    return added
