"""The words and signs of review, in one place for Python, templates and the viewer's
JavaScript (as JSON via ``json_script``): mitotic phases (names from the engine, which
classifies them), verdicts and reasons (from the Decision model)."""

from inference.engine.vocabulary import MITOTIC_PHASES, PHASES

from .models import Decision

# How each phase looks on the slide and in exports: marker shape, colour (RGB), the key
# that picks it in the viewer.
PHASE_SIGNS = {
    "prophase": {"label": "Prophase", "short": "Pro", "shape": "circle", "rgb": [31, 119, 180]},
    "metaphase": {"label": "Metaphase", "short": "Meta", "shape": "square", "rgb": [214, 39, 40]},
    "anaphase": {"label": "Anaphase", "short": "Ana", "shape": "diamond", "rgb": [148, 103, 189]},
    "telophase": {"label": "Telophase", "short": "Telo", "shape": "triangle", "rgb": [44, 160, 44]},
    "non_mitotic": {"label": "Look-alike", "short": "Look", "shape": "cross",
                    "rgb": [140, 140, 140]},
}  # fmt: skip
VERDICT_KEYS = {"agree": "a", "disagree": "d", "uncertain": "u"}


def for_pages() -> dict:
    """Everything the viewer's JavaScript needs to name and draw phases and verdicts."""
    return {
        "phases": [
            {
                "name": name,
                **PHASE_SIGNS[name],
                "mitotic": name in MITOTIC_PHASES,
                "key": str(MITOTIC_PHASES.index(name) + 1) if name in MITOTIC_PHASES else "",
            }
            for name in PHASES
        ],
        "verdicts": [
            {"value": value, "label": str(label), "key": VERDICT_KEYS[value]}
            for value, label in Decision.Verdict.choices
        ],
        "reasons": [{"value": v, "label": str(label)} for v, label in Decision.Reason.choices],
    }
