from django import template

register = template.Library()


@register.filter
def percent(value) -> str:
    """0.853 -> "85 %"; None -> "–"."""
    return "–" if value is None else f"{100 * value:.0f} %"
