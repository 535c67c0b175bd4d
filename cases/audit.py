"""The append-only audit log: every event is chained to the previous one by SHA-256.

Changing, inserting or deleting a row in the middle breaks the chain at that row, which
``verify_chain`` (and ``manage.py verify_audit``) names. On PostgreSQL a trigger also
refuses UPDATE and DELETE on the table.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from .models import AuditEvent

GENESIS = "0" * 64
LOCK_KEY = 0x4D69746F  # pg_advisory_xact_lock key serialising appends ("Mito")


def client_ip(request) -> str | None:
    """The client's address as the web server saw it (REMOTE_ADDR)."""
    return request.META.get("REMOTE_ADDR") if request is not None else None


def _content(event: AuditEvent) -> str:
    """The canonical text a row's hash covers (everything but the hash itself)."""
    return json.dumps(
        {
            "created_at": event.created_at.isoformat(),
            "actor": event.actor_id,
            "actor_name": event.actor_name,
            "action": event.action,
            "object_type": event.object_type,
            "object_id": event.object_id,
            "case": event.case_id,
            "details": event.details,
            "client_ip": event.client_ip,
            "prev_hash": event.prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def event_hash(event: AuditEvent) -> str:
    return hashlib.sha256(_content(event).encode()).hexdigest()


def record(
    action: str,
    *,
    actor=None,
    obj=None,
    case=None,
    details: dict | None = None,
    request=None,
) -> AuditEvent:
    """Append one event; call inside the transaction that makes the change it records."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
        previous = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
        user = actor if actor is not None and actor.is_authenticated else None
        event = AuditEvent(
            created_at=timezone.now(),
            actor=user,
            actor_name=user.get_username() if user else (details or {}).get("username", ""),
            action=action,
            object_type=obj._meta.model_name if obj is not None else "",
            object_id=str(obj.pk) if obj is not None else "",
            case=case,
            details=json.loads(json.dumps(details or {}, default=str)),
            client_ip=client_ip(request),
            prev_hash=previous or GENESIS,
        )
        event.hash = event_hash(event)
        event.save()
        return event


@dataclass
class ChainCheck:
    """The result of checking the chain: rows checked, and the first broken row if any."""

    checked: int
    broken_id: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_id is None


def verify_chain() -> ChainCheck:
    """Recompute every row's hash in order and check each links to the one before."""
    expected_prev = GENESIS
    checked = 0
    for event in AuditEvent.objects.order_by("id").iterator(chunk_size=2000):
        if event.prev_hash != expected_prev:
            return ChainCheck(checked, event.pk, "its link to the previous row does not match")
        if event_hash(event) != event.hash:
            return ChainCheck(checked, event.pk, "its content does not match its hash")
        expected_prev = event.hash
        checked += 1
    return ChainCheck(checked)
