"""Card text placeholders: ``{{ path }}`` or ``{{ path | filter }}``.

Paths are dotted lookups into a finding's bindings (``row.consequence_en``, ``a.name``,
``let.mg_per_kg``, ``patient.weight.kg``). Numbers render with the locale's decimal mark
(nb: ``2,5``; en: ``2.5``). Filters: ``round0``, ``round1``, ``round2``, ``round3``, ``date``,
``lower``, ``upper``, ``list``, ``opt`` (a missing optional value renders as nothing instead of
"?").
"""

from __future__ import annotations

import math
import re
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w.\-]*)\s*(?:\|\s*([a-z0-9_]+)\s*)?\}\}")
FILTERS = {"round0", "round1", "round2", "round3", "date", "lower", "upper", "list", "opt"}
SUMMARY_TEXT = 40  # in summaries, a text value longer than this is shortened (keeps them < 140)


def lookup(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def fmt_number(v: float, locale: str, decimals: int | None = None) -> str:
    if decimals is None:
        if float(v).is_integer():
            s = str(int(v))
        else:
            s = f"{v:.3f}".rstrip("0").rstrip(".")
    else:
        q = math.floor(v * 10**decimals + 0.5) / 10**decimals if v >= 0 else round(v, decimals)
        s = f"{q:.{decimals}f}"
        if "." in s:
            s = s.rstrip("0").rstrip(".")
    return s.replace(".", ",") if locale == "nb" else s


def fmt_value(v: Any, locale: str, flt: str | None = None, max_text: int | None = None) -> str:
    if v is None or (flt == "opt" and v in ("", [])):
        return "" if flt == "opt" else "?"  # `opt`: an optional value renders as nothing when missing
    if isinstance(v, bool):
        return ({"nb": "ja", "en": "yes"} if v else {"nb": "nei", "en": "no"})[locale if locale in ("nb", "en") else "en"]
    if isinstance(v, (int, float)):
        if flt and flt.startswith("round"):
            return fmt_number(float(v), locale, int(flt[5:]))
        return fmt_number(float(v), locale)
    s = ", ".join(fmt_value(x, locale) for x in v) if isinstance(v, list) else str(v)
    if flt == "date":
        return s[:10]
    if flt == "lower":
        s = s.lower()
    elif flt == "upper":
        s = s.upper()
    if max_text is not None and len(s) > max_text:
        s = s[: max_text - 1] + "…"
    return s


def render_text(template: str, data: dict[str, Any], locale: str, max_text: int | None = None) -> str:
    return PLACEHOLDER.sub(lambda m: fmt_value(lookup(data, m.group(1)), locale, m.group(2), max_text), template)


def render_value(template: Any, data: dict[str, Any], locale: str) -> Any:
    """Render a JSON template (for FHIR resources in actions): a string that is exactly one
    placeholder keeps the value's type; other strings are rendered as text."""
    if isinstance(template, str):
        m = PLACEHOLDER.fullmatch(template.strip())
        if m and not m.group(2):
            return lookup(data, m.group(1))
        return render_text(template, data, locale)
    if isinstance(template, dict):
        return {k: render_value(v, data, locale) for k, v in template.items()}
    if isinstance(template, list):
        return [render_value(v, data, locale) for v in template]
    return template


def placeholders(template: Any) -> list[tuple[str, str | None]]:
    """Every (path, filter) used in a template (string or JSON structure)."""
    out: list[tuple[str, str | None]] = []
    if isinstance(template, str):
        out.extend((m.group(1), m.group(2)) for m in PLACEHOLDER.finditer(template))
    elif isinstance(template, dict):
        for v in template.values():
            out.extend(placeholders(v))
    elif isinstance(template, list):
        for v in template:
            out.extend(placeholders(v))
    return out


def literal_length(template: str) -> int:
    return len(PLACEHOLDER.sub("", template))
