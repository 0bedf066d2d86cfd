"""Structured, exact reading of FHIR R4 ``MedicationRequest.dosageInstruction``.

:func:`parse_dosage` turns the raw JSON list into a :class:`StructuredDose`.  Every
number is either exact (see :mod:`cds.context.units`) or ``None``; every ``None``
that could matter is explained in ``problems``.  The function never raises.

Conservative choices (for over-dose checks):

* a dose range reports its high end as ``dose_value``/``dose_mg``;
* ``frequencyMax`` is preferred over ``frequency``, and the shorter of
  ``period``/``periodMax`` is used;
* ``maxDosePerPeriod`` only yields ``max_daily_mg`` when its period divides a day
  into a whole number of windows (1 d, 12 h, 6 h, ...): a cap "per 2 days" or
  "per 5 hours" does not fix an exact per-day cap.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from cds.context.units import (
    UnitError,
    fraction_to_decimal,
    normalize_unit,
    period_to_days_exact,
    to_fraction,
    to_mg_exact,
)

__all__ = ["StructuredDose", "parse_dosage", "ROUTE_KEYWORDS", "SNOMED_ROUTES", "TIMING_CODES"]

UCUM_SYSTEM: Final[str] = "http://unitsofmeasure.org"
SNOMED_SYSTEM: Final[str] = "http://snomed.info/sct"
GTS_SYSTEM: Final[str] = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"

#: HL7 v3 GTSAbbreviation (FHIR timing-abbreviation) -> doses per day.  ``None`` = not exact.
TIMING_CODES: Final[dict[str, Fraction | None]] = {
    "QD": Fraction(1),
    "BID": Fraction(2),
    "TID": Fraction(3),
    "QID": Fraction(4),
    "QOD": Fraction(1, 2),
    "AM": Fraction(1),
    "PM": Fraction(1),
    "BED": Fraction(1),
    "Q1H": Fraction(24),
    "Q2H": Fraction(12),
    "Q3H": Fraction(8),
    "Q4H": Fraction(6),
    "Q6H": Fraction(4),
    "Q8H": Fraction(3),
    "Q12H": Fraction(2),
    "WK": Fraction(1, 7),
    "MO": None,  # monthly: a month has no exact length in days
}

#: SNOMED CT route codes -> route keyword.
SNOMED_ROUTES: Final[dict[str, str]] = {
    "26643006": "oral",
    "37161004": "rectal",
    "47625008": "iv",
    "78421000": "im",
    "34206005": "sc",
    "447694001": "inhaled",  # respiratory tract route
    "54471007": "buccal",
    "46713006": "intranasal",
    "6064005": "topical",
    "37839007": "sublingual",
}

#: Whole-token abbreviations (after dots are removed: "p.o." -> "po").
_ROUTE_TOKENS: Final[dict[str, str]] = {
    "po": "oral",
    "munn": "oral",
    "munnen": "oral",
    "mouth": "oral",
    "pr": "rectal",
    "iv": "iv",
    "im": "im",
    "sc": "sc",
    "sk": "sc",
    "sq": "sc",
    "sl": "sublingual",
    "inh": "inhaled",
    "neb": "nebulised",
}
#: Words after "pr" that make it Norwegian "per" ("1 tablett pr. dag").
_PER_WORDS: Final[frozenset[str]] = frozenset(
    {"dag", "døgn", "uke", "time", "gang", "dose", "kg", "mnd", "måned", "day", "week", "hour"}
)
#: Word prefixes (English and Norwegian).
ROUTE_KEYWORDS: Final[tuple[tuple[str, str], ...]] = (
    ("peroral", "oral"),
    ("oral", "oral"),
    ("rektal", "rectal"),
    ("rectal", "rectal"),
    ("intraven", "iv"),
    ("intramusk", "im"),
    ("intramusc", "im"),
    ("subkut", "sc"),
    ("subcut", "sc"),
    ("inhal", "inhaled"),
    ("nebul", "nebulised"),
    ("forstøv", "nebulised"),
    ("bukkal", "buccal"),
    ("buccal", "buccal"),
    ("intranasal", "intranasal"),
    ("nasal", "intranasal"),
    ("nese", "intranasal"),
    ("sublingual", "sublingual"),
    ("topical", "topical"),
    ("topisk", "topical"),
    ("kutan", "topical"),
    ("cutaneous", "topical"),
    ("dermal", "topical"),
    ("utvortes", "topical"),
)
#: Within one phrase a more specific route wins ("oral inhalation" -> inhaled).
_ROUTE_DOMINANCE: Final[tuple[tuple[str, str], ...]] = (
    ("nebulised", "inhaled"),
    ("inhaled", "oral"),
    ("sublingual", "oral"),
    ("buccal", "oral"),
)

#: FHIR event-timing codes for ``Timing.repeat.when`` that are one event per day.
_DAILY_EVENTS: Final[frozenset[str]] = frozenset(
    {
        "MORN", "MORN.early", "MORN.late", "NOON", "AFT", "AFT.early", "AFT.late",
        "EVE", "EVE.early", "EVE.late", "NIGHT", "PHS", "HS", "WAKE",
        "CM", "CD", "CV", "ACM", "ACD", "ACV", "PCM", "PCD", "PCV",
    }
)
#: "with/before/after a meal": the number of meals per day is not fixed.
_MEAL_EVENTS: Final[frozenset[str]] = frozenset({"C", "AC", "PC"})


class StructuredDose(BaseModel):
    """Exact, conservative summary of one medication order's dosage."""

    model_config = ConfigDict(frozen=True)

    dose_value: Decimal | None = None
    dose_low: Decimal | None = None
    dose_unit: str | None = None
    dose_mg: Decimal | None = None
    dose_mg_low: Decimal | None = None
    frequency_per_day: Decimal | None = None
    daily_mg: Decimal | None = None
    max_daily_mg: Decimal | None = None
    route: str | None = None
    route_code: str | None = None
    as_needed: bool = False
    timing_text: str | None = None
    problems: list[str] = Field(default_factory=list)


# ------------------------------------------------------------------ small helpers
class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        if message not in self.items:
            self.items.append(message)


def _show(value: object) -> str:
    try:
        text = value if isinstance(value, str) else repr(value)
    except ValueError:
        return "<value>"
    return text if len(text) <= 60 else text[:57] + "..."


def _as_written(value: object) -> Decimal | None:
    """The number as it appeared in the JSON, or None when it is not a finite number."""
    try:
        to_fraction(value)
    except UnitError:
        return None
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        return value
    if isinstance(value, Fraction):
        return fraction_to_decimal(value)
    return None  # pragma: no cover


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _dicts(value: object) -> list[dict[str, Any]]:
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return []


# ---------------------------------------------------------------------- quantity
class _Qty:
    __slots__ = ("written", "exact", "unit")

    def __init__(self, written: Decimal | None, exact: Fraction | None, unit: str | None) -> None:
        self.written = written
        self.exact = exact
        self.unit = unit


def _quantity_unit(q: dict[str, Any], what: str, problems: _Problems) -> str | None:
    system, code, text = q.get("system"), _text(q.get("code")), _text(q.get("unit"))
    candidates: list[str] = []
    if system == UCUM_SYSTEM and code is not None:
        candidates = [code] + ([text] if text is not None else [])
    elif text is not None:
        candidates = [text] + ([code] if code is not None else [])
    elif code is not None:
        candidates = [code]
    if not candidates:
        problems.add(f"{what} has no unit")
        return None
    primary = candidates[0]
    try:
        unit = normalize_unit(primary)
    except UnitError as err:
        problems.add(f"{what}: {err}")
        return None
    for other in candidates[1:]:
        try:
            other_unit = normalize_unit(other)
        except UnitError:
            continue  # descriptive text such as "mg (milligram)" is not a contradiction
        if other_unit != unit:
            problems.add(
                f"{what}: unit code '{_show(code)}' and unit text '{_show(text)}' disagree"
            )
            return None
    return unit


def _read_quantity(q: object, what: str, problems: _Problems) -> _Qty | None:
    if q is None:
        return None
    if not isinstance(q, dict):
        problems.add(f"{what} is not a Quantity object")
        return _Qty(None, None, None)
    if "comparator" in q:
        problems.add(f"{what} has comparator {_show(q.get('comparator'))}; the exact amount is unknown")
        return _Qty(None, None, None)
    raw = q.get("value")
    exact: Fraction | None = None
    if raw is None:
        problems.add(f"{what} has no value")
    else:
        try:
            exact = to_fraction(raw, f"{what} value")
            if exact < 0:
                problems.add(f"{what} value is negative")
                exact = None
        except UnitError as err:
            problems.add(str(err))
    written = _as_written(raw) if exact is not None else None
    unit = _quantity_unit(q, what, problems)
    return _Qty(written, exact, unit)


def _mg(qty: _Qty | None, what: str, strength: Fraction | None, problems: _Problems) -> Fraction | None:
    if qty is None or qty.exact is None or qty.unit is None:
        return None
    try:
        return to_mg_exact(qty.exact, qty.unit, strength)
    except UnitError as err:
        problems.add(f"{what}: {err}")
        return None


# -------------------------------------------------------------------------- dose
class _Dose:
    def __init__(self) -> None:
        self.value: Decimal | None = None
        self.low: Decimal | None = None
        self.unit: str | None = None
        self.mg: Fraction | None = None
        self.mg_low: Fraction | None = None


def _read_dose(instr: dict[str, Any], strength: Fraction | None, problems: _Problems) -> _Dose:
    dose = _Dose()
    dar = instr.get("doseAndRate")
    if dar is None:
        problems.add("no dose stated (doseAndRate missing)")
        return dose
    if not isinstance(dar, list):
        problems.add("doseAndRate is not a list")
        return dose
    entries = _dicts(dar)
    with_dose = [e for e in entries if "doseQuantity" in e or "doseRange" in e]
    if not with_dose:
        problems.add("no dose stated (no doseQuantity or doseRange)")
        return dose
    if len(with_dose) > 1:
        problems.add("multiple doseAndRate entries; using the first")
    entry = with_dose[0]
    if "doseQuantity" in entry and "doseRange" in entry:
        problems.add("doseAndRate has both doseQuantity and doseRange; dose is ambiguous")
        return dose

    if "doseQuantity" in entry:
        qty = _read_quantity(entry.get("doseQuantity"), "dose", problems)
        if qty is None:
            problems.add("dose has no quantity")
            return dose
        dose.value = dose.low = qty.written
        dose.unit = qty.unit
        dose.mg = dose.mg_low = _mg(qty, "dose", strength, problems)
        return dose

    rng = entry.get("doseRange")
    if not isinstance(rng, dict):
        problems.add("doseRange is not a Range object")
        return dose
    low = _read_quantity(rng.get("low"), "dose range low", problems)
    high = _read_quantity(rng.get("high"), "dose range high", problems)
    if high is None:
        problems.add("dose range has no upper limit; the maximum single dose is unknown")
    if low is None:
        problems.add("dose range has no lower limit")
    dose.value = high.written if high is not None else None
    dose.unit = high.unit if high is not None else (low.unit if low is not None else None)
    dose.low = low.written if low is not None else None
    if low is not None and high is not None and low.unit != high.unit:
        if low.unit is not None and high.unit is not None:
            problems.add("dose range low and high use different units; dose_low not reported")
        dose.low = None
    dose.mg = _mg(high, "dose range high", strength, problems)
    dose.mg_low = _mg(low, "dose range low", strength, problems)
    inverted = False
    if dose.mg is not None and dose.mg_low is not None:
        inverted = dose.mg_low > dose.mg
    elif (
        low is not None and high is not None and low.unit == high.unit
        and low.exact is not None and high.exact is not None
    ):
        inverted = low.exact > high.exact
    if inverted:
        problems.add("dose range low is greater than high; dose is ambiguous")
        dose.mg = dose.mg_low = None
    return dose


# ------------------------------------------------------------------------ timing
_Status = Literal["absent", "value", "none", "unrecognised"]


def _positive_int(value: object, what: str, problems: _Problems) -> int | None:
    try:
        exact = to_fraction(value, what)
    except UnitError as err:
        problems.add(str(err))
        return None
    if exact.denominator != 1 or exact <= 0:
        problems.add(f"{what} must be a positive whole number (got {_show(value)})")
        return None
    return exact.numerator


def _events_per_day(rep: dict[str, Any], problems: _Problems) -> tuple[bool, Fraction | None]:
    when, tod = rep.get("when"), rep.get("timeOfDay")
    has_when = when not in (None, [])
    has_tod = tod not in (None, [])
    if not has_when and not has_tod:
        return False, None
    if has_when and has_tod:
        problems.add("timing.repeat has both 'when' and 'timeOfDay'; times per day are ambiguous")
        return True, None
    items = when if has_when else tod
    name = "when" if has_when else "timeOfDay"
    if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
        problems.add(f"timing.repeat.{name} is not a list of codes")
        return True, None
    distinct = {i.strip() for i in items}
    if has_when:
        meals = sorted(distinct & _MEAL_EVENTS)
        if meals:
            problems.add(
                f"timing 'when' {', '.join(meals)} (with/before/after meals) has no fixed number "
                "of times per day"
            )
            return True, None
        unknown = sorted(distinct - _DAILY_EVENTS)
        if unknown:
            problems.add(f"timing 'when' code(s) not recognised: {', '.join(_show(u) for u in unknown)}")
            return True, None
    return True, Fraction(len(distinct))


def _freq_from_repeat(rep: object, problems: _Problems) -> tuple[_Status, Fraction | None]:
    if rep is None:
        return "absent", None
    if not isinstance(rep, dict):
        problems.add("timing.repeat is not an object")
        return "none", None
    if rep.get("dayOfWeek") not in (None, []):
        problems.add("timing on specific days of the week is not converted to a per-day frequency")
        return "none", None
    has_events, events = _events_per_day(rep, problems)
    keys = ("frequency", "frequencyMax", "period", "periodMax", "periodUnit")
    if not has_events and all(rep.get(k) is None for k in keys):
        return "absent", None

    freq: int | None = 1
    explicit_freq = rep.get("frequency") is not None
    if explicit_freq:
        freq = _positive_int(rep.get("frequency"), "timing frequency", problems)
    if rep.get("frequencyMax") is not None:
        fmax = _positive_int(rep.get("frequencyMax"), "timing frequencyMax", problems)
        if fmax is None or freq is None:
            freq = None
        else:
            freq = max(freq, fmax)
            explicit_freq = True

    if rep.get("period") is None:
        if rep.get("periodMax") is not None or rep.get("periodUnit") is not None:
            problems.add("timing.repeat has no period value")
            return "none", None
        if explicit_freq:
            problems.add("timing frequency is given without a period")
            return "none", None
        problems.add("timing 'when'/'timeOfDay' given without a period; times per day unknown")
        return "none", None

    unit = rep.get("periodUnit")
    if unit is None:
        problems.add("timing period has no periodUnit")
        return "none", None
    if not isinstance(unit, str):
        problems.add("timing periodUnit is not a code")
        return "none", None
    try:
        days = period_to_days_exact(rep.get("period"), unit)
        if rep.get("periodMax") is not None:
            days = min(days, period_to_days_exact(rep.get("periodMax"), unit))
    except UnitError as err:
        problems.add(f"timing period: {err}")
        return "none", None
    if freq is None:
        return "none", None
    per_day = Fraction(freq) / days

    if not has_events:
        return "value", per_day
    if events is None:
        return "none", None
    if days == 1:
        if explicit_freq and Fraction(freq) != events:
            problems.add(
                f"timing frequency {freq} per day conflicts with {events} listed times of day"
            )
            return "none", None
        return "value", events
    if events == 1:
        return "value", per_day
    problems.add("several times of day combined with a period other than 1 day; frequency ambiguous")
    return "none", None


def _abbrev(text: str) -> str:
    return re.sub(r"[\s.]", "", text).upper()


def _freq_from_code(code: object, problems: _Problems) -> tuple[_Status, Fraction | None, str]:
    if code is None:
        return "absent", None, ""
    if not isinstance(code, dict):
        problems.add("timing.code is not a CodeableConcept")
        return "none", None, ""
    found: dict[str, Fraction | None] = {}
    seen: list[str] = []
    for coding in _dicts(code.get("coding")):
        system, value = coding.get("system"), _text(coding.get("code"))
        if value is None:
            continue
        seen.append(value)
        if system not in (None, GTS_SYSTEM):
            continue
        key = _abbrev(value)
        if key in TIMING_CODES:
            found[key] = TIMING_CODES[key]
        elif system == GTS_SYSTEM:
            problems.add(f"timing code '{_show(value)}' not recognised")
            return "none", None, ""
    text = _text(code.get("text"))
    if text is not None:
        seen.append(text)
        if _abbrev(text) in TIMING_CODES:
            found[_abbrev(text)] = TIMING_CODES[_abbrev(text)]
    if not found:
        return "unrecognised", None, ", ".join(_show(s) for s in seen)
    values = set(found.values())
    if len(values) > 1:
        problems.add(f"timing codes disagree ({', '.join(sorted(found))})")
        return "none", None, ""
    (value,) = values
    if value is None:
        problems.add(
            f"timing code {', '.join(sorted(found))} (monthly) has no exact per-day frequency"
        )
        return "none", None, ""
    return "value", value, ""


def _frequency(instr: dict[str, Any], problems: _Problems) -> Fraction | None:
    timing = instr.get("timing")
    if timing is None:
        problems.add("no timing stated; frequency unknown")
        return None
    if not isinstance(timing, dict):
        problems.add("timing is not an object")
        return None
    r_status, r_value = _freq_from_repeat(timing.get("repeat"), problems)
    c_status, c_value, c_seen = _freq_from_code(timing.get("code"), problems)
    if r_status == "value" and c_status == "value":
        if r_value != c_value:
            problems.add(
                f"timing.code ({_fmt(c_value)}/day) conflicts with timing.repeat ({_fmt(r_value)}/day)"
            )
            return None
        return r_value
    if r_status == "value":
        return r_value
    if c_status == "value":
        return c_value
    if c_status == "unrecognised" and r_status in ("absent", "none"):
        problems.add(f"timing code not recognised ({c_seen}); frequency unknown")
    elif r_status == "absent" and c_status == "absent":
        problems.add("timing has no frequency information")
    return None


def _fmt(value: Fraction | None) -> str:
    return "?" if value is None else str(fraction_to_decimal(value))


# ------------------------------------------------------------------- max per day
def _max_daily(instr: dict[str, Any], strength: Fraction | None, problems: _Problems) -> Fraction | None:
    raw = instr.get("maxDosePerPeriod")
    if raw is None:
        return None
    ratios = raw if isinstance(raw, list) else [raw]
    caps: list[Fraction] = []
    for ratio in ratios:
        if not isinstance(ratio, dict):
            problems.add("maxDosePerPeriod is not a Ratio")
            continue
        num = _read_quantity(ratio.get("numerator"), "maxDosePerPeriod numerator", problems)
        den = _read_quantity(ratio.get("denominator"), "maxDosePerPeriod denominator", problems)
        if num is None or den is None:
            problems.add("maxDosePerPeriod is incomplete")
            continue
        mg = _mg(num, "maxDosePerPeriod", strength, problems)
        if mg is None or den.exact is None or den.unit is None:
            continue
        try:
            days = period_to_days_exact(den.exact, den.unit)
        except UnitError as err:
            problems.add(f"maxDosePerPeriod period: {err}")
            continue
        windows = 1 / days
        if days > 1 or windows.denominator != 1:
            problems.add(
                "maxDosePerPeriod period does not divide a day into whole windows; "
                "no exact per-day maximum"
            )
            continue
        caps.append(mg * windows)
    return min(caps) if caps else None


# ------------------------------------------------------------------------- route
def _route_from_text(text: str) -> set[str]:
    tokens = re.findall(r"[^\W\d_]+", text.lower().replace(".", ""))
    found: set[str] = set()
    for index, token in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token == "pr" and following in _PER_WORDS:
            continue  # Norwegian "pr. dag" = per day, not per rectum
        if token in _ROUTE_TOKENS:
            found.add(_ROUTE_TOKENS[token])
            continue
        for prefix, route in ROUTE_KEYWORDS:
            if token.startswith(prefix):
                found.add(route)
                break
    for specific, general in _ROUTE_DOMINANCE:
        if specific in found:
            found.discard(general)
    return found


def _route(instr: dict[str, Any], problems: _Problems) -> tuple[str | None, str | None]:
    route = instr.get("route")
    if route is None:
        problems.add("no route stated")
        return None, None
    if not isinstance(route, dict):
        problems.add("route is not a CodeableConcept")
        return None, None
    codings = _dicts(route.get("coding"))
    text = _text(route.get("text"))
    route_code: str | None = None
    candidates: set[str] = set()
    for coding in codings:
        code = _text(coding.get("code"))
        if route_code is None and code is not None:
            route_code = code
        system = coding.get("system")
        if code is not None and system in (SNOMED_SYSTEM, None) and code in SNOMED_ROUTES:
            candidates.add(SNOMED_ROUTES[code])
            continue
        display = _text(coding.get("display"))
        if display is not None:
            candidates |= _route_from_text(display)
    if text is not None:
        candidates |= _route_from_text(text)
    if route_code is None:
        route_code = text
    if len(candidates) == 1:
        return next(iter(candidates)), route_code
    if candidates:
        problems.add(f"conflicting route information ({', '.join(sorted(candidates))})")
    else:
        problems.add(f"route not recognised ({_show(route_code) if route_code else 'no code or text'})")
    return None, route_code


# ------------------------------------------------------------------------- main
def _as_needed(instr: dict[str, Any], problems: _Problems) -> bool:
    flag = False
    for key in ("asNeededBoolean", "asNeeded"):
        value = instr.get(key)
        if value is None:
            continue
        if isinstance(value, bool):
            flag = flag or value
        else:
            problems.add(f"{key} is not true/false")
    if instr.get("asNeededCodeableConcept") is not None or instr.get("asNeededFor") not in (None, []):
        flag = True
    return flag


def _sequential(instructions: list[dict[str, Any]]) -> bool:
    seqs = [i.get("sequence") for i in instructions]
    return all(isinstance(s, int) and not isinstance(s, bool) for s in seqs) and len(set(seqs)) == len(seqs)


def _parse(
    dosage_instruction: object, strength_mg_per_ml: object, problems: _Problems
) -> StructuredDose:
    strength: Fraction | None = None
    if strength_mg_per_ml is not None:
        try:
            strength = to_fraction(strength_mg_per_ml, "strength (mg/mL)")
            if strength <= 0:
                problems.add("strength (mg/mL) must be positive; ignored")
                strength = None
        except UnitError as err:
            problems.add(f"{err}; ignored")

    if dosage_instruction is None:
        problems.add("no dosage instructions")
        return StructuredDose(problems=problems.items)
    if isinstance(dosage_instruction, dict):
        problems.add("dosageInstruction should be a list; reading it as a single instruction")
        dosage_instruction = [dosage_instruction]
    if not isinstance(dosage_instruction, list):
        problems.add("dosageInstruction is not a list")
        return StructuredDose(problems=problems.items)
    instructions = _dicts(dosage_instruction)
    if len(instructions) != len(dosage_instruction):
        problems.add("some dosage instructions are not objects and were ignored")
    if not instructions:
        problems.add("no dosage instructions")
        return StructuredDose(problems=problems.items)

    first = instructions[0]
    dose = _read_dose(first, strength, problems)
    per_day = _frequency(first, problems)
    max_daily = _max_daily(first, strength, problems)
    route, route_code = _route(first, problems)
    as_needed = _as_needed(first, problems)

    daily: Fraction | None = None
    if dose.mg is not None and per_day is not None:
        daily = dose.mg * per_day
    if len(instructions) > 1:
        problems.add("multiple dosage instructions; using the first")
        if not _sequential(instructions):
            problems.add(
                "several dosage instructions may apply at the same time (no distinct 'sequence'); "
                "daily dose not determined"
            )
            daily = None

    timing = first.get("timing")
    timing_code = timing.get("code") if isinstance(timing, dict) else None
    timing_text = _text(timing_code.get("text")) if isinstance(timing_code, dict) else None
    if timing_text is None:
        timing_text = _text(first.get("text"))

    def dec(value: Fraction | None) -> Decimal | None:
        return None if value is None else fraction_to_decimal(value)

    return StructuredDose(
        dose_value=dose.value,
        dose_low=dose.low,
        dose_unit=dose.unit,
        dose_mg=dec(dose.mg),
        dose_mg_low=dec(dose.mg_low),
        frequency_per_day=dec(per_day),
        daily_mg=dec(daily),
        max_daily_mg=dec(max_daily),
        route=route,
        route_code=route_code,
        as_needed=as_needed,
        timing_text=timing_text,
        problems=problems.items,
    )


def parse_dosage(
    dosage_instruction: list[dict[str, Any]] | None,
    *,
    strength_mg_per_ml: Decimal | None = None,
) -> StructuredDose:
    """Read ``MedicationRequest.dosageInstruction`` (raw FHIR R4 JSON) exactly.

    ``strength_mg_per_ml`` (e.g. from :func:`cds.context.units.parse_strength`) lets a
    dose in mL be converted to mg.  Never raises: anything that cannot be determined
    is ``None`` and explained in ``problems``.
    """
    problems = _Problems()
    try:
        return _parse(dosage_instruction, strength_mg_per_ml, problems)
    except Exception as exc:  # noqa: BLE001 - last-resort guarantee, should be unreachable
        problems.add(f"dosage could not be read ({type(exc).__name__})")
        return StructuredDose(problems=problems.items)
