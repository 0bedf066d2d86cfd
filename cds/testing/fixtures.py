"""Terse patient descriptions → real FHIR R4 resources.

Authors write ``birthDate: 2020-03-01`` or ``age: 5y``, ``weight: 20``, medications by ATC,
RxNorm or text with dose and frequency, conditions by ICD-10/ICPC-2/SNOMED, observations by
LOINC with relative times (``-2h``). The runner turns them into the FHIR resources an EHR would
send, so pack tests exercise the same context building as production.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ATC = "http://www.whocc.no/atc"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SCT = "http://snomed.info/sct"
COND = {
    "icd10": "http://hl7.org/fhir/sid/icd-10",
    "icpc2": "http://hl7.org/fhir/sid/icpc-2",
    "snomed": SCT,
}
ROUTES = {
    "oral": ("26643006", "Oral route"),
    "rectal": ("37161004", "Rectal route"),
    "iv": ("47625008", "Intravenous route"),
    "im": ("78421000", "Intramuscular route"),
    "sc": ("34206005", "Subcutaneous route"),
    "inhaled": ("447694001", "Respiratory tract route"),
    "buccal": ("54471007", "Buccal route"),
    "intranasal": ("46713006", "Nasal route"),
    "topical": ("6064005", "Topical route"),
    "sublingual": ("37839007", "Sublingual route"),
}
DURATION = re.compile(r"^([+-]?)(\d+(?:\.\d+)?)\s*(min|h|d|w|wk|mo|y)$")


class FixtureError(ValueError):
    pass


def parse_when(v: Any, now: datetime) -> datetime:
    """Absolute ISO date/time, or relative to now: ``-2h``, ``-3d``, ``-1w``, ``-6mo``, ``-5y``."""
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=timezone.utc)
    if isinstance(v, date):
        return datetime(v.year, v.month, v.day, tzinfo=timezone.utc)
    if not isinstance(v, str):
        raise FixtureError(f"not a time: {v!r}")
    m = DURATION.match(v.strip())
    if m:
        sign = -1 if m.group(1) == "-" else 1
        n = float(m.group(2))
        unit = m.group(3)
        if unit in ("mo", "y"):
            months = int(n * (12 if unit == "y" else 1))
            return add_months(now, sign * months)
        delta = {"min": timedelta(minutes=n), "h": timedelta(hours=n), "d": timedelta(days=n), "w": timedelta(weeks=n), "wk": timedelta(weeks=n)}[unit]
        return now + sign * delta
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError as e:
        raise FixtureError(f"not a time: {v!r} (use ISO 8601 or a relative time like -2h, -3d, -5y)") from e
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def add_months(dt: datetime, months: int) -> datetime:
    y, m = divmod(dt.month - 1 + months, 12)
    year, month = dt.year + y, m + 1
    day = dt.day
    while True:
        try:
            return dt.replace(year=year, month=month, day=day)
        except ValueError:
            day -= 1


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def medication_request(spec: dict[str, Any], *, patient_id: str, default_id: str, status: str, now: datetime) -> dict[str, Any]:
    codings = []
    if "atc" in spec:
        codings.append({"system": ATC, "code": str(spec["atc"])})
    if "rxnorm" in spec:
        codings.append({"system": RXNORM, "code": str(spec["rxnorm"])})
    cc: dict[str, Any] = {}
    if codings:
        cc["coding"] = codings
    if spec.get("text"):
        cc["text"] = spec["text"]
    res: dict[str, Any] = {
        "resourceType": spec.get("resourceType", "MedicationRequest"),
        "id": str(spec.get("id", default_id)),
        "status": spec.get("status", status),
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if res["resourceType"] == "MedicationRequest":
        res["intent"] = spec.get("intent", "order")
        res["authoredOn"] = _iso(parse_when(spec.get("authored", "-0d"), now))
    if cc:
        res["medicationCodeableConcept"] = cc
    dosage = _dosage(spec)
    if dosage:
        res["dosageInstruction" if res["resourceType"] == "MedicationRequest" else "dosage"] = [dosage]
    return res


def _dosage(spec: dict[str, Any]) -> dict[str, Any] | None:
    if "dosage" in spec:
        return spec["dosage"]  # raw FHIR Dosage, for unusual shapes
    d: dict[str, Any] = {}
    dose = spec.get("dose")
    if dose is not None:
        if isinstance(dose, str):
            m = re.match(r"^\s*([\d.]+)\s*(?:-\s*([\d.]+)\s*)?(\S+)\s*$", dose)
            if not m:
                raise FixtureError(f"dose {dose!r}: write e.g. '400 mg' or '5-10 mg'")
            lo, hi, unit = m.group(1), m.group(2), m.group(3)
            dose = {"value": float(lo), "unit": unit} if hi is None else {"low": float(lo), "high": float(hi), "unit": unit}
        if "low" in dose:
            d["doseAndRate"] = [
                {
                    "doseRange": {
                        "low": {"value": dose["low"], "unit": dose["unit"], "system": UCUM, "code": dose["unit"]},
                        "high": {"value": dose["high"], "unit": dose["unit"], "system": UCUM, "code": dose["unit"]},
                    }
                }
            ]
        else:
            d["doseAndRate"] = [{"doseQuantity": {"value": dose["value"], "unit": dose["unit"], "system": UCUM, "code": dose["unit"]}}]
    freq = spec.get("frequency")
    if freq is not None:
        if isinstance(freq, str):
            m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(h|d|wk)\s*$", freq)
            if not m:
                raise FixtureError(f"frequency {freq!r}: write e.g. '3/d', '1/8h', '1/wk'")
            d["timing"] = {"repeat": {"frequency": int(float(m.group(1))), "period": int(m.group(2) or 1), "periodUnit": m.group(3)}}
        else:
            d["timing"] = {"repeat": freq}
    if spec.get("timing_code"):
        d["timing"] = {"code": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation", "code": spec["timing_code"]}]}}
    route = spec.get("route")
    if route:
        if route not in ROUTES:
            d["route"] = {"text": route}
        else:
            code, disp = ROUTES[route]
            d["route"] = {"coding": [{"system": SCT, "code": code, "display": disp}]}
    if spec.get("as_needed"):
        d["asNeededBoolean"] = True
    if spec.get("max_per_day"):
        m = re.match(r"^\s*([\d.]+)\s*(\S+)\s*$", str(spec["max_per_day"]))
        if m:
            d["maxDosePerPeriod"] = {
                "numerator": {"value": float(m.group(1)), "unit": m.group(2), "system": UCUM, "code": m.group(2)},
                "denominator": {"value": 1, "unit": "d", "system": UCUM, "code": "d"},
            }
    return d or None


def observation(spec: dict[str, Any], *, patient_id: str, idx: int, now: datetime) -> dict[str, Any]:
    disp = {"display": spec["display"]} if spec.get("display") else {}
    codings = []
    if spec.get("loinc") or spec.get("code"):
        codings.append({"system": LOINC, "code": str(spec.get("loinc") or spec.get("code")), **disp})
    if spec.get("snomed"):
        codings.append({"system": SCT, "code": str(spec["snomed"]), **({} if codings else disp)})
    if not codings:
        raise FixtureError(f"observation needs loinc or snomed: {spec!r}")
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "id": str(spec.get("id", f"obs-{idx}")),
        "status": spec.get("status", "final"),
        "code": {"coding": codings},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": _iso(parse_when(spec.get("at", "-1h"), now)),
    }
    v = spec.get("value")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        unit = spec.get("unit", "1")
        res["valueQuantity"] = {"value": v, "unit": unit, "system": UCUM, "code": unit}
    elif isinstance(v, str):
        res["valueCodeableConcept"] = {"coding": [{"system": spec.get("value_system", SCT), "code": v}], "text": v}
    elif isinstance(v, bool):
        res["valueBoolean"] = v
    return res


def condition(spec: dict[str, Any], *, patient_id: str, idx: int, now: datetime) -> dict[str, Any]:
    codings = [{"system": COND[k], "code": str(spec[k])} for k in COND if k in spec]
    if not codings:
        raise FixtureError(f"condition needs icd10, icpc2 or snomed: {spec!r}")
    res: dict[str, Any] = {
        "resourceType": "Condition",
        "id": str(spec.get("id", f"cond-{idx}")),
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": spec.get("status", "active")}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": spec.get("verification", "confirmed")}]},
        "code": {"coding": codings, **({"text": spec["text"]} if spec.get("text") else {})},
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if spec.get("onset"):
        res["onsetDateTime"] = _iso(parse_when(spec["onset"], now))
    if spec.get("abatement"):
        res["abatementDateTime"] = _iso(parse_when(spec["abatement"], now))
    return res


def patient_resources(p: dict[str, Any], now: datetime, base_dir: Path | None = None) -> list[dict[str, Any]]:
    """The FHIR resources for a terse patient description."""
    pid = str(p.get("id", "test-patient"))
    out: list[dict[str, Any]] = []
    if p.get("patient_resource", True):
        pat: dict[str, Any] = {"resourceType": "Patient", "id": pid}
        if "birthDate" in p:
            pat["birthDate"] = str(p["birthDate"])[:10]
        elif "age" in p:
            pat["birthDate"] = parse_when(f"-{str(p['age']).lstrip('-')}", now).date().isoformat()
        sex = p.get("sex", p.get("gender"))
        if sex:
            pat["gender"] = sex
        out.append(pat)
    w = p.get("weight")
    if w is not None:
        if isinstance(w, (int, float)):
            w = {"kg": w}
        value, unit = (w["kg"], "kg") if "kg" in w else (w["value"], w["unit"])
        out.append(observation({"id": "weight", "loinc": "29463-7", "value": value, "unit": unit, "at": w.get("date", w.get("at", "-1d"))}, patient_id=pid, idx=0, now=now))
    h = p.get("height")
    if h is not None:
        if isinstance(h, (int, float)):
            h = {"cm": h}
        out.append(observation({"id": "height", "loinc": "8302-2", "value": h["cm"], "unit": "cm", "at": h.get("date", "-1d")}, patient_id=pid, idx=0, now=now))
    if p.get("gestationalAgeWeeks") is not None:
        out.append(observation({"id": "ga-birth", "loinc": "76516-4", "value": p["gestationalAgeWeeks"], "unit": "wk", "at": pat.get("birthDate", "-1d") if p.get("patient_resource", True) else "-1d"}, patient_id=pid, idx=0, now=now))
    for i, m in enumerate(p.get("medications") or []):
        out.append(medication_request(m, patient_id=pid, default_id=f"med-{i + 1}", status="active", now=now))
    for i, c in enumerate(p.get("conditions") or []):
        out.append(condition(c, patient_id=pid, idx=i + 1, now=now))
    for i, o in enumerate(p.get("observations") or []):
        out.append(observation(o, patient_id=pid, idx=i + 1, now=now))
    for i, e in enumerate(p.get("episodes") or []):
        ep: dict[str, Any] = {
            "resourceType": "EpisodeOfCare", "id": str(e.get("id", f"episode-{i + 1}")), "status": e.get("status", "active"),
            "type": [{"coding": [{"system": e["system"], "code": str(e["code"]), **({"display": e["display"]} if e.get("display") else {})}]}],
            "patient": {"reference": f"Patient/{pid}"},
            "period": {"start": _iso(parse_when(e.get("start", "-1d"), now))},
        }
        if e.get("end"):
            ep["period"]["end"] = _iso(parse_when(e["end"], now))
        out.append(ep)
    for i, pr in enumerate(p.get("procedures") or []):
        out.append({
            "resourceType": "Procedure", "id": str(pr.get("id", f"procedure-{i + 1}")), "status": pr.get("status", "completed"),
            "code": {"coding": [{"system": pr["system"], "code": str(pr["code"])}]},
            "subject": {"reference": f"Patient/{pid}"},
            "performedDateTime": _iso(parse_when(pr.get("at", "-1d"), now)),
        })
    for r in p.get("resources") or []:
        out.append(r)
    if p.get("fixture_file"):
        path = (base_dir or Path(".")) / str(p["fixture_file"])
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("resourceType") == "Bundle":
            out.extend(e["resource"] for e in data.get("entry") or [] if isinstance(e, dict) and "resource" in e)
        else:
            out.append(data)
    return out


def draft_orders(orders: list[dict[str, Any]], *, patient_id: str, now: datetime) -> dict[str, Any]:
    entries = [
        {"resource": medication_request(o, patient_id=patient_id, default_id=f"draft-{i + 1}", status="draft", now=now)}
        for i, o in enumerate(orders)
    ]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}
