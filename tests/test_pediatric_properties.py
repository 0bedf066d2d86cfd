"""Properties of the paediatric dosing pack (pediatrics.dosing, issue #6).

The pack is evaluated through the real pipeline (``cds.pipeline.evaluate`` with the
``pediatric-dosing`` service), on a rule set loaded from an isolated copy of the pack, its knowledge
tables and the code maps - so these tests do not depend on other packs in the repository.

Properties:
* the same dose written in g, mg or micrograms gives the same verdict;
* a higher dose is never judged safer than a lower one: for the same patient, drug, route and
  frequency, the over-dose verdict (adult-max / single / daily rules) never falls as the dose rises,
  the far-below verdict never rises, and the dose-independent cards (weight, gestational age, minimum
  age, no limits) do not change;
* the pack is silent for adults;
* every drug x route x age (0-17 years) of pediatrics/doses is covered by some row (a dose, a
  minimum-age or an explicit "unchecked" row), so no child's order of a covered drug passes silently;
* a dose in mL is converted with the Medication's strength and checked.
"""

from __future__ import annotations

import csv
import shutil
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds.engine.registry import RuleSet, load_ruleset
from cds.hooks.models import CONTEXT_MODELS
from cds.pipeline import evaluate
from cds.testing.fixtures import draft_orders, patient_resources

ROOT = Path(__file__).resolve().parents[1]
PACK_DIR = ROOT / "rules" / "pediatrics" / "dosing-1.0"
TABLE = ROOT / "knowledge" / "pediatrics" / "doses.csv"
SERVICE = "pediatric-dosing"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
ROUTES = ["oral", "rectal", "iv", "im", "sc", "inhaled", "nebulised", "buccal", "intranasal", "topical", "sublingual"]
RANK = {"info": 1, "warning": 2, "critical": 3}
OVER = {"adult-max-exceeded", "single-dose-above-range", "single-dose-above-max", "daily-dose-above-range", "daily-dose-above-max"}
UNDER = {"dose-far-below", "dose-far-below-fixed"}
DOSE_INDEPENDENT = {"weight-missing", "weight-stale", "weight-implausible", "gestational-age-missing", "below-minimum-age", "no-verified-limits"}


@pytest.fixture(scope="module")
def ruleset(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    root = tmp_path_factory.mktemp("pediatrics")
    shutil.copytree(PACK_DIR, root / "rules" / "pediatrics" / PACK_DIR.name)
    shutil.copytree(ROOT / "knowledge" / "pediatrics", root / "knowledge" / "pediatrics")
    shutil.copytree(ROOT / "knowledge" / "codes", root / "knowledge" / "codes")
    (root / "hooks").mkdir()
    shutil.copy(ROOT / "hooks" / "pediatric-dosing.yaml", root / "hooks")
    rs, problems = load_ruleset(root / "hooks", root / "rules", root / "knowledge")
    assert rs is not None, "\n".join(map(str, problems))
    return rs


def rows() -> list[dict[str, str]]:
    with TABLE.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def cards_for(rs: RuleSet, patient: dict[str, Any], order: dict[str, Any], extra: list[dict[str, Any]] | None = None) -> list[tuple[str, str]]:
    """(rule, indicator) of every card the service returns for one draft order."""
    resources = patient_resources(patient, NOW) + list(extra or [])
    context = {"userId": "Practitioner/p", "patientId": "test-patient", "draftOrders": draft_orders([order], patient_id="test-patient", now=NOW)}
    ctx = CONTEXT_MODELS["order-sign"].model_validate(context).model_dump(mode="json")
    ev = evaluate(rs, rs.services.services[SERVICE], hook="order-sign", context=ctx, resources=resources, now=NOW, locale="en")
    assert not ev.errors, ev.errors
    return sorted((f.rule.id, f.severity) for _, f in ev.cards)


def worst(cards: list[tuple[str, str]], rules: set[str]) -> int:
    return max((RANK[sev] for rule, sev in cards if rule in rules), default=0)


# a child (age in days, weight plausible for that age), a covered drug with a route and a frequency
DRUGS = [
    ("N02BE01", "oral", "4/d"), ("N02BE01", "rectal", "3/d"), ("N02BE01", "iv", "4/d"), ("M01AE01", "oral", "3/d"),
    ("J01CA04", "oral", "3/d"), ("J01CR02", "oral", "3/d"), ("J01CE02", "oral", "4/d"), ("J01GB03", "iv", "1/d"),
    ("J01DD04", "iv", "1/d"), ("J01DD01", "iv", "2/d"), ("J01CE01", "iv", "2/d"), ("J01CA01", "iv", "4/d"),
    ("R03AC02", "inhaled", "4/d"), ("H02AB06", "oral", "1/d"), ("A04AA01", "oral", "2/d"), ("A04AA01", "iv", "1/d"),
    ("N02AA01", "oral", "6/d"), ("N05CD08", "buccal", "1/d"), ("N05CD08", "intranasal", "1/d"), ("N05BA01", "rectal", "1/d"),
]
# (age in days, weight in kg) pairs inside the WHO-based plausibility bounds
CHILDREN = [(3, 3.4), (20, 0.9), (60, 5.0), (150, 6.8), (300, 9.0), (800, 12.0), (2000, 18.0), (3000, 27.0), (4000, 38.0), (5500, 56.0), (6500, 70.0)]


@st.composite
def child_and_drug(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    age, kg = draw(st.sampled_from(CHILDREN))
    atc, route, freq = draw(st.sampled_from(DRUGS))
    ga = draw(st.sampled_from([None, 25, 30, 34, 39, 41]))
    patient: dict[str, Any] = {"birthDate": (NOW.date() - timedelta(days=age)).isoformat(), "weight": {"kg": kg, "date": draw(st.sampled_from(["-1d", "-20d", "-200d"]))}}
    if ga is not None:
        patient["gestationalAgeWeeks"] = ga
    return patient, {"id": "o", "atc": atc, "route": route, "frequency": freq}


quarter_mg = st.integers(min_value=1, max_value=80_000).map(lambda n: n / 4)  # 0.25 mg .. 20 g in 0.25 mg steps


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=child_and_drug(), mg=quarter_mg)
def test_same_dose_in_g_mg_or_micrograms_gives_the_same_verdict(ruleset: RuleSet, case: tuple[dict[str, Any], dict[str, Any]], mg: float) -> None:
    patient, order = case
    verdicts = [
        cards_for(ruleset, patient, order | {"dose": {"value": value, "unit": unit}})
        for value, unit in ((mg, "mg"), (mg / 1000, "g"), (mg * 1000, "ug"))
    ]
    assert verdicts[0] == verdicts[1] == verdicts[2]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=child_and_drug(), low=quarter_mg, high=quarter_mg)
def test_a_higher_dose_is_never_judged_safer(ruleset: RuleSet, case: tuple[dict[str, Any], dict[str, Any]], low: float, high: float) -> None:
    patient, order = case
    low, high = min(low, high), max(low, high)
    a = cards_for(ruleset, patient, order | {"dose": {"value": low, "unit": "mg"}})
    b = cards_for(ruleset, patient, order | {"dose": {"value": high, "unit": "mg"}})
    assert worst(b, OVER) >= worst(a, OVER), (low, a, high, b)
    assert worst(b, UNDER) <= worst(a, UNDER), (low, a, high, b)
    assert [c for c in a if c[0] in DOSE_INDEPENDENT] == [c for c in b if c[0] in DOSE_INDEPENDENT]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(years=st.integers(min_value=18, max_value=100), drug=st.sampled_from(DRUGS), mg=quarter_mg, weight=st.sampled_from([None, 3.0, 70.0, 7000.0]))
def test_adults_get_no_cards(ruleset: RuleSet, years: int, drug: tuple[str, str, str], mg: float, weight: float | None) -> None:
    atc, route, freq = drug
    patient: dict[str, Any] = {"birthDate": date(NOW.year - years, NOW.month, NOW.day).isoformat()}
    if weight is not None:
        patient["weight"] = {"kg": weight, "date": "-900d"}
    assert cards_for(ruleset, patient, {"id": "o", "atc": atc, "route": route, "frequency": freq, "dose": {"value": mg, "unit": "mg"}}) == []


def _matches(r: dict[str, str], route: str, age: int) -> bool:
    return route in r["route"].split(";") and int(r["min_age_days"]) <= age < int(r["max_age_days"])


def test_every_drug_route_and_age_is_covered_by_a_row() -> None:
    """Each drug x route x age 0-17 y has a row; within one (drug, route, age), the rows of each
    kind either have no PMA/weight band or their bands tile the axis without gaps or overlaps."""
    table = rows()
    by_drug: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in table:
        assert r["source"].strip(), r["id"]
        assert set(r["route"].split(";")) <= set(ROUTES), r["id"]
        by_drug.setdefault((r["drug"], r["with_clavulanate"]), []).append(r)
    edges = sorted({int(r[c]) + d for r in table for c in ("min_age_days", "max_age_days") for d in (-1, 0, 1)} | set(range(0, 6575, 13)))
    ages = [a for a in edges if 0 <= a < 6575]
    for drug, drows in by_drug.items():
        for route in ROUTES:
            for age in ages:
                hits = [r for r in drows if _matches(r, route, age)]
                assert hits, f"{drug} {route} age {age} d: no row"
                for axis, lo, hi in (("PMA", "pma_min_weeks", "pma_max_weeks"), ("weight", "weight_min_kg", "weight_max_kg")):
                    banded = [r for r in hits if r[lo] or r[hi]]
                    unbanded_dose = [r for r in hits if not (r[lo] or r[hi]) and r["kind"] == "dose" and r["mg_per_kg_dose_high"] + r["dose_high_mg"] != ""]
                    if not banded:
                        continue
                    if axis == "weight":
                        # weight bands carry the limits themselves: they must tile (0, inf) exactly
                        bands = sorted((float(r[lo] or 0), float(r[hi] or "inf")) for r in banded)
                        assert bands[0][0] == 0 and bands[-1][1] == float("inf"), f"{drug} {route} {age}: {bands}"
                        assert all(a[1] == b[0] for a, b in zip(bands, bands[1:])), f"{drug} {route} {age}: {bands}"
                        assert not unbanded_dose, f"{drug} {route} {age}: weight bands next to an unbanded dose row"
                    else:
                        bands = sorted((float(r[lo] or 0), float(r[hi] or "inf")) for r in banded)
                        assert bands[0][0] == 0 and bands[-1][1] == float("inf"), f"{drug} {route} {age}: {bands}"
                        assert all(a[1] == b[0] for a, b in zip(bands, bands[1:])), f"{drug} {route} {age}: {bands}"


def test_limits_are_consistent() -> None:
    for r in rows():
        num = {k: float(v) for k, v in r.items() if v and k.endswith(("_mg", "_kg", "_weeks", "_day_max", "_fraction", "_min", "_max", "_low", "_high", "_above"))}
        for lo, hi in (("mg_per_kg_dose_low", "mg_per_kg_dose_high"), ("dose_low_mg", "dose_high_mg"), ("doses_per_day_min", "doses_per_day_max"), ("pma_min_weeks", "pma_max_weeks"), ("weight_min_kg", "weight_max_kg")):
            if lo in num and hi in num:
                assert num[lo] <= num[hi], (r["id"], lo, hi)
        assert int(r["min_age_days"]) < int(r["max_age_days"]) <= 6575, r["id"]
        if r["kind"] == "dose":
            has_limit = any(k in num for k in ("mg_per_kg_dose_high", "dose_high_mg", "mg_per_kg_day_max", "max_daily_mg", "doses_per_day_max"))
            assert has_limit, r["id"]
            if "mg_per_kg_dose_low" in num or "dose_low_mg" in num:
                assert num.get("far_below_fraction") == 0.5, r["id"]
            if "mg_per_kg_dose_high" in num or "dose_high_mg" in num:
                assert num.get("round_step_mg", 0) > 0, r["id"]
        else:
            assert not any(k in num for k in ("mg_per_kg_dose_high", "dose_high_mg", "max_single_mg", "mg_per_kg_day_max")), r["id"]


def test_a_dose_in_ml_is_converted_with_the_medications_strength(ruleset: RuleSet) -> None:
    """12.5 mL of paracetamol 24 mg/mL = 300 mg for a 12 kg toddler: above 20 mg/kg (240 mg)."""
    patient = {"birthDate": "2024-09-01", "weight": {"kg": 12, "date": "-1d"}}
    medication = {
        "resourceType": "Medication", "id": "pcm-mikstur",
        "code": {"coding": [{"system": "http://www.whocc.no/atc", "code": "N02BE01"}], "text": "Paracetamol mikstur 24 mg/ml"},
        "ingredient": [{
            "itemCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "N02BE01"}]},
            "strength": {"numerator": {"value": 24, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"},
                         "denominator": {"value": 1, "unit": "mL", "system": "http://unitsofmeasure.org", "code": "mL"}},
        }],
    }
    order = {"id": "pcm", "dose": {"value": 12.5, "unit": "mL"}, "frequency": "4/d", "route": "oral"}
    resources = patient_resources(patient, NOW) + [medication]
    bundle = draft_orders([order], patient_id="test-patient", now=NOW)
    bundle["entry"][0]["resource"]["medicationReference"] = {"reference": "Medication/pcm-mikstur"}
    ctx = CONTEXT_MODELS["order-sign"].model_validate({"userId": "Practitioner/p", "patientId": "test-patient", "draftOrders": bundle}).model_dump(mode="json")
    ev = evaluate(ruleset, ruleset.services.services[SERVICE], hook="order-sign", context=ctx, resources=resources, now=NOW, locale="en")
    got = [(f.rule.id, f.severity, c.summary) for c, f in ev.cards]
    assert got == [("single-dose-above-range", "warning", "paracetamol 300 mg is above the maximum of 240 mg for 12 kg")]
    # without the strength the same order cannot be checked, and the card says so
    del bundle["entry"][0]["resource"]["medicationReference"]
    bundle["entry"][0]["resource"]["medicationCodeableConcept"] = {"coding": [{"system": "http://www.whocc.no/atc", "code": "N02BE01"}]}
    ctx = CONTEXT_MODELS["order-sign"].model_validate({"userId": "Practitioner/p", "patientId": "test-patient", "draftOrders": bundle}).model_dump(mode="json")
    ev = evaluate(ruleset, ruleset.services.services[SERVICE], hook="order-sign", context=ctx, resources=patient_resources(patient, NOW), now=NOW, locale="en")
    assert [(f.rule.id, f.severity) for _, f in ev.cards] == [("dose-not-checkable", "info")]
