"""The append-only audit log: every event is chained to the previous one by SHA-256.

Changing, inserting or deleting a row in the middle breaks the chain at that row, which
``verify_chain`` (and ``manage.py verify_audit``) names; an anchor (``audit_anchor``: the row
count and the last hash, kept outside the database) also catches a truncated or re-chained
log. Triggers refuse UPDATE and DELETE on the table (on SQLite: see migration 0007).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.utils import timezone

from .models import AuditEvent

GENESIS = "0" * 64
LOCK_KEY = 0x4D69746F  # pg_advisory_xact_lock key serialising appends ("Mito")
EVENT_COLUMNS = [
    "id", "created_at", "actor_id", "actor_name", "action", "object_type", "object_id",
    "case_id", "case", "details", "client_ip", "prev_hash", "hash",
]  # fmt: skip
RISKY_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def client_ip(request) -> str | None:
    """The client's address as the web server saw it (REMOTE_ADDR), in the form the column
    stores (IPv6 compressed, blank as NULL): the hash covers what is stored."""
    if request is None:
        return None
    address = request.META.get("REMOTE_ADDR") or None
    return AuditEvent._meta.get_field("client_ip").get_prep_value(address)


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
    """The SHA-256 of the row's canonical content."""
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
class Problem:
    """One broken row: the audit event's id it concerns (None if no event) and a sentence."""

    row: int | None
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass
class ChainCheck:
    """The result of checking the chain: rows checked, and every problem found."""

    checked: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def broken_id(self) -> int | None:
        """The first broken row, if any."""
        return self.problems[0].row if self.problems else None


@dataclass(frozen=True)
class Anchor:
    """The chain's head at one moment: how many rows there were and the last row's hash."""

    count: int
    head: str

    def __str__(self) -> str:
        return json.dumps({"count": self.count, "head": self.head})


def current_anchor() -> Anchor:
    """The head of the chain now, to be stored outside the database."""
    last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
    return Anchor(AuditEvent.objects.count(), last or GENESIS)


def parse_anchors(text: str) -> list[Anchor]:
    """Anchors from ``audit_anchor`` output: one JSON object a line (blank lines skipped).
    Raises ValueError with a sentence saying which line is wrong."""
    anchors = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            anchor = Anchor(int(data["count"]), str(data["head"]))
        except (ValueError, TypeError, KeyError):
            raise ValueError(
                f'Anchor line {number} is not {{"count": N, "head": "HASH"}} '
                "as audit_anchor prints it."
            ) from None
        if anchor.count < 0 or len(anchor.head) != 64:
            raise ValueError(f"Anchor line {number} has a negative count or a malformed hash.")
        anchors.append(anchor)
    if not anchors:
        raise ValueError("No anchor given.")
    return anchors


def verify_chain(anchors: list[Anchor] | tuple = ()) -> ChainCheck:
    """Recompute every row's hash in order, check each links to the one before, and check
    the row at each anchor's count still has the anchor's hash (a truncation or a re-chained
    log since the anchor was taken breaks that). Every broken row is reported."""
    wanted = {}
    for anchor in anchors:
        wanted.setdefault(anchor.count, []).append(anchor)
    check = ChainCheck(0)
    expected_prev = GENESIS
    for event in AuditEvent.objects.order_by("id").iterator(chunk_size=2000):
        broken = f"Audit log broken at row {event.pk}:"
        if event.prev_hash != expected_prev:
            text = f"{broken} its link to the row before does not match (a row is missing)"
            check.problems.append(Problem(event.pk, text))
        if event_hash(event) != event.hash:
            text = f"{broken} its content does not match its hash"
            check.problems.append(Problem(event.pk, text))
        expected_prev = event.hash
        check.checked += 1
        for anchor in wanted.pop(check.checked, []):
            if anchor.head != event.hash:
                text = (
                    f"Audit log broken at row {event.pk}: it is row number {anchor.count}, "
                    f"whose hash the anchor recorded as {anchor.head} (the log was re-chained)"
                )
                check.problems.append(Problem(event.pk, text))
    for count, missing in sorted(wanted.items()):
        if count == 0 and all(a.head == GENESIS for a in missing):
            continue  # an anchor of the empty log
        text = f"Audit log truncated: an anchor recorded {count} rows, {check.checked} are left"
        check.problems.append(Problem(None, text))
    return check


def _neutralise(value: str) -> str:
    """A leading apostrophe keeps a spreadsheet from running text as a formula. It is also
    put before text that already starts with one, so dropping exactly one leading
    apostrophe always gives the original back (docs/verify_events_csv.py does)."""
    return "'" + value if value.startswith(RISKY_STARTS) else value


def canonical_details(details: dict) -> str:
    """The details exactly as the hash covers them."""
    return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _event_row(event: AuditEvent) -> list[str]:
    return [
        str(event.pk),
        event.created_at.isoformat(),
        "" if event.actor_id is None else str(event.actor_id),
        event.actor_name,
        event.action,
        event.object_type,
        event.object_id,
        "" if event.case_id is None else str(event.case_id),
        event.case.accession if event.case_id else "",
        canonical_details(event.details),
        event.client_ip or "",
        event.prev_hash,
        event.hash,
    ]


def events_csv_lines() -> Iterator[str]:
    """The whole chain as CSV, a line at a time (UTF-8 BOM first, for spreadsheets): every
    field the hash covers, as hashed, so the file verifies offline."""
    writer = csv.writer(_Line())
    yield "\ufeff" + writer.writerow(EVENT_COLUMNS)
    events = AuditEvent.objects.select_related("case").order_by("id")
    for event in events.iterator(chunk_size=2000):
        yield writer.writerow([_neutralise(v) for v in _event_row(event)])


class _Line:
    """A file-like sink that hands back what csv.writer writes."""

    def write(self, text: str) -> str:
        return text
