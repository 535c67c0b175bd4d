"""Re-verify a MitoLens audit events CSV offline, with nothing but Python's standard library.

    python3 verify_events_csv.py mitolens-audit-events.csv [--anchor '{"count": N, "head": "H"}']

The CSV comes from `manage.py export_audit --events`, the audit export page's "Download
audit events CSV" or GET /api/audit/events/. Every row's SHA-256 is recomputed from its
columns exactly as MitoLens computed it, and each row must link to the one before (the
first to 64 zeros). With --anchor (a line `manage.py audit_anchor` printed earlier and that
was kept elsewhere) the row at the anchor's count must still carry the anchor's hash.
Every broken row is listed; the exit status is 1 if any, 0 if the file verifies.
"""

import argparse
import csv
import hashlib
import json
import sys

GENESIS = "0" * 64


def cell(value: str) -> str:
    """Undo the export's spreadsheet-formula guard: it put one apostrophe before any text
    starting with = + - @ tab CR or an apostrophe."""
    return value[1:] if value.startswith("'") else value


def content(row: dict) -> str:
    """The canonical text a row's hash covers."""
    return json.dumps(
        {
            "created_at": row["created_at"],
            "actor": int(row["actor_id"]) if row["actor_id"] else None,
            "actor_name": row["actor_name"],
            "action": row["action"],
            "object_type": row["object_type"],
            "object_id": row["object_id"],
            "case": int(row["case_id"]) if row["case_id"] else None,
            "details": json.loads(row["details"]),
            "client_ip": row["client_ip"] or None,
            "prev_hash": row["prev_hash"],
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def verify(path: str, anchor: dict | None = None) -> list[str]:
    """Every problem in the file, as sentences naming the row (event id)."""
    problems, expected_prev, count = [], GENESIS, 0
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for raw in csv.DictReader(handle):
            row = {name: cell(value) for name, value in raw.items()}
            count += 1
            if row["prev_hash"] != expected_prev:
                problems.append(f"row {row['id']}: its link to the row before does not match")
            if hashlib.sha256(content(row).encode()).hexdigest() != row["hash"]:
                problems.append(f"row {row['id']}: its content does not match its hash")
            if anchor and count == anchor["count"] and row["hash"] != anchor["head"]:
                problems.append(f"row {row['id']}: not the anchor's head (re-chained)")
            expected_prev = row["hash"]
    if anchor and count < anchor["count"]:
        problems.append(f"the anchor recorded {anchor['count']} rows, the file has {count}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv_file")
    parser.add_argument("--anchor", type=json.loads, help="a line audit_anchor printed")
    args = parser.parse_args()
    problems = verify(args.csv_file, args.anchor)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problems." if problems else "The audit events verify.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
