"""The decision and sign-out records checked against the audit events that recorded them.

The hash chain protects the events; these checks carry that protection to the tables the
reports are built from: an edit of a Decision row or of a case's sign-out behind the
application's back no longer matches its event, and ``verify_audit`` names the field.
"""

from __future__ import annotations

from cases.audit import Problem
from cases.models import AuditEvent, Case

from .models import Decision


def decision_record(decision: Decision) -> dict:
    """What the ``decision`` event records of the row (every field the reports show)."""
    return {
        "decision": decision.pk,
        "finding": decision.finding_id,
        "reviewer": decision.reviewer_id,
        "verdict": decision.verdict,
        "corrected_phase": decision.corrected_phase,
        "reason": decision.reason,
        "comment": decision.comment,
        "blinded": decision.blinded,
        "carried_from": decision.carried_from_id,
        "decided_at": decision.created_at.isoformat(),
    }


def sign_out_record(case: Case) -> dict:
    """What the ``sign_out`` event records of the case."""
    return {
        "final_mitotic_count": case.final_mitotic_count,
        "final_grade": case.final_grade,
        "signed_out_by": case.signed_out_by_id,
        "signed_out_at": case.signed_out_at.isoformat() if case.signed_out_at else None,
    }


def _differences(expected: dict, event: AuditEvent, actor_field: str) -> tuple[list, list]:
    """The fields whose recorded value differs, and those the event does not carry."""
    recorded = {actor_field: event.actor_id, **event.details}
    differ = [
        f"{name} is {value!r}, recorded {recorded[name]!r}"
        for name, value in expected.items()
        if name in recorded and recorded[name] != value
    ]
    missing = [name for name in expected if name not in recorded]
    return differ, missing


def check_decisions() -> tuple[list[Problem], int]:
    """Every Decision row against the first event about it (the one that recorded its
    creation: whatever path creates a decision records ``decision_record`` in that event's
    details); returns the problems and how many decisions were recorded before the events
    carried every field (partly verifiable)."""
    events: dict[int, AuditEvent] = {}
    for event in AuditEvent.objects.filter(object_type="decision").order_by("id"):
        events.setdefault(int(event.object_id), event)
    problems, partial = [], 0
    for decision in Decision.objects.order_by("id").iterator(chunk_size=2000):
        event = events.pop(decision.pk, None)
        if event is None:
            text = f"Decision {decision.pk} has no audit event (added behind the application)"
            problems.append(Problem(None, text))
            continue
        differ, missing = _differences(decision_record(decision), event, "reviewer")
        if differ:
            text = f"Decision {decision.pk} changed since audit event {event.pk} recorded it: "
            text += "; ".join(differ)
            problems.append(Problem(event.pk, text))
        partial += bool(missing)
    for decision_id, event in sorted(events.items()):
        text = f"Decision {decision_id}, recorded by audit event {event.pk}, is missing"
        problems.append(Problem(event.pk, text))
    return problems, partial


def check_sign_outs() -> list[Problem]:
    """Every signed-out case's final count, grade, signer and time against its latest
    ``sign_out`` event."""
    problems = []
    latest: dict[int, AuditEvent] = {}
    for event in AuditEvent.objects.filter(action="sign_out").order_by("id"):
        latest[event.case_id] = event
    signed = Case.objects.exclude(signed_out_by=None, final_mitotic_count=None, final_grade="")
    for case in signed.order_by("id"):
        event = latest.get(case.pk)
        if event is None:
            text = f"Case {case.accession} carries a sign-out that no audit event recorded"
            problems.append(Problem(None, text))
            continue
        differ, _ = _differences(sign_out_record(case), event, "signed_out_by")
        if differ:
            text = f"Case {case.accession}'s sign-out changed since audit event {event.pk} "
            text += "recorded it: " + "; ".join(differ)
            problems.append(Problem(event.pk, text))
    return problems
