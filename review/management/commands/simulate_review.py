"""Review a slide as a perfect reader would, from its synthetic ground truth."""

import json
from dataclasses import dataclass, field
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from cases.models import Case, Slide
from inference import services as ai
from inference.grading import grade
from inference.models import Finding
from inference.tools.scoring import MIDOG_RADIUS_UM, match_points
from review import services as review
from review.models import Decision

MPP_TOLERANCE = 0.01  # relative: the truth's µm/px and the slide's must agree this well


@dataclass
class Plan:
    """What a perfect reader does: (finding, verdict, phase, reason) decisions, then adds."""

    decisions: list[tuple[Finding, str, str, str]] = field(default_factory=list)
    adds: list[dict] = field(default_factory=list)
    unchanged: int = 0


def read_truth(path: Path, slide: Slide) -> dict:
    """The ground-truth file, checked against the slide it is said to describe."""
    try:
        truth = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CommandError(f"Cannot read the truth file {path}: {error.strerror}.") from None
    except ValueError:
        raise CommandError(f"{path} is not JSON.") from None
    if not isinstance(truth, dict) or not {"width", "height", "mpp", "mitoses"} <= truth.keys():
        raise CommandError(
            f"{path} is not a synthetic ground truth (it needs width, height, mpp, mitoses)."
        )
    if (truth["width"], truth["height"]) != (slide.width, slide.height):
        raise CommandError(
            f"{path} describes a {truth['width']}×{truth['height']} px slide; slide {slide.pk} "
            f"is {slide.width}×{slide.height} px. Is it the right file?"
        )
    if slide.mpp and abs(slide.mpp - truth["mpp"]) > MPP_TOLERANCE * truth["mpp"]:
        raise CommandError(
            f"{path} is at {truth['mpp']} µm/px; slide {slide.pk} is at {slide.mpp} µm/px."
        )
    return truth


def _nearest_within(x: float, y: float, points: list[dict], radius: float) -> dict | None:
    best = min(points, key=lambda p: (p["x"] - x) ** 2 + (p["y"] - y) ** 2, default=None)
    if best is None or (best["x"] - x) ** 2 + (best["y"] - y) ** 2 > radius**2:
        return None
    return best


def _disagree_reason(finding: Finding, truth: dict, radius: float) -> str:
    """Why a perfect reader disagrees: the true mitosis is another finding's (duplicate),
    it is a look-alike, or nothing at all is there."""
    if _nearest_within(finding.x, finding.y, truth["mitoses"], radius):
        return Decision.Reason.DUPLICATE
    if _nearest_within(finding.x, finding.y, truth.get("hard_negatives", []), radius):
        return Decision.Reason.LOOKALIKE
    return Decision.Reason.NONE


def _decision(finding: Finding, true: dict | None, truth: dict, radius: float):
    """(verdict, corrected phase, reason) on a finding matched to ``true`` (or to nothing)."""
    if true is not None:
        return Decision.Verdict.AGREE, true["phase"], Decision.Reason.NONE
    return Decision.Verdict.DISAGREE, "", _disagree_reason(finding, truth, radius)


def _same(before: Decision, finding: Finding, verdict: str, phase: str) -> bool:
    """Whether the earlier decision already says ``verdict`` at ``phase``."""
    return before.verdict == verdict and (before.corrected_phase or finding.phase) == (
        phase or finding.phase
    )


def plan_review(findings: list[Finding], truth: dict, reviewer) -> Plan:
    """Match the shown findings to the true mitoses one-to-one (MIDOG: by descending score,
    the nearest unmatched truth within 7.5 µm); agree with matched ones at the true phase,
    disagree with the rest, add the true mitoses nothing matched. Findings the reviewer
    added count in the matching but are not decided on, nor are findings whose current
    decision by the reviewer already says the same."""
    mitoses = truth["mitoses"]
    radius = MIDOG_RADIUS_UM / truth["mpp"]
    pairs = match_points(
        [(f.x, f.y) for f in findings],
        [1.0 if f.score is None else f.score for f in findings],
        [(m["x"], m["y"]) for m in mitoses],
        radius,
    )
    matched = {findings[p].pk: mitoses[t] for p, t in pairs}
    current = {
        d.finding_id: d
        for d in review.current_decisions(
            Finding.objects.filter(pk__in=[f.pk for f in findings]), reviewer
        )
    }
    plan = Plan()
    for finding in findings:
        if finding.source == Finding.Source.PATHOLOGIST and finding.created_by_id == reviewer.pk:
            continue
        verdict, phase, reason = _decision(finding, matched.get(finding.pk), truth, radius)
        before = current.get(finding.pk)
        if before and _same(before, finding, verdict, phase):
            plan.unchanged += 1
        else:
            plan.decisions.append((finding, verdict, phase, reason))
    taken = {id(m) for m in matched.values()}
    plan.adds = [m for m in mitoses if id(m) not in taken]
    return plan


class Command(BaseCommand):
    help = (
        "Make the decisions a perfect reader would on a slide's shown findings, from its "
        "synthetic ground truth: agree with findings within 7.5 µm of a true mitosis (one "
        "each, phase corrected to the true one), disagree with the rest, add the missed "
        "mitoses; optionally sign the case out with the reviewed count. Through the same "
        "services and audit events as the review pages."
    )

    def add_arguments(self, parser):
        parser.add_argument("--slide", type=int, required=True, help="slide id")
        parser.add_argument(
            "--truth", type=Path, required=True, help="the slide's ground truth (OUT.json)"
        )
        parser.add_argument("--reviewer", required=True, help="username of an assigned pathologist")
        parser.add_argument(
            "--sign-out",
            action="store_true",
            help="then sign the case out with the count the case page proposes",
        )
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="print the summary as JSON"
        )

    def handle(self, *args, slide, truth, reviewer, sign_out, as_json, **options):
        slide_obj, user = self._check(slide, reviewer)
        truth_data = read_truth(truth, slide_obj)
        comment = f"Simulated reader, ground truth {truth.name}"
        findings = list(ai.findings_to_review(slide_obj, user).order_by("id"))
        plan = plan_review(findings, truth_data, user)
        try:
            with transaction.atomic():
                summary = self._apply(plan, slide_obj, user, comment)
                summary["shown"] = len(findings)
                if sign_out:
                    summary["signed_out"] = self._sign_out(slide_obj.case, user)
        except review.ReviewRefused as refusal:
            raise CommandError(str(refusal)) from None
        self._report(slide_obj, summary, as_json)

    def _check(self, slide_id: int, username: str):
        slide = Slide.objects.select_related("case").filter(pk=slide_id).first()
        if slide is None:
            raise CommandError(f"No slide with id {slide_id}.")
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        case = slide.case
        if not review.may_review(user, case):
            raise CommandError(
                f"{username} is not assigned to case {case.accession}; only assigned "
                "pathologists review it."
            )
        if case.status == Case.Status.SIGNED_OUT:
            raise CommandError(f"Case {case.accession} is signed out; it is read-only.")
        if ai.latest_run(slide) is None:
            raise CommandError(
                f"Slide {slide.pk} has no finished AI run: run the AI first "
                f"(manage.py run_inference --slide {slide.pk} --sync)."
            )
        return slide, user

    def _apply(self, plan: Plan, slide: Slide, user, comment: str) -> dict:
        counts = {"agreed": 0, "phase_corrected": 0, "disagreed": 0}
        for finding, verdict, phase, reason in plan.decisions:
            review.decide(
                finding, user, verdict, corrected_phase=phase, reason=reason, comment=comment
            )
            if verdict == Decision.Verdict.AGREE:
                counts["agreed"] += 1
                counts["phase_corrected"] += phase != finding.phase
            else:
                counts["disagreed"] += 1
        for mitosis in plan.adds:
            review.add_finding(
                slide, user, float(mitosis["x"]), float(mitosis["y"]), mitosis["phase"]
            )
        return {**counts, "added": len(plan.adds), "unchanged": plan.unchanged}

    def _sign_out(self, case: Case, user) -> dict:
        """Sign out with the reader's own count: as the case page's sign-out form proposes
        it, the highest reviewed count per 10 HPF among the case's slides, graded by the
        tumour type's rule. Unlike the form, it also takes slides the AI was out of its
        domain on: after this review every mitosis there is decided or added, so the
        reviewed count is the reader's own count, not the AI's."""
        best = review.highest_count(c for _, c in review.reviewed_counts(case.slides.all()))
        if best is None:
            raise CommandError(
                f"Case {case.accession} has no reviewed HPF count to sign out with "
                "(no slide with a µm/px and a finished run)."
            )
        count = int(best["count_per_10_hpf"])
        extrapolated = best.get("count_per_10_hpf_extrapolated")
        label, _ = grade(
            case.tumour_type, count if extrapolated is None else extrapolated, best["count_per_mm2"]
        )
        review.sign_out(case, user, count, label or "")
        return {"final_mitotic_count": count, "final_grade": label or ""}

    def _report(self, slide: Slide, summary: dict, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps({"slide": slide.pk, **summary}))
            return
        line = (
            f"Slide {slide.pk} ({slide.case.accession}): {summary['shown']} findings shown; "
            f"agreed {summary['agreed']} ({summary['phase_corrected']} with the phase "
            f"corrected), disagreed {summary['disagreed']}, added {summary['added']} missed "
            f"mitoses; {summary['unchanged']} already decided the same."
        )
        self.stdout.write(line)
        if "signed_out" in summary:
            s = summary["signed_out"]
            self.stdout.write(
                f"Signed out {slide.case.accession}: {s['final_mitotic_count']} per 10 HPF"
                + (f", {s['final_grade']}" if s["final_grade"] else "")
            )
