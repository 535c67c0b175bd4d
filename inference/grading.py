"""Grade flags from the mitotic count, with cut-offs per tumour type (settings override)."""

from __future__ import annotations

from django.conf import settings

# unit: "per_10_hpf" (count in the 10-HPF hotspot) or "per_mm2"; bands: lowest value first.
DEFAULT_RULES: dict[str, dict] = {
    "canine_mct": {
        "name": "Kiupel 2011 two-tier",
        "unit": "per_10_hpf",
        "bands": [[0, "Low grade"], [7, "High grade"]],
    },
    "breast": {
        "name": "Nottingham (Elston–Ellis) mitotic score, 0.55 mm field",
        "unit": "per_10_hpf",
        "bands": [[0, "Mitotic score 1"], [9, "Mitotic score 2"], [18, "Mitotic score 3"]],
    },
    "sts": {
        "name": "FNCLCC mitotic score",
        "unit": "per_10_hpf",
        "bands": [[0, "Mitotic score 1"], [10, "Mitotic score 2"], [20, "Mitotic score 3"]],
    },
    "melanoma": {
        "name": "AJCC mitotic rate",
        "unit": "per_mm2",
        "bands": [[0, "< 1 per mm²"], [1, "≥ 1 per mm²"]],
    },
}
UNITS = {"per_10_hpf": "per 10 HPF", "per_mm2": "per mm²"}


def rules() -> dict[str, dict]:
    """The grading rules in force: the defaults, overridden by settings.MITOTIC_GRADE_RULES."""
    return {**DEFAULT_RULES, **getattr(settings, "MITOTIC_GRADE_RULES", {})}


def grade(tumour_type: str, count: float, per_mm2: float) -> tuple[str, str]:
    """(grade label, the rule that gave it) for a hotspot count per 10 HPF; ("", reason)
    without a rule. The rule names the band as a range, e.g. "Low grade: < 7 per 10 HPF"."""
    rule = rules().get(tumour_type)
    if rule is None:
        return "", "no grading rule is configured for this tumour type"
    value = count if rule["unit"] == "per_10_hpf" else per_mm2
    bands = rule["bands"]
    index = max([k for k, (cut, _) in enumerate(bands) if value >= cut], default=0)
    label, band = bands[index][1], _band_range(bands, index, UNITS[rule["unit"]])
    return label, f"{rule['name']} ({band if band == label else f'{label}: {band}'})"


def _band_range(bands: list, index: int, unit: str) -> str:
    """Band ``index`` of ``bands`` as a range: "< 7 per 10 HPF", "≥ 9 and < 18 …"."""
    lower = bands[index][0] if index else None  # the first band takes everything below
    upper = bands[index + 1][0] if index + 1 < len(bands) else None
    if lower is None and upper is None:
        return f"any count {unit}"
    if lower is None:
        return f"< {upper} {unit}"
    if upper is None:
        return f"≥ {lower} {unit}"
    return f"≥ {lower} and < {upper} {unit}"
