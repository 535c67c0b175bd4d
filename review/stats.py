"""Agreement statistics over current decisions: per model version, between pathologists,
and between the AI's phase and the pathologist's."""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations

from inference.models import Finding

from .models import Decision
from .services import current_decisions

VERDICTS = [v for v, _ in Decision.Verdict.choices]
PHASES = [p for p, _ in Finding.Phase.choices]


def cohen_kappa(pairs: list[tuple[str, str]], categories: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels; None without pairs."""
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in categories) / (n * n)
    if expected >= 1.0:
        return 1.0 if observed >= 1.0 else 0.0
    return (observed - expected) / (1 - expected)


def _current():
    ai_findings = Finding.objects.filter(source=Finding.Source.AI)
    return current_decisions(ai_findings).select_related("reviewer", "finding__run__detector")


def _origins(decisions) -> list[int]:
    """Each decision's origin: the decision a reader made that it was carried from, across
    re-runs (itself when it was made on its finding)."""
    carried = dict(Decision.objects.exclude(carried_from=None).values_list("id", "carried_from"))
    origins = []
    for d in decisions:
        origin = d.pk
        while origin in carried:
            origin = carried[origin]
        origins.append(origin)
    return origins


def once_per(decisions, key) -> list:
    """The latest of the decisions sharing ``key(decision, origin)``: a judgement carried
    to a re-run's finding counts once, not once per run."""
    latest = {}
    for d, origin in zip(decisions, _origins(decisions), strict=True):
        k = key(d, origin)
        if k not in latest or latest[k].pk < d.pk:
            latest[k] = d
    return sorted(latest.values(), key=lambda d: d.pk)


def per_model_version(decisions) -> list[dict]:
    """Share of AI findings agreed / disagreed / uncertain, and precision, per detector."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for d in decisions:
        counts[str(d.finding.run.detector)][d.verdict] += 1
    rows = []
    for model, c in sorted(counts.items()):
        total = sum(c.values())
        decided = c["agree"] + c["disagree"]
        rows.append(
            {
                "model": model,
                "decisions": total,
                **{v: c[v] for v in VERDICTS},
                **{f"{v}_share": c[v] / total for v in VERDICTS},
                "precision": c["agree"] / decided if decided else None,
            }
        )
    return rows


def per_pathologist_pair(decisions) -> list[dict]:
    """Cohen's kappa on the findings both pathologists of a pair decided."""
    by_reviewer: dict[str, dict[int, str]] = defaultdict(dict)
    for d in decisions:
        by_reviewer[d.reviewer.get_username()][d.finding_id] = d.verdict
    rows = []
    for a, b in combinations(sorted(by_reviewer), 2):
        shared = by_reviewer[a].keys() & by_reviewer[b].keys()
        pairs = [(by_reviewer[a][f], by_reviewer[b][f]) for f in sorted(shared)]
        if pairs:
            rows.append(
                {
                    "pathologists": f"{a} · {b}",
                    "shared_findings": len(pairs),
                    "observed_agreement": sum(x == y for x, y in pairs) / len(pairs),
                    "kappa": cohen_kappa(pairs, VERDICTS),
                }
            )
    return rows


def phase_confusion(decisions) -> dict[str, dict[str, int]]:
    """AI phase (rows) against the pathologist's phase (columns; "not mitotic" when they
    disagreed that it is a mitosis), over agree and disagree decisions."""
    columns = [*PHASES[:4], "not mitotic"]
    matrix = {phase: dict.fromkeys(columns, 0) for phase in PHASES}
    for d in decisions:
        if d.verdict == Decision.Verdict.UNCERTAIN:
            continue
        column = d.corrected_phase or d.finding.phase
        if d.verdict == Decision.Verdict.DISAGREE or column not in columns:
            column = "not mitotic"
        matrix[d.finding.phase][column] += 1
    return {row: cells for row, cells in matrix.items() if any(cells.values())}


def agreement_statistics() -> dict:
    """All three views over everyone's current decisions on AI findings; a decision carried
    across re-runs counts once per model version, and once between readers."""
    decisions = list(_current())
    per_version = once_per(decisions, lambda d, o: (d.finding.run.detector_id, d.reviewer_id, o))
    per_reader = once_per(decisions, lambda d, o: (d.reviewer_id, o))
    return {
        "decisions": len(per_reader),
        "models": per_model_version(per_version),
        "pairs": per_pathologist_pair(per_reader),
        "phase_confusion": phase_confusion(per_reader),
    }
