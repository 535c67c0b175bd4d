"""Check the audit log's hash chain, its anchors, and the decisions and sign-outs against
the events that recorded them; list every broken row."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from cases.audit import parse_anchors, verify_chain
from review import integrity


def read_anchors(value: str):
    """An anchor as audit_anchor printed it, or a file of them (one a line, all checked)."""
    path = Path(value)
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            raise CommandError(
                "--anchor takes the JSON audit_anchor printed or a file of such lines; "
                "that file cannot be read."
            ) from None
    try:
        return parse_anchors(text)
    except ValueError as error:
        raise CommandError(str(error)) from None


class Command(BaseCommand):
    help = (
        "Verify the audit log: every row's hash and link, the anchors given, and every "
        "decision and sign-out against its event. Lists every problem; exits non-zero."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--anchor",
            help="audit_anchor's output, or a file of such lines: fails on truncation or re-chain",
        )

    def handle(self, *args, anchor=None, **options):
        anchors = read_anchors(anchor) if anchor else []
        check = verify_chain(anchors)
        decision_problems, partial = integrity.check_decisions()
        problems = check.problems + decision_problems + integrity.check_sign_outs()
        if partial:
            self.stdout.write(
                f"{partial} decisions were recorded before events carried every field: their "
                "comment, blinded flag and time are not verifiable; the rest is."
            )
        if problems:
            lines = [str(problem) for problem in problems]
            lines.append(f"{len(problems)} problems; {check.checked} rows checked.")
            raise CommandError("\n".join(lines))
        self.stdout.write(
            self.style.SUCCESS(
                f"Audit log intact: {check.checked} rows verified"
                + (f", {len(anchors)} anchors matched" if anchors else "")
                + "; decisions and sign-outs match their events."
            )
        )
