"""Tests for cds.context.units and cds.context.dosage (exact dose arithmetic)."""

from __future__ import annotations

import copy
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cds.context.dosage import StructuredDose, parse_dosage
from cds.context.units import (
    DECIMAL_PRECISION,
    UnitError,
    concentration_to_mg_per_ml,
    convert,
    convert_exact,
    fraction_to_decimal,
    normalize_unit,
    parse_strength,
    parse_strength_exact,
    period_to_days,
    period_to_days_exact,
    to_mg,
    to_mg_exact,
    weight_to_kg,
    weight_to_kg_exact,
)

UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
GTS = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"

MASS_UNITS = ["kg", "g", "mg", "ug", "ng", "[lb_av]", "[oz_av]"]
METRIC_MASS_UNITS = ["kg", "g", "mg", "ug", "ng"]


# ============================================================== helpers
def qty(value: Any, code: str | None = None, *, unit: str | None = None, system: str | None = UCUM) -> dict[str, Any]:
    q: dict[str, Any] = {"value": value}
    if code is not None:
        q["code"] = code
    if unit is not None or code is not None:
        q["unit"] = unit if unit is not None else code
    if system is not None:
        q["system"] = system
    return q


def instr(
    dose: dict[str, Any] | None = None,
    *,
    dose_range: dict[str, Any] | None = None,
    repeat: dict[str, Any] | None = None,
    code: dict[str, Any] | None = None,
    route: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if dose is not None:
        d["doseAndRate"] = [{"doseQuantity": dose}]
    if dose_range is not None:
        d["doseAndRate"] = [{"doseRange": dose_range}]
    timing: dict[str, Any] = {}
    if repeat is not None:
        timing["repeat"] = repeat
    if code is not None:
        timing["code"] = code
    if timing:
        d["timing"] = timing
    d["route"] = route if route is not None else {"coding": [{"system": SNOMED, "code": "26643006"}]}
    d.update(extra)
    return d


def daily(n: int) -> dict[str, Any]:
    return {"frequency": n, "period": 1, "periodUnit": "d"}


def gts(code: str) -> dict[str, Any]:
    return {"coding": [{"system": GTS, "code": code}]}


def has_problem(result: StructuredDose, fragment: str) -> bool:
    return any(fragment.lower() in p.lower() for p in result.problems)


# ============================================================== units: normalize
@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("kg", "kg"), ("KG", "kg"), ("g", "g"), ("mg", "mg"), ("MG", "mg"), ("ug", "ug"),
        ("mcg", "ug"), ("MCG", "ug"), ("\u00b5g", "ug"), ("\u03bcg", "ug"), ("microgram", "ug"),
        ("micrograms", "ug"), ("Milligram", "mg"), ("milligrams", "mg"), ("gram", "g"),
        ("grams", "g"), ("ng", "ng"), (" mg ", "mg"),
        ("L", "L"), ("l", "L"), ("dL", "dL"), ("mL", "mL"), ("ml", "mL"), ("ML", "mL"), ("uL", "uL"),
        ("[lb_av]", "[lb_av]"), ("lb", "[lb_av]"), ("[oz_av]", "[oz_av]"),
        ("s", "s"), ("min", "min"), ("h", "h"), ("d", "d"), ("wk", "wk"), ("mo", "mo"), ("a", "a"),
        ("[iU]", "[iU]"), ("[IU]", "[iU]"), ("IU", "[iU]"),
        ("mg/mL", "mg/mL"), ("mg/ml", "mg/mL"), ("mg/(5.mL)", "mg/(5.mL)"), ("mg/5 mL", "mg/(5.mL)"),
        ("mg/5mL", "mg/(5.mL)"), ("mg/5 ml", "mg/(5.mL)"), ("g/L", "g/L"), ("ug/mL", "ug/mL"),
        ("mcg/mL", "ug/mL"), ("mg/kg", "mg/kg"), ("{tablet}", "{tablet}"), ("1", "1"),
    ],
)
def test_normalize_unit(raw: str, canonical: str) -> None:
    assert normalize_unit(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    ["xyz", "", "  ", "U", "UL", "oz", "G", "S", "Mg", "mg/kg/d", "mg/", "/d", "mg/5.mL", "tablet", "mg{base}"],
)
def test_normalize_unit_rejects_unknown(raw: str) -> None:
    with pytest.raises(UnitError):
        normalize_unit(raw)


def test_normalize_unit_rejects_non_text() -> None:
    with pytest.raises(UnitError):
        normalize_unit(5)  # type: ignore[arg-type]


def test_unknown_unit_message() -> None:
    with pytest.raises(UnitError, match="unknown unit 'xyz'"):
        to_mg(1, "xyz")


def test_ucum_ambiguous_division_is_explained() -> None:
    with pytest.raises(UnitError, match="ambiguous"):
        normalize_unit("mg/5.mL")


def test_unit_error_is_value_error() -> None:
    assert issubclass(UnitError, ValueError)


# ============================================================== units: to_mg
@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (1, "kg", "1000000"),
        (1, "g", "1000"),
        (Decimal("0.5"), "g", "500"),
        (250, "mg", "250"),
        (125, "ug", "0.125"),
        (125, "mcg", "0.125"),
        (125, "\u00b5g", "0.125"),
        (125, "\u03bcg", "0.125"),
        (125, "micrograms", "0.125"),
        (125, "microgram", "0.125"),
        (2, "milligrams", "2"),
        (2, "milligram", "2"),
        (2, "grams", "2000"),
        (2, "gram", "2000"),
        (500, "ng", "0.0005"),
        (1, "[lb_av]", "453592.37"),
        (1, "[oz_av]", "28349.523125"),
    ],
)
def test_to_mg_mass_units(value: Any, unit: str, expected: str) -> None:
    result = to_mg(value, unit)
    assert isinstance(result, Decimal)
    assert result == Decimal(expected)


def test_to_mg_reads_floats_as_written() -> None:
    assert to_mg(0.1, "g") == Decimal("100")
    assert to_mg(0.3, "mg") == Decimal("0.3")
    assert to_mg(1e-7, "g") == Decimal("0.0001")
    assert to_mg_exact(0.1, "mg") == Fraction(1, 10)


def test_to_mg_output_is_canonical_decimal() -> None:
    assert str(to_mg(Decimal("0.500"), "g")) == "500"
    assert str(to_mg(Decimal("1.50"), "mg")) == "1.5"


def test_to_mg_volume_needs_strength() -> None:
    with pytest.raises(UnitError, match="mL dose without known concentration"):
        to_mg(5, "mL")
    with pytest.raises(UnitError, match="mL dose without known concentration"):
        to_mg(1, "L")


@pytest.mark.parametrize(
    ("value", "unit", "strength", "expected"),
    [
        (5, "mL", Decimal(50), "250"),
        (Decimal("7.5"), "ml", Decimal(24), "180"),
        (1, "L", Decimal("0.5"), "500"),
        (1, "dL", Decimal(1), "100"),
        (100, "uL", Decimal(10), "1"),
        (3, "mL", Fraction(100, 3), "100"),  # exact strength keeps the dose exact
    ],
)
def test_to_mg_volume_with_strength(value: Any, unit: str, strength: Any, expected: str) -> None:
    assert to_mg(value, unit, strength) == Decimal(expected)


def test_to_mg_ignores_strength_for_mass() -> None:
    assert to_mg(5, "mg", Decimal(50)) == Decimal(5)


@pytest.mark.parametrize("unit", ["[iU]", "[IU]", "IU"])
def test_to_mg_international_units_are_not_mass(unit: str) -> None:
    with pytest.raises(UnitError, match=r"\[iU\] is not a mass"):
        to_mg(1000, unit)


@pytest.mark.parametrize(
    ("unit", "fragment"),
    [
        ("mg/kg", "weight-based"),
        ("mg/mL", "concentration"),
        ("d", "time"),
        ("{tablet}", "product strength"),
        ("1", "product strength"),
    ],
)
def test_to_mg_other_dimensions(unit: str, fragment: str) -> None:
    with pytest.raises(UnitError, match=fragment):
        to_mg(1, unit)


@pytest.mark.parametrize(
    "value", [-1, Decimal("-0.1"), float("nan"), float("inf"), Decimal("NaN"), Decimal("Infinity"), True, "5", None]
)
def test_to_mg_rejects_bad_values(value: Any) -> None:
    with pytest.raises(UnitError):
        to_mg(value, "mg")


def test_to_mg_rejects_absurd_magnitudes() -> None:
    with pytest.raises(UnitError):
        to_mg(Decimal("1E+999999999"), "mg")
    with pytest.raises(UnitError):
        to_mg(10**5000, "mg")


def test_to_mg_bad_strength() -> None:
    with pytest.raises(UnitError):
        to_mg(5, "mL", Decimal(0))
    with pytest.raises(UnitError):
        to_mg(5, "mL", Decimal(-1))


# ============================================================== units: weight
@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (20, "kg", "20"),
        (3500, "g", "3.5"),
        (1, "[lb_av]", "0.45359237"),
        (10, "lb", "4.5359237"),
        (16, "[oz_av]", "0.45359237"),
        (1, "[oz_av]", "0.028349523125"),
        (Decimal("7.5"), "[lb_av]", "3.401942775"),
    ],
)
def test_weight_to_kg(value: Any, unit: str, expected: str) -> None:
    assert weight_to_kg(value, unit) == Decimal(expected)


@pytest.mark.parametrize(("value", "unit"), [(0, "kg"), (-3, "kg"), (10, "mL"), (10, "[iU]"), (10, "xyz"), (10, "d")])
def test_weight_to_kg_rejects(value: Any, unit: str) -> None:
    with pytest.raises(UnitError):
        weight_to_kg(value, unit)


# ============================================================== units: period
@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (86400, "s", Fraction(1)),
        (720, "min", Fraction(1, 2)),
        (8, "h", Fraction(1, 3)),
        (12, "h", Fraction(1, 2)),
        (1, "d", Fraction(1)),
        (2, "wk", Fraction(14)),
        (Decimal("0.5"), "d", Fraction(1, 2)),
    ],
)
def test_period_to_days(value: Any, unit: str, expected: Fraction) -> None:
    assert period_to_days_exact(value, unit) == expected
    assert period_to_days(value, unit) == fraction_to_decimal(expected)


def test_period_to_days_rounds_only_non_terminating() -> None:
    assert period_to_days(12, "h") == Decimal("0.5")
    third = period_to_days(8, "h")
    assert third == Decimal("0." + "3" * DECIMAL_PRECISION)


@pytest.mark.parametrize("unit", ["mo", "a", "MO", "month", "years"])
def test_period_month_year_not_computable(unit: str) -> None:
    with pytest.raises(UnitError, match="no exact length in days"):
        period_to_days(1, unit)


@pytest.mark.parametrize(("value", "unit"), [(0, "d"), (-1, "h"), (1, "mg"), (1, "xyz")])
def test_period_rejects(value: Any, unit: str) -> None:
    with pytest.raises(UnitError):
        period_to_days(value, unit)


# ============================================================== units: strength
@pytest.mark.parametrize(
    ("nv", "nu", "dv", "du", "expected"),
    [
        (250, "mg", 5, "mL", "50"),
        (120, "mg", 5, "ml", "24"),
        (1, "g", 1, "L", "1"),
        (100, "ug", 1, "mL", "0.1"),
        (100, "mcg", 1, "mL", "0.1"),
        (40, "mg", 1, "mL", "40"),
        (500, "mg", 100, "mL", "5"),
    ],
)
def test_parse_strength(nv: Any, nu: str, dv: Any, du: str, expected: str) -> None:
    assert parse_strength(nv, nu, dv, du) == Decimal(expected)


def test_parse_strength_non_terminating_is_exact_as_fraction() -> None:
    assert parse_strength_exact(100, "mg", 3, "mL") == Fraction(100, 3)
    assert to_mg(3, "mL", parse_strength_exact(100, "mg", 3, "mL")) == Decimal(100)


@pytest.mark.parametrize(
    ("nv", "nu", "dv", "du", "fragment"),
    [
        (100, "[iU]", 1, "mL", r"\[iU\] is not a mass"),
        (100, "mg", 1, "mg", "not a volume"),
        (100, "mg", 0, "mL", "positive"),
        (100, "mL", 1, "mL", "not a mass"),
        (100, "mg", 1, "xyz", "unknown unit"),
    ],
)
def test_parse_strength_rejects(nv: Any, nu: str, dv: Any, du: str, fragment: str) -> None:
    with pytest.raises(UnitError, match=fragment):
        parse_strength(nv, nu, dv, du)


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (50, "mg/mL", "50"),
        (250, "mg/(5.mL)", "50"),
        (250, "mg/5 mL", "50"),
        (250, "mg/5mL", "50"),
        (1, "g/L", "1"),
        (100, "ug/mL", "0.1"),
    ],
)
def test_concentration_to_mg_per_ml(value: Any, unit: str, expected: str) -> None:
    assert concentration_to_mg_per_ml(value, unit) == Decimal(expected)


@pytest.mark.parametrize("unit", ["mg", "mg/kg", "[iU]/mL", "mg/5.mL"])
def test_concentration_rejects(unit: str) -> None:
    with pytest.raises(UnitError):
        concentration_to_mg_per_ml(1, unit)


def test_convert_rejects_cross_dimension_and_months() -> None:
    with pytest.raises(UnitError):
        convert(1, "mg", "mL")
    with pytest.raises(UnitError):
        convert(1, "mo", "d")
    assert convert(1, "wk", "d") == Decimal(7)
    assert convert(1500, "mL", "L") == Decimal("1.5")


def test_fraction_to_decimal() -> None:
    assert str(fraction_to_decimal(Fraction(500))) == "500"
    assert str(fraction_to_decimal(Fraction(1, 8))) == "0.125"
    assert str(fraction_to_decimal(Fraction(-3, 20))) == "-0.15"
    assert str(fraction_to_decimal(Fraction(2, 3))) == "0." + "6" * (DECIMAL_PRECISION - 1) + "7"


# ============================================================== dosage: shapes
def test_simple_quantity_with_frequency_period() -> None:
    r = parse_dosage([instr(qty(250, "mg"), repeat={"frequency": 1, "period": 8, "periodUnit": "h"})])
    assert r.dose_value == Decimal(250)
    assert r.dose_low == Decimal(250)
    assert r.dose_unit == "mg"
    assert r.dose_mg == Decimal(250)
    assert r.dose_mg_low == Decimal(250)
    assert r.frequency_per_day == Decimal(3)
    assert r.daily_mg == Decimal(750)
    assert r.route == "oral"
    assert r.route_code == "26643006"
    assert r.as_needed is False
    assert r.max_daily_mg is None
    assert r.problems == []


def test_structured_dose_is_frozen() -> None:
    r = parse_dosage([instr(qty(1, "mg"), repeat=daily(1))])
    with pytest.raises(ValidationError):
        r.dose_mg = Decimal(2)  # type: ignore[misc]


def test_quantity_in_micrograms_and_grams() -> None:
    assert parse_dosage([instr(qty(125, "ug", unit="mcg"), repeat=daily(2))]).daily_mg == Decimal("0.25")
    r = parse_dosage([instr(qty(Decimal("1.5"), "g"), repeat=daily(2))])
    assert (r.dose_mg, r.daily_mg, r.dose_unit) == (Decimal(1500), Decimal(3000), "g")


def test_ucum_code_preferred_over_unit_text() -> None:
    r = parse_dosage([instr(qty(2, "mg", unit="mg (milligram)"), repeat=daily(1))])
    assert r.dose_mg == Decimal(2)
    assert r.problems == []


def test_unit_text_used_for_non_ucum_system() -> None:
    q = {"value": 5, "unit": "mg", "system": SNOMED, "code": "258684004"}
    r = parse_dosage([instr(q, repeat=daily(1))])
    assert (r.dose_unit, r.dose_mg) == ("mg", Decimal(5))


def test_unit_text_without_system() -> None:
    r = parse_dosage([instr({"value": 5, "unit": "mcg"}, repeat=daily(1))])
    assert (r.dose_unit, r.dose_mg) == ("ug", Decimal("0.005"))


def test_unit_code_and_text_conflict_is_not_guessed() -> None:
    r = parse_dosage([instr(qty(5, "mg", unit="g"), repeat=daily(1))])
    assert r.dose_mg is None and r.dose_unit is None and r.daily_mg is None
    assert r.dose_value == Decimal(5)
    assert has_problem(r, "disagree")


def test_missing_unit() -> None:
    r = parse_dosage([instr({"value": 5}, repeat=daily(1))])
    assert r.dose_value == Decimal(5)
    assert r.dose_mg is None
    assert has_problem(r, "no unit")


def test_unknown_dose_unit() -> None:
    r = parse_dosage([instr(qty(2, None, unit="tablet", system=None), repeat=daily(1))])
    assert r.dose_value == Decimal(2) and r.dose_unit is None and r.dose_mg is None
    assert has_problem(r, "unknown unit 'tablet'")
    assert r.frequency_per_day == Decimal(1)


def test_annotation_count_dose() -> None:
    r = parse_dosage([instr(qty(2, "{tablet}"), repeat=daily(1))])
    assert r.dose_unit == "{tablet}" and r.dose_mg is None
    assert has_problem(r, "product strength")


def test_weight_based_dose_unit() -> None:
    r = parse_dosage([instr(qty(15, "mg/kg"), repeat=daily(4))])
    assert r.dose_unit == "mg/kg" and r.dose_mg is None and r.daily_mg is None
    assert r.frequency_per_day == Decimal(4)
    assert has_problem(r, "weight")


def test_dose_with_comparator_is_not_computable() -> None:
    q = qty(5, "mg")
    q["comparator"] = "<"
    r = parse_dosage([instr(q, repeat=daily(1))])
    assert r.dose_value is None and r.dose_mg is None
    assert has_problem(r, "comparator")


@pytest.mark.parametrize("value", ["5", None, True, -5, float("nan"), [5], {"v": 1}])
def test_bad_dose_values(value: Any) -> None:
    r = parse_dosage([instr({"value": value, "unit": "mg", "system": UCUM, "code": "mg"}, repeat=daily(1))])
    assert r.dose_mg is None and r.dose_value is None and r.daily_mg is None
    assert r.problems


def test_dose_range() -> None:
    r = parse_dosage([instr(dose_range={"low": qty(5, "mg"), "high": qty(10, "mg")}, repeat=daily(3))])
    assert (r.dose_value, r.dose_low, r.dose_unit) == (Decimal(10), Decimal(5), "mg")
    assert (r.dose_mg, r.dose_mg_low) == (Decimal(10), Decimal(5))
    assert r.daily_mg == Decimal(30)
    assert r.problems == []


def test_dose_range_mixed_units() -> None:
    r = parse_dosage([instr(dose_range={"low": qty(500, "ug"), "high": qty(1, "mg")}, repeat=daily(1))])
    assert (r.dose_mg, r.dose_mg_low) == (Decimal(1), Decimal("0.5"))
    assert r.dose_unit == "mg" and r.dose_low is None
    assert has_problem(r, "different units")


def test_dose_range_without_high() -> None:
    r = parse_dosage([instr(dose_range={"low": qty(5, "mg")}, repeat=daily(1))])
    assert r.dose_value is None and r.dose_mg is None and r.daily_mg is None
    assert r.dose_low == Decimal(5) and r.dose_mg_low == Decimal(5)
    assert has_problem(r, "no upper limit")


def test_dose_range_without_low() -> None:
    r = parse_dosage([instr(dose_range={"high": qty(5, "mg")}, repeat=daily(2))])
    assert r.dose_mg == Decimal(5) and r.daily_mg == Decimal(10)
    assert r.dose_low is None and r.dose_mg_low is None
    assert has_problem(r, "no lower limit")


def test_dose_range_inverted() -> None:
    r = parse_dosage([instr(dose_range={"low": qty(1, "g"), "high": qty(5, "mg")}, repeat=daily(1))])
    assert r.dose_mg is None and r.dose_mg_low is None and r.daily_mg is None
    assert has_problem(r, "greater than high")


def test_dose_quantity_and_range_together() -> None:
    d = instr(repeat=daily(1))
    d["doseAndRate"] = [{"doseQuantity": qty(5, "mg"), "doseRange": {"high": qty(10, "mg")}}]
    r = parse_dosage([d])
    assert r.dose_mg is None
    assert has_problem(r, "both doseQuantity and doseRange")


def test_multiple_dose_and_rate_entries() -> None:
    d = instr(repeat=daily(1))
    d["doseAndRate"] = [{"doseQuantity": qty(5, "mg")}, {"doseQuantity": qty(7, "mg")}]
    r = parse_dosage([d])
    assert r.dose_mg == Decimal(5)
    assert has_problem(r, "multiple doseAndRate")


def test_no_dose() -> None:
    r = parse_dosage([instr(repeat=daily(2))])
    assert r.dose_mg is None and r.frequency_per_day == Decimal(2)
    assert has_problem(r, "no dose")


# ----------------------------------------------------------- timing codes
@pytest.mark.parametrize(
    ("code", "per_day"),
    [
        ("QD", "1"), ("BID", "2"), ("TID", "3"), ("QID", "4"), ("QOD", "0.5"), ("AM", "1"), ("PM", "1"),
        ("Q4H", "6"), ("Q6H", "4"), ("Q8H", "3"), ("Q12H", "2"), ("Q1H", "24"), ("Q2H", "12"),
        ("Q3H", "8"), ("BED", "1"),
    ],
)
def test_timing_codes(code: str, per_day: str) -> None:
    r = parse_dosage([instr(qty(10, "mg"), code=gts(code))])
    assert r.frequency_per_day == Decimal(per_day)
    assert r.daily_mg == Decimal(10) * Decimal(per_day)
    assert r.problems == []


@pytest.mark.parametrize("text", ["BID", "bid", "b.i.d.", " Bid "])
def test_timing_code_text(text: str) -> None:
    r = parse_dosage([instr(qty(10, "mg"), code={"text": text})])
    assert r.frequency_per_day == Decimal(2)
    assert r.timing_text == text.strip()


def test_timing_code_weekly() -> None:
    r = parse_dosage([instr(qty(7, "mg"), code=gts("WK"))])
    assert r.daily_mg == Decimal(1)
    assert r.frequency_per_day == fraction_to_decimal(Fraction(1, 7))


def test_timing_code_monthly_not_computable() -> None:
    r = parse_dosage([instr(qty(10, "mg"), code=gts("MO"))])
    assert r.frequency_per_day is None and r.daily_mg is None
    assert r.dose_mg == Decimal(10)
    assert has_problem(r, "monthly")


def test_timing_code_unknown() -> None:
    r = parse_dosage([instr(qty(10, "mg"), code=gts("XYZ"))])
    assert r.frequency_per_day is None
    assert has_problem(r, "not recognised")


def test_timing_free_text_not_parsed() -> None:
    r = parse_dosage([instr(qty(10, "mg"), code={"text": "every 4 hr"})])
    assert r.frequency_per_day is None
    assert has_problem(r, "every 4 hr")
    assert r.timing_text == "every 4 hr"


def test_timing_code_ignores_other_systems_when_repeat_known() -> None:
    code = {"coding": [{"system": "https://example.org/freq", "code": "696547"}], "text": "every 4 hr"}
    r = parse_dosage([instr(qty(10, "mg"), repeat={"frequency": 1, "period": 4, "periodUnit": "h"}, code=code)])
    assert r.frequency_per_day == Decimal(6)
    assert r.problems == []


def test_timing_code_and_repeat_agree() -> None:
    r = parse_dosage([instr(qty(10, "mg"), repeat=daily(3), code=gts("TID"))])
    assert r.frequency_per_day == Decimal(3) and r.problems == []


def test_timing_code_and_repeat_conflict() -> None:
    r = parse_dosage([instr(qty(10, "mg"), repeat=daily(3), code=gts("BID"))])
    assert r.frequency_per_day is None and r.daily_mg is None
    assert has_problem(r, "conflicts")


def test_timing_codings_disagree() -> None:
    code = {"coding": [{"system": GTS, "code": "BID"}], "text": "TID"}
    r = parse_dosage([instr(qty(10, "mg"), code=code)])
    assert r.frequency_per_day is None
    assert has_problem(r, "disagree")


# ----------------------------------------------------------- timing repeat
@pytest.mark.parametrize(
    ("repeat", "per_day"),
    [
        ({"frequency": 3, "period": 1, "periodUnit": "d"}, Fraction(3)),
        ({"frequency": 1, "period": 6, "periodUnit": "h"}, Fraction(4)),
        ({"frequency": 2, "period": 1, "periodUnit": "wk"}, Fraction(2, 7)),
        ({"frequency": 1, "period": 2, "periodUnit": "d"}, Fraction(1, 2)),
        ({"frequency": 1, "period": 30, "periodUnit": "min"}, Fraction(48)),
        ({"frequency": 1, "period": 3600, "periodUnit": "s"}, Fraction(24)),
        ({"period": 12, "periodUnit": "h"}, Fraction(2)),  # FHIR: missing frequency means once per period
        ({"frequency": 1, "frequencyMax": 2, "period": 1, "periodUnit": "d"}, Fraction(2)),
        ({"frequency": 1, "period": 4, "periodMax": 6, "periodUnit": "h"}, Fraction(6)),
        ({"frequency": 1, "frequencyMax": 2, "period": 4, "periodMax": 6, "periodUnit": "h"}, Fraction(12)),
        ({"frequency": 1, "period": 1, "periodUnit": "d", "count": 5, "boundsDuration": {"value": 5}}, Fraction(1)),
        ({"frequency": 2, "period": Decimal("0.5"), "periodUnit": "d"}, Fraction(4)),
        ({"frequency": 1, "period": 8.0, "periodUnit": "h"}, Fraction(3)),
    ],
)
def test_timing_repeat(repeat: dict[str, Any], per_day: Fraction) -> None:
    r = parse_dosage([instr(qty(3, "mg"), repeat=repeat)])
    assert r.frequency_per_day == fraction_to_decimal(per_day)
    assert r.daily_mg == fraction_to_decimal(3 * per_day)
    assert r.problems == []


def test_daily_mg_is_computed_exactly_before_rounding() -> None:
    # 1 mg every 3 days: 1/3 mg/day, rounded once
    r = parse_dosage([instr(qty(1, "mg"), repeat={"frequency": 1, "period": 3, "periodUnit": "d"})])
    assert r.daily_mg == fraction_to_decimal(Fraction(1, 3))
    # 0.3 mg every 8 h = 0.9 mg/day exactly (no 1/3 d rounding leaks through)
    r = parse_dosage([instr(qty(0.3, "mg"), repeat={"frequency": 1, "period": 8, "periodUnit": "h"})])
    assert r.daily_mg == Decimal("0.9")


@pytest.mark.parametrize("unit", ["mo", "a"])
def test_timing_month_period_not_computable(unit: str) -> None:
    r = parse_dosage([instr(qty(100, "mg"), repeat={"frequency": 1, "period": 1, "periodUnit": unit})])
    assert r.frequency_per_day is None and r.daily_mg is None
    assert r.dose_mg == Decimal(100)
    assert has_problem(r, "no exact length in days")


@pytest.mark.parametrize(
    ("repeat", "fragment"),
    [
        ({"frequency": 2}, "without a period"),
        ({"frequency": 2, "period": 1}, "no periodUnit"),
        ({"frequency": 2, "period": 1, "periodUnit": "fortnight"}, "unknown unit"),
        ({"frequency": 0, "period": 1, "periodUnit": "d"}, "positive whole number"),
        ({"frequency": 1.5, "period": 1, "periodUnit": "d"}, "positive whole number"),
        ({"frequency": "2", "period": 1, "periodUnit": "d"}, "must be a number"),
        ({"frequency": 1, "period": 0, "periodUnit": "d"}, "positive"),
        ({"frequency": 1, "period": -1, "periodUnit": "d"}, "positive"),
        ({"frequency": 1, "frequencyMax": "x", "period": 1, "periodUnit": "d"}, "frequencyMax"),
        ({"frequency": 1, "period": 1, "periodMax": "x", "periodUnit": "d"}, "must be a number"),
        ({"frequency": 1, "period": 1, "periodUnit": "d", "dayOfWeek": ["mon", "thu"]}, "days of the week"),
        ({"periodUnit": "d"}, "no period value"),
    ],
)
def test_timing_repeat_not_computable(repeat: dict[str, Any], fragment: str) -> None:
    r = parse_dosage([instr(qty(1, "mg"), repeat=repeat)])
    assert r.frequency_per_day is None and r.daily_mg is None
    assert has_problem(r, fragment), r.problems


def test_no_timing() -> None:
    r = parse_dosage([instr(qty(1, "mg"))])
    assert r.frequency_per_day is None and r.daily_mg is None and r.dose_mg == Decimal(1)
    assert has_problem(r, "no timing")


def test_timing_without_frequency_info() -> None:
    r = parse_dosage([instr(qty(1, "mg"), repeat={"boundsDuration": {"value": 5, "unit": "d"}})])
    assert r.frequency_per_day is None
    assert has_problem(r, "no frequency information")


# ----------------------------------------------------------- when / timeOfDay
@pytest.mark.parametrize(
    ("repeat", "per_day"),
    [
        ({"period": 1, "periodUnit": "d", "when": ["MORN", "EVE"]}, "2"),
        ({"period": 1, "periodUnit": "d", "when": ["MORN", "NOON", "EVE", "HS"]}, "4"),
        ({"frequency": 3, "period": 1, "periodUnit": "d", "when": ["CM", "CD", "CV"]}, "3"),
        ({"period": 1, "periodUnit": "d", "timeOfDay": ["08:00:00", "20:00:00"]}, "2"),
        ({"period": 24, "periodUnit": "h", "timeOfDay": ["08:00:00", "14:00:00", "20:00:00"]}, "3"),
        ({"period": 1, "periodUnit": "d", "when": ["MORN", "MORN"]}, "1"),
        ({"frequency": 1, "period": 1, "periodUnit": "wk", "when": ["MORN"]}, fraction_to_decimal(Fraction(1, 7))),
    ],
)
def test_when_and_time_of_day(repeat: dict[str, Any], per_day: str | Decimal) -> None:
    r = parse_dosage([instr(qty(5, "mg"), repeat=repeat)])
    assert r.frequency_per_day == Decimal(per_day)
    assert r.problems == []


@pytest.mark.parametrize(
    ("repeat", "fragment"),
    [
        ({"period": 1, "periodUnit": "d", "when": ["AC"]}, "meals"),
        ({"period": 1, "periodUnit": "d", "when": ["MORN", "XYZ"]}, "not recognised"),
        ({"when": ["MORN", "EVE"]}, "without a period"),
        ({"frequency": 1, "period": 1, "periodUnit": "d", "when": ["MORN", "EVE"]}, "conflicts"),
        ({"period": 1, "periodUnit": "d", "when": ["MORN"], "timeOfDay": ["08:00:00"]}, "both"),
        ({"period": 1, "periodUnit": "wk", "when": ["MORN", "EVE"]}, "ambiguous"),
        ({"period": 1, "periodUnit": "d", "when": "MORN"}, "not a list"),
    ],
)
def test_when_not_computable(repeat: dict[str, Any], fragment: str) -> None:
    r = parse_dosage([instr(qty(5, "mg"), repeat=repeat)])
    assert r.frequency_per_day is None and r.daily_mg is None
    assert has_problem(r, fragment), r.problems


# ----------------------------------------------------------- as needed
def test_as_needed_boolean() -> None:
    r = parse_dosage([instr(qty(500, "mg"), repeat={"frequency": 1, "period": 6, "periodUnit": "h"}, asNeededBoolean=True)])
    assert r.as_needed is True
    assert r.daily_mg == Decimal(2000)
    assert parse_dosage([instr(qty(1, "mg"), repeat=daily(1), asNeededBoolean=False)]).as_needed is False


def test_as_needed_codeable_concept() -> None:
    d = instr(qty(500, "mg"), repeat=daily(4), asNeededCodeableConcept={"text": "pain"})
    assert parse_dosage([d]).as_needed is True


def test_as_needed_not_boolean() -> None:
    r = parse_dosage([instr(qty(1, "mg"), repeat=daily(1), asNeededBoolean="yes")])
    assert r.as_needed is False
    assert has_problem(r, "asNeededBoolean")


# ----------------------------------------------------------- maxDosePerPeriod
def ratio(nv: Any, nu: str, dv: Any, du: str) -> dict[str, Any]:
    return {"numerator": qty(nv, nu), "denominator": qty(dv, du)}


@pytest.mark.parametrize(
    ("max_ratio", "expected"),
    [
        (ratio(4, "g", 1, "d"), "4000"),
        (ratio(4000, "mg", 24, "h"), "4000"),
        (ratio(1, "g", 6, "h"), "4000"),
        (ratio(500, "mg", 12, "h"), "1000"),
        (ratio(60, "mg", Decimal("0.5"), "d"), "120"),
    ],
)
def test_max_dose_per_period(max_ratio: dict[str, Any], expected: str) -> None:
    r = parse_dosage([instr(qty(1, "g"), repeat=daily(4), maxDosePerPeriod=max_ratio)])
    assert r.max_daily_mg == Decimal(expected)
    assert r.problems == []


@pytest.mark.parametrize(
    ("max_ratio", "fragment"),
    [
        (ratio(8, "g", 2, "d"), "whole windows"),
        (ratio(3, "g", 5, "h"), "whole windows"),
        (ratio(1, "g", 1, "wk"), "whole windows"),
        (ratio(1, "g", 1, "mo"), "no exact length"),
        (ratio(1000, "[iU]", 1, "d"), "[iU] is not a mass"),
        (ratio(10, "mL", 1, "d"), "mL dose without known concentration"),
        ({"numerator": qty(4, "g")}, "incomplete"),
        ("4 g/day", "not a Ratio"),
    ],
)
def test_max_dose_per_period_not_computable(max_ratio: Any, fragment: str) -> None:
    r = parse_dosage([instr(qty(1, "g"), repeat=daily(4), maxDosePerPeriod=max_ratio)])
    assert r.max_daily_mg is None
    assert r.daily_mg == Decimal(4000)
    assert has_problem(r, fragment), r.problems


def test_max_dose_per_period_in_ml_with_strength() -> None:
    d = instr(qty(5, "mL"), repeat=daily(4), maxDosePerPeriod=ratio(40, "mL", 1, "d"))
    r = parse_dosage([d], strength_mg_per_ml=Decimal(24))
    assert r.max_daily_mg == Decimal(960)
    assert r.daily_mg == Decimal(480)


def test_max_dose_per_period_list_takes_strictest() -> None:
    d = instr(qty(1, "g"), repeat=daily(4), maxDosePerPeriod=[ratio(4, "g", 1, "d"), ratio(500, "mg", 6, "h")])
    assert parse_dosage([d]).max_daily_mg == Decimal(2000)


# ----------------------------------------------------------- mL, iU
def test_ml_dose_without_strength() -> None:
    r = parse_dosage([instr(qty(5, "mL"), repeat=daily(3))])
    assert (r.dose_value, r.dose_unit) == (Decimal(5), "mL")
    assert r.dose_mg is None and r.daily_mg is None
    assert r.frequency_per_day == Decimal(3)
    assert has_problem(r, "mL dose without known concentration")


def test_ml_dose_with_strength() -> None:
    strength = parse_strength(250, "mg", 5, "mL")
    r = parse_dosage([instr(qty(Decimal("7.5"), "mL"), repeat=daily(3))], strength_mg_per_ml=strength)
    assert (r.dose_mg, r.daily_mg) == (Decimal(375), Decimal(1125))
    assert r.problems == []


def test_ml_dose_with_fractional_strength_stays_exact() -> None:
    strength = parse_strength_exact(100, "mg", 3, "mL")
    r = parse_dosage([instr(qty(3, "mL"), repeat=daily(2))], strength_mg_per_ml=strength)  # type: ignore[arg-type]
    assert (r.dose_mg, r.daily_mg) == (Decimal(100), Decimal(200))


@pytest.mark.parametrize("strength", [Decimal(0), Decimal(-5), "50", Decimal("NaN")])
def test_bad_strength_is_ignored_with_problem(strength: Any) -> None:
    r = parse_dosage([instr(qty(5, "mL"), repeat=daily(1))], strength_mg_per_ml=strength)
    assert r.dose_mg is None
    assert has_problem(r, "strength")


def test_international_units_dose() -> None:
    r = parse_dosage([instr(qty(1000, "[iU]"), repeat=daily(1))])
    assert (r.dose_value, r.dose_unit) == (Decimal(1000), "[iU]")
    assert r.dose_mg is None and r.daily_mg is None and r.frequency_per_day == Decimal(1)
    assert has_problem(r, "[iU] is not a mass")


# ----------------------------------------------------------- route
@pytest.mark.parametrize(
    ("code", "route"),
    [
        ("26643006", "oral"), ("37161004", "rectal"), ("47625008", "iv"), ("78421000", "im"),
        ("34206005", "sc"), ("447694001", "inhaled"), ("54471007", "buccal"), ("46713006", "intranasal"),
        ("6064005", "topical"), ("37839007", "sublingual"),
    ],
)
def test_route_snomed(code: str, route: str) -> None:
    r = parse_dosage([instr(qty(1, "mg"), repeat=daily(1), route={"coding": [{"system": SNOMED, "code": code}]})])
    assert (r.route, r.route_code) == (route, code)


@pytest.mark.parametrize(
    ("text", "route"),
    [
        ("oral", "oral"), ("Oral use", "oral"), ("PO", "oral"), ("p.o.", "oral"), ("peroral", "oral"),
        ("Peroralt", "oral"), ("gjennom munnen", "oral"), ("by mouth", "oral"),
        ("rektal", "rectal"), ("Rectal", "rectal"), ("PR", "rectal"), ("p.r.", "rectal"),
        ("intravenøs", "iv"), ("Intravenøst", "iv"), ("IV", "iv"), ("i.v.", "iv"), ("intravenous", "iv"),
        ("IM", "im"), ("intramuskulær", "im"), ("intramuscular", "im"),
        ("SC", "sc"), ("s.c.", "sc"), ("subkutan", "sc"), ("subcutaneous", "sc"),
        ("inhalation", "inhaled"), ("Inhalasjon", "inhaled"), ("oral inhalation", "inhaled"),
        ("nebulised", "nebulised"), ("nebulized", "nebulised"), ("via forstøver", "nebulised"),
        ("inhalasjon via forstøver", "nebulised"),
        ("bukkal", "buccal"), ("buccal", "buccal"),
        ("nasal", "intranasal"), ("intranasal", "intranasal"), ("nesespray", "intranasal"),
        ("sublingual", "sublingual"), ("SL", "sublingual"),
        ("topical", "topical"), ("kutan", "topical"), ("utvortes", "topical"),
    ],
)
def test_route_text(text: str, route: str) -> None:
    r = parse_dosage([instr(qty(1, "mg"), repeat=daily(1), route={"text": text})])
    assert r.route == route, r.problems
    assert r.route_code == text.strip()
    assert r.problems == []


def test_route_norwegian_pr_dag_is_per_day_not_rectal() -> None:
    r = parse_dosage([instr(qty(1, "mg"), repeat=daily(1), route={"text": "Peroral, 1 tablett pr. dag"})])
    assert r.route == "oral"


def test_route_subkutan_is_not_topical() -> None:
    r = parse_dosage([instr(qty(1, "mg"), repeat=daily(1), route={"text": "subkutant"})])
    assert r.route == "sc"


def test_route_non_snomed_coding_uses_display() -> None:
    route = {"coding": [{"system": "http://standardterms.edqm.eu", "code": "20053000", "display": "Oral use"}]}
    r = parse_dosage([instr(qty(1, "mg"), repeat=daily(1), route=route)])
    assert (r.route, r.route_code) == ("oral", "20053000")


@pytest.mark.parametrize(
    ("route", "fragment"),
    [
        ({"text": "intravitreal"}, "not recognised"),
        ({"coding": [{"system": SNOMED, "code": "999999"}]}, "not recognised"),
        ({"text": "iv/po"}, "conflicting"),
        ({"coding": [{"system": SNOMED, "code": "26643006"}], "text": "intravenøs"}, "conflicting"),
        ("oral", "not a CodeableConcept"),
    ],
)
def test_route_unknown_or_conflicting(route: Any, fragment: str) -> None:
    r = parse_dosage([instr(qty(1, "mg"), repeat=daily(1), route=route)])
    assert r.route is None
    assert has_problem(r, fragment)
    assert r.dose_mg == Decimal(1) and r.daily_mg == Decimal(1)


def test_route_missing() -> None:
    d = instr(qty(1, "mg"), repeat=daily(1))
    del d["route"]
    r = parse_dosage([d])
    assert r.route is None and r.route_code is None
    assert has_problem(r, "no route")


# ----------------------------------------------------------- multiple instructions
def test_multiple_instructions_different_doses() -> None:
    r = parse_dosage(
        [
            instr(qty(40, "mg"), repeat=daily(1), sequence=1),
            instr(qty(20, "mg"), repeat=daily(1), sequence=2),
        ]
    )
    assert r.dose_mg == Decimal(40) and r.daily_mg == Decimal(40)
    assert has_problem(r, "multiple dosage instructions; using the first")


def test_multiple_concurrent_instructions_do_not_report_daily_dose() -> None:
    r = parse_dosage(
        [
            instr(qty(5, "mg"), repeat={"period": 1, "periodUnit": "d", "when": ["MORN"]}),
            instr(qty(10, "mg"), repeat={"period": 1, "periodUnit": "d", "when": ["EVE"]}),
        ]
    )
    assert r.dose_mg == Decimal(5)
    assert r.daily_mg is None
    assert has_problem(r, "multiple dosage instructions; using the first")
    assert has_problem(r, "same time")


def test_timing_text_falls_back_to_instruction_text() -> None:
    r = parse_dosage([instr(qty(1, "mg"), repeat=daily(1), text="1 mg once daily")])
    assert r.timing_text == "1 mg once daily"


# ----------------------------------------------------------- garbage
@pytest.mark.parametrize(
    "garbage",
    [
        None, [], "text", 5, [None], [1, 2], [[]], [{}], {"doseAndRate": []},
        [{"doseAndRate": "x"}], [{"doseAndRate": [None, 5]}], [{"doseAndRate": [{"doseQuantity": "5 mg"}]}],
        [{"doseAndRate": [{"doseRange": []}]}], [{"doseAndRate": [{"doseRange": {"low": 1, "high": "x"}}]}],
        [{"timing": "BID"}], [{"timing": {"repeat": []}}], [{"timing": {"code": "BID"}}],
        [{"timing": {"code": {"coding": "BID"}}}], [{"timing": {"repeat": {"frequency": None, "period": []}}}],
        [{"route": {"coding": [None, {"code": 5}]}}], [{"maxDosePerPeriod": [None, {"numerator": []}]}],
        [{"asNeededBoolean": [], "asNeededCodeableConcept": 0}],
        [{"doseAndRate": [{"doseQuantity": {"value": 1, "unit": 5, "code": [], "system": {}}}]}],
    ],
)
def test_garbage_input_never_raises(garbage: Any) -> None:
    r = parse_dosage(garbage)
    assert isinstance(r, StructuredDose)
    assert r.problems
    assert not has_problem(r, "could not be read")


def test_single_dict_is_read_with_problem() -> None:
    r = parse_dosage(instr(qty(5, "mg"), repeat=daily(2)))  # type: ignore[arg-type]
    assert r.daily_mg == Decimal(10)
    assert has_problem(r, "should be a list")


# ============================================================== hypothesis
# Non-negative decimals with at most 6 places and 13 significant digits: exactly
# representable both as Decimal and through a float's shortest repr.
micrograms = st.integers(min_value=0, max_value=10**13)
positive_micrograms = st.integers(min_value=1, max_value=10**13)


def _scaled(n: int, places: int) -> Decimal:
    return Decimal(n).scaleb(-places)


def _as_float(d: Decimal) -> float:
    f = float(d)
    assert Decimal(repr(f)) == d
    return f


TIMINGS: list[dict[str, Any]] = [
    {"repeat": daily(1)},
    {"repeat": daily(3)},
    {"repeat": {"frequency": 1, "period": 8, "periodUnit": "h"}},
    {"repeat": {"frequency": 1, "frequencyMax": 2, "period": 4, "periodMax": 6, "periodUnit": "h"}},
    {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk"}},
    {"repeat": {"frequency": 1, "period": 3, "periodUnit": "d"}},
    {"repeat": {"period": 1, "periodUnit": "d", "when": ["MORN", "EVE"]}},
    {"code": gts("QOD")},
    {"code": gts("Q6H")},
]


@given(n=micrograms, as_float=st.booleans(), timing=st.sampled_from(TIMINGS))
def test_prop_same_dose_in_g_mg_ug_is_identical(n: int, as_float: bool, timing: dict[str, Any]) -> None:
    """(a) n ug == n/1000 mg == n/10**6 g, exactly, including the daily dose."""
    values = {"ug": _scaled(n, 0), "mg": _scaled(n, 3), "g": _scaled(n, 6)}
    results = []
    for unit, value in values.items():
        raw: Any = _as_float(value) if as_float else value
        d = {"doseAndRate": [{"doseQuantity": qty(raw, unit)}], "timing": timing, "route": {"text": "oral"}}
        results.append(parse_dosage([d]))
    expected = _scaled(n, 3)
    for r in results:
        assert r.dose_mg == expected
        assert r.dose_mg is not None and r.dose_mg.as_tuple() == results[0].dose_mg.as_tuple()  # type: ignore[union-attr]
        assert r.daily_mg == results[0].daily_mg
        assert r.daily_mg is not None
        assert r.problems == []
    # the alias spellings agree too
    for alias in ("mcg", "\u00b5g", "\u03bcg", "microgram"):
        assert to_mg(values["ug"], alias) == expected


@given(
    a=micrograms,
    b=micrograms,
    unit=st.sampled_from(MASS_UNITS + ["mcg", "mL"]),
    timing=st.sampled_from(TIMINGS),
)
def test_prop_monotonic(a: int, b: int, unit: str, timing: dict[str, Any]) -> None:
    """(b) d1 < d2 in the same unit gives dose_mg(d1) < dose_mg(d2) and daily_mg(d1) < daily_mg(d2)."""
    if a == b:
        a, b = min(a, b), b + 1
    d1, d2 = _scaled(min(a, b), 3), _scaled(max(a, b), 3)
    strength = Decimal(24) if unit == "mL" else None
    r1, r2 = (
        parse_dosage(
            [{"doseAndRate": [{"doseQuantity": qty(v, unit)}], "timing": timing, "route": {"text": "po"}}],
            strength_mg_per_ml=strength,
        )
        for v in (d1, d2)
    )
    assert r1.dose_mg is not None and r2.dose_mg is not None
    assert r1.dose_mg < r2.dose_mg
    assert r1.daily_mg is not None and r2.daily_mg is not None
    assert r1.daily_mg < r2.daily_mg
    assert r1.frequency_per_day == r2.frequency_per_day


@given(low=micrograms, width=st.integers(min_value=0, max_value=10**9))
def test_prop_range_high_end_is_dose(low: int, width: int) -> None:
    lo, hi = _scaled(low, 3), _scaled(low + width, 3)
    r = parse_dosage([instr(dose_range={"low": qty(lo, "mg"), "high": qty(hi, "mg")}, repeat=daily(2))])
    assert (r.dose_mg_low, r.dose_mg) == (lo, hi)
    assert r.dose_mg_low is not None and r.dose_mg is not None and r.dose_mg_low <= r.dose_mg
    assert r.daily_mg == hi * 2


# ----------------------------------------------------------- (c) fuzzing
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.decimals(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(
        ["mg", "mL", "g", "ug", "mcg", "[iU]", "d", "h", "mo", "wk", "BID", "MORN", "AC", UCUM, SNOMED, GTS,
         "26643006", "oral", "iv", "<", "mg/kg", "{tablet}", "mg/5 mL"]
    )
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["value", "unit", "code", "system", "coding", "text", "low", "high", "repeat", "frequency",
             "frequencyMax", "period", "periodMax", "periodUnit", "when", "timeOfDay", "numerator",
             "denominator", "comparator", "sequence", "dayOfWeek"]
        )
        | st.text(max_size=6),
        children,
        max_size=5,
    ),
    max_leaves=25,
)

VALID_DOSAGE: dict[str, Any] = {
    "sequence": 1,
    "text": "500 mg every 6 hours as needed, max 4 g/day",
    "timing": {
        "repeat": {"frequency": 1, "frequencyMax": 2, "period": 6, "periodMax": 8, "periodUnit": "h",
                   "when": ["MORN"]},
        "code": {"coding": [{"system": GTS, "code": "Q6H"}], "text": "Q6H"},
    },
    "asNeededBoolean": True,
    "route": {"coding": [{"system": SNOMED, "code": "26643006", "display": "Oral"}], "text": "oral"},
    "doseAndRate": [
        {"doseQuantity": qty(500, "mg")},
        {"doseRange": {"low": qty(250, "mg"), "high": qty(500, "mg")}},
    ],
    "maxDosePerPeriod": {"numerator": qty(4, "g"), "denominator": qty(1, "d")},
}


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, prefix + (i,)))
    return out


def _check_result(r: StructuredDose) -> None:
    assert isinstance(r, StructuredDose)
    assert not has_problem(r, "could not be read"), r.problems
    for name in ("dose_mg", "dose_mg_low", "daily_mg", "max_daily_mg", "frequency_per_day"):
        value = getattr(r, name)
        assert value is None or (isinstance(value, Decimal) and value.is_finite() and value >= 0)
    for name in ("dose_mg", "daily_mg"):
        if getattr(r, name) is None:
            assert r.problems, f"{name} is None without an explanation"
    assert all(isinstance(p, str) and p for p in r.problems)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values, strength=st.none() | json_scalars)
def test_prop_parse_dosage_never_raises_on_arbitrary_json(value: Any, strength: Any) -> None:
    """(c) arbitrary JSON, as the list itself, as an instruction and inside a list."""
    for candidate in (value, [value], [{"doseAndRate": [value]}], [{"timing": value}]):
        _check_result(parse_dosage(candidate, strength_mg_per_ml=strength))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), replacement=json_values)
def test_prop_parse_dosage_never_raises_on_mutated_valid_dosage(data: st.DataObject, replacement: Any) -> None:
    """(c) replace any one node of a valid dosage with arbitrary JSON (or delete it)."""
    dosage = copy.deepcopy(VALID_DOSAGE)
    path = data.draw(st.sampled_from(_paths(dosage)[1:]))
    parent: Any = dosage
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    _check_result(parse_dosage([dosage, copy.deepcopy(VALID_DOSAGE)]))
    _check_result(parse_dosage([dosage]))


def test_valid_dosage_fixture_reads_as_expected() -> None:
    r = parse_dosage([VALID_DOSAGE])
    # frequencyMax 2 per shortest period 6 h = 8/day conflicts with Q6H (4/day): not guessed
    assert r.frequency_per_day is None
    assert r.dose_mg == Decimal(500) and r.as_needed is True and r.route == "oral"
    assert r.max_daily_mg == Decimal(4000)
    assert has_problem(r, "conflicts")


# ----------------------------------------------------------- (d) weight
@given(n=st.integers(min_value=1, max_value=10**12), places=st.integers(min_value=0, max_value=6))
def test_prop_pounds_round_trip_exactly(n: int, places: int) -> None:
    """(d) x [lb_av] -> kg is exactly x * 0.45359237 and converts back to exactly x."""
    x = _scaled(n, places)
    kg = weight_to_kg(x, "[lb_av]")
    assert kg == x * Decimal("0.45359237")  # exact: Decimal context has enough precision here
    assert Fraction(kg) == Fraction(x) * Fraction(45359237, 10**8)
    assert convert_exact(kg, "kg", "[lb_av]") == Fraction(x)
    assert weight_to_kg(x, "lb") == kg
    assert weight_to_kg_exact(x * 16, "[oz_av]") == weight_to_kg_exact(x, "[lb_av]")
    assert weight_to_kg(to_mg(x, "[lb_av]"), "mg") == kg


# ----------------------------------------------------------- (e) all mass units
@given(
    n=st.integers(min_value=0, max_value=10**15),
    places=st.integers(min_value=0, max_value=9),
    unit=st.sampled_from(MASS_UNITS),
    other=st.sampled_from(MASS_UNITS),
)
def test_prop_to_mg_invariant_under_unit_conversion(n: int, places: int, unit: str, other: str) -> None:
    """(e) to_mg(x, unit) == to_mg(convert(x, unit -> other), other), exactly."""
    x = _scaled(n, places)
    converted = convert_exact(x, unit, other)
    assert to_mg_exact(converted, other) == to_mg_exact(x, unit)
    assert to_mg(converted, other) == to_mg(x, unit)
    if unit in METRIC_MASS_UNITS and other in METRIC_MASS_UNITS:
        # between metric units the Decimal conversion itself is exact
        assert to_mg(convert(x, unit, other), other) == to_mg(x, unit)
