"""One typed, normalised view of the patient, built once per request.

FHIR R4 resources (from prefetch, the FHIR server, or a test fixture) → :class:`PatientContext`.
Rules never see raw FHIR: they see :meth:`PatientContext.facts`, a small JSON-shaped dict. What
could not be determined is recorded in ``gaps`` (and per medication in ``problems``) so rules can
say "missing" instead of assuming.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Iterable

from cds.context.codes import CodeMaps, Ingredient
from cds.context.dosage import StructuredDose, parse_dosage
from cds.context.units import UnitError, parse_strength, weight_to_kg
from cds.hooks.models import FHIR_ID

WEIGHT_CODES = ("29463-7", "3141-9")
HEIGHT_CODES = ("8302-2",)
GEST_AGE_AT_BIRTH = "76516-4"
COND_SYSTEMS = {
    "http://hl7.org/fhir/sid/icd-10": "icd10",
    "urn:oid:2.16.578.1.12.4.1.1.7110": "icd10",
    "http://hl7.org/fhir/sid/icd-10-cm": "icd10",
    "http://hl7.org/fhir/sid/icpc-2": "icpc2",
    "urn:oid:2.16.578.1.12.4.1.1.7170": "icpc2",
    "http://snomed.info/sct": "snomed",
}
INACTIVE_MED = {"stopped", "completed", "cancelled", "entered-in-error", "unknown", "not-taken", "draft"}
BAD_OBS = {"entered-in-error", "cancelled", "registered"}


def parse_time(v: Any) -> datetime | None:
    if not isinstance(v, str) or not v:
        return None
    try:
        if len(v) == 4:
            return datetime(int(v), 1, 1, tzinfo=timezone.utc)
        if len(v) == 7:
            return datetime(int(v[:4]), int(v[5:7]), 1, tzinfo=timezone.utc)
        if len(v) == 10:
            return datetime.fromisoformat(v).replace(tzinfo=timezone.utc)
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _s(v: Any) -> str | None:
    """A string field, or None when the client sent something else."""
    return v if isinstance(v, str) else None


def _id(r: dict[str, Any]) -> str | None:
    rid = r.get("id")
    return rid if isinstance(rid, str) and FHIR_ID.match(rid) else None


def _num(v: Decimal | None) -> float | None:
    return float(v) if v is not None else None


@dataclass
class MedFact:
    ref: str | None
    resource_type: str
    status: str | None
    origin: str  # active | draft
    selected: bool
    display: str
    ingredients: list[Ingredient]
    dose: StructuredDose
    resource: dict[str, Any] = field(repr=False)
    problems: list[str] = field(default_factory=list)
    key: str = ""  # ref, or "<origin>#<n>" for a resource without a usable id

    @property
    def identified(self) -> bool:
        return bool(self.ingredients) and all(i.atc or i.rxnorm for i in self.ingredients)

    @property
    def name(self) -> str:
        names = [i.name for i in self.ingredients]
        return " + ".join(names) if names else self.display

    def facts(self) -> dict[str, Any]:
        d = self.dose
        return {
            "ref": self.ref,
            "key": self.key,
            "status": self.status,
            "origin": self.origin,
            "selected": self.selected,
            "display": self.display,
            "name": self.name,
            "atc": list(dict.fromkeys(a for i in self.ingredients for a in i.all_atc)),
            "rxnorm": [i.rxnorm for i in self.ingredients if i.rxnorm],
            "via": sorted({i.via for i in self.ingredients}),
            "by_name": any(i.via == "name" for i in self.ingredients),
            "identified": self.identified,
            "dose": {
                "value": _num(d.dose_value),
                "unit": d.dose_unit,
                "mg": _num(d.dose_mg),
                "mg_low": _num(d.dose_mg_low),
                "per_day": _num(d.frequency_per_day),
                "daily_mg": _num(d.daily_mg),
                "max_daily_mg": _num(d.max_daily_mg),
                "route": d.route,
                "as_needed": d.as_needed,
                "problems": list(d.problems),
            },
            "problems": list(self.problems),
        }


@dataclass
class Obs:
    code: str
    value: float | str | None
    unit: str | None
    time: datetime | None
    display: str | None = None

    def facts(self, now: datetime) -> dict[str, Any]:
        return {
            "value": self.value,
            "unit": self.unit,
            "time": self.time.isoformat() if self.time else None,
            "age_hours": round((now - self.time).total_seconds() / 3600, 3) if self.time else None,
        }


@dataclass
class PatientContext:
    now: datetime
    hook: str
    patient_id: str | None
    birth_date: date | None
    sex: str | None
    meds_active: list[MedFact]
    meds_draft: list[MedFact]
    conditions: list[dict[str, Any]]
    observations: dict[str, list[Obs]]
    allergies: list[dict[str, Any]]
    encounter: dict[str, Any] | None
    gaps: list[str]
    past_conditions: list[dict[str, Any]] = field(default_factory=list)
    episodes: list[dict[str, Any]] = field(default_factory=list)
    procedures: list[dict[str, Any]] = field(default_factory=list)
    weight: dict[str, Any] | None = None
    height: dict[str, Any] | None = None

    @property
    def focus(self) -> list[MedFact]:
        """The medications the hook is about."""
        if self.hook == "order-select":
            return [m for m in self.meds_draft if m.selected]
        if self.hook == "order-sign":
            return list(self.meds_draft)
        return list(self.meds_active)

    def all_meds(self) -> list[MedFact]:
        return self.meds_active + self.meds_draft

    def gestational_age_weeks(self) -> float | None:
        """Gestational age at birth (LOINC 76516-4) in weeks; None when absent or in a unit we
        cannot read (never guessed)."""
        obs = self.observations.get(GEST_AGE_AT_BIRTH)
        if not obs or not isinstance(obs[0].value, float):
            return None
        unit = (obs[0].unit or "").strip()
        factor = {"wk": 1.0, "week": 1.0, "weeks": 1.0, "d": 1 / 7, "day": 1 / 7, "days": 1 / 7}.get(unit)
        return round(obs[0].value * factor, 4) if factor is not None else None

    def age_days(self) -> int | None:
        return (self.now.date() - self.birth_date).days if self.birth_date else None

    def facts(self) -> dict[str, Any]:
        age_days = self.age_days()
        gest_weeks = self.gestational_age_weeks()
        patient = {
            "id": self.patient_id,
            "sex": self.sex,
            "birth_date": self.birth_date.isoformat() if self.birth_date else None,
            "age_days": age_days,
            "age_years": _years(self.birth_date, self.now.date()) if self.birth_date else None,
            "age_months": _months(self.birth_date, self.now.date()) if self.birth_date else None,
            "gestational_age_weeks": gest_weeks,
            "postmenstrual_age_weeks": (
                round(gest_weeks + age_days / 7, 2) if gest_weeks is not None and age_days is not None else None
            ),
            "weight": self.weight,
            "height": self.height,
        }
        focus_ids = {id(m) for m in self.focus}
        return {
            "now": self.now.isoformat(),
            "hook": self.hook,
            "patient": patient,
            "meds": self._med_facts(focus_ids),
            "conditions": self.conditions,
            "past_conditions": self.past_conditions,
            "episodes": self.episodes,
            "procedures": self.procedures,
            "obs": {code: [o.facts(self.now) for o in lst] for code, lst in self.observations.items()},
            "allergies": self.allergies,
            "encounter": self.encounter,
            "gaps": list(self.gaps),
        }


    def _med_facts(self, focus_ids: set[int]) -> dict[str, list[dict[str, Any]]]:
        active = [m.facts() for m in self.meds_active]
        draft = [m.facts() for m in self.meds_draft]
        focus = [f for m, f in zip(self.all_meds(), active + draft) if id(m) in focus_ids]
        return {"active": active, "draft": draft, "all": active + draft, "focus": focus}


def _years(born: date, today: date) -> int:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def _months(born: date, today: date) -> int:
    return (today.year - born.year) * 12 + today.month - born.month - (today.day < born.day)


def _codings(cc: Any) -> list[dict[str, Any]]:
    if not isinstance(cc, dict):
        return []
    return [c for c in cc.get("coding") or [] if isinstance(c, dict)]


def _text(cc: Any) -> str | None:
    if not isinstance(cc, dict):
        return None
    if isinstance(cc.get("text"), str):
        return cc["text"]
    for c in _codings(cc):
        if isinstance(c.get("display"), str):
            return c["display"]
    return None


class ContextBuilder:
    def __init__(self, code_maps: CodeMaps) -> None:
        self.codes = code_maps

    def build(
        self,
        *,
        hook: str,
        context: dict[str, Any],
        resources: Iterable[dict[str, Any]],
        now: datetime,
        gaps: list[str] | None = None,
    ) -> PatientContext:
        by_type: dict[str, list[dict[str, Any]]] = {}
        index: dict[str, dict[str, Any]] = {}
        seen: set[tuple[str, str]] = set()
        for r in resources:
            if not isinstance(r, dict):
                continue
            rt, rid = r.get("resourceType"), _id(r)
            if not isinstance(rt, str):
                continue
            if rid is not None:
                if (rt, rid) in seen:
                    continue
                seen.add((rt, rid))
                index[f"{rt}/{rid}"] = r
            by_type.setdefault(rt, []).append(r)

        drafts_bundle = context.get("draftOrders") or {}
        draft_resources = [
            e["resource"] for e in drafts_bundle.get("entry") or [] if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ] if isinstance(drafts_bundle, dict) else []
        for r in draft_resources:
            if r.get("resourceType") == "Medication" and _id(r):
                index[f"Medication/{_id(r)}"] = r
        unreadable: list[str] = []
        selections = set(context.get("selections") or [])
        draft_refs = set()

        meds_draft: list[MedFact] = []
        for r in draft_resources:
            if r.get("resourceType") not in ("MedicationRequest",):
                continue
            ref = f"MedicationRequest/{_id(r)}" if _id(r) else None
            if ref:
                draft_refs.add(ref)
            selected = hook == "order-select" and ref is not None and ref in selections
            med = self._safe(self._med, unreadable, r, "draft", selected, index)
            if med is not None:
                meds_draft.append(med)

        meds_active: list[MedFact] = []
        for rt in ("MedicationRequest", "MedicationStatement"):
            for r in by_type.get(rt, []):
                ref = f"{rt}/{_id(r)}" if _id(r) else None
                if ref in draft_refs:
                    continue
                status = _s(r.get("status"))
                if status is None or status in INACTIVE_MED:
                    continue
                med = self._safe(self._med, unreadable, r, "active", False, index)
                if med is not None:
                    meds_active.append(med)

        observations = self._observations(by_type.get("Observation", []), now, unreadable)
        patient = (by_type.get("Patient") or [None])[0]
        birth = None
        sex = None
        if isinstance(patient, dict):
            bd = patient.get("birthDate")
            if isinstance(bd, str) and len(bd) >= 10:
                try:
                    birth = date.fromisoformat(bd[:10])
                except ValueError:
                    birth = None
            sex = patient.get("gender") if isinstance(patient.get("gender"), str) else None
        all_gaps = list(gaps or []) + unreadable
        if patient is None:
            all_gaps.append("patient: no Patient resource")
        elif birth is None:
            all_gaps.append("patient: no usable birthDate")

        ctx = PatientContext(
            now=now,
            hook=hook,
            patient_id=context.get("patientId"),
            birth_date=birth,
            sex=sex,
            meds_active=meds_active,
            meds_draft=meds_draft,
            conditions=self._safe(self._conditions, unreadable, by_type.get("Condition", [])) or [],
            past_conditions=self._safe(lambda rs: self._conditions(rs, past=True), unreadable, by_type.get("Condition", [])) or [],
            episodes=self._safe(self._episodes, unreadable, by_type.get("EpisodeOfCare", [])) or [],
            procedures=self._safe(self._procedures, unreadable, by_type.get("Procedure", [])) or [],
            observations=observations,
            allergies=self._safe(self._allergies, unreadable, by_type.get("AllergyIntolerance", [])) or [],
            encounter=self._safe(self._encounter, unreadable, by_type.get("Encounter", []), context.get("encounterId")),
            gaps=all_gaps,
        )
        for n, m in enumerate(ctx.all_meds()):
            m.key = m.ref or f"{m.origin}#{n + 1}"
        ctx.weight = self._vital(observations, WEIGHT_CODES, now, kind="weight")
        ctx.height = self._vital(observations, HEIGHT_CODES, now, kind="height")
        ctx.gaps.extend(g for g in unreadable if g not in ctx.gaps)
        return ctx

    @staticmethod
    def _safe(fn: Any, unreadable: list[str], *args: Any) -> Any:
        """Client data can have any shape: a resource we cannot read becomes a reported data
        gap, never a crash and never a silent pass."""
        try:
            return fn(*args)
        except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError) as e:
            what = args[0].get("resourceType") if args and isinstance(args[0], dict) else getattr(fn, "__name__", "data").strip("_")
            unreadable.append(f"{what}: could not be read ({type(e).__name__}); rules that need it may be incomplete")
            return None

    # ---------------------------------------------------------------- medications

    def _med(self, r: dict[str, Any], origin: str, selected: bool, index: dict[str, dict[str, Any]]) -> MedFact:
        problems: list[str] = []
        cc = r.get("medicationCodeableConcept")
        med_res: dict[str, Any] | None = None
        mref = r.get("medicationReference")
        if cc is None and isinstance(mref, dict):
            ref = mref.get("reference")
            if isinstance(ref, str) and ref.startswith("#"):
                med_res = next(
                    (c for c in r.get("contained") or [] if isinstance(c, dict) and c.get("id") == ref[1:]), None
                )
            elif isinstance(ref, str):
                med_res = index.get(ref)
            if med_res is None:
                problems.append(f"medicationReference {ref!r} could not be resolved")
                cc = {"text": mref.get("display")} if mref.get("display") else None
            else:
                cc = med_res.get("code")
        ingredients: list[Ingredient] = []
        for c in _codings(cc):
            ingredients.extend(self.codes.from_coding(c.get("system"), c.get("code"), _s(c.get("display")) or _text(cc)))
            if ingredients:
                break
        if not ingredients and med_res is not None:
            for ing in med_res.get("ingredient") or []:
                item = ing.get("itemCodeableConcept") if isinstance(ing, dict) else None
                for c in _codings(item):
                    ingredients.extend(self.codes.from_coding(c.get("system"), c.get("code"), _s(c.get("display")) or _text(item)))
        display = _text(cc) or "unnamed medication"
        if not ingredients:
            ingredients = self.codes.from_text(_text(cc))
            if ingredients:
                problems.append("identified from its name only (no known code)")
            else:
                problems.append("medication could not be identified (no known code, name not recognised)")
        dosage = r.get("dosageInstruction") if r.get("resourceType") == "MedicationRequest" else r.get("dosage")
        dose = parse_dosage(dosage, strength_mg_per_ml=self._strength(med_res))
        if dose.route is None and not any("route" in p for p in dose.problems if p != "no route stated"):
            # the dosage states no route: the RxNorm product's dose form may name one ("Topical Gel");
            # an unreadable or conflicting route in the dosage is left as it is
            route = next((rt for c in _codings(cc) if (rt := self.codes.product_route(c.get("system"), c.get("code")))), None)
            if route is not None:
                dose = dose.model_copy(update={"route": route, "problems": [p for p in dose.problems if p != "no route stated"]})
        ref = f"{r['resourceType']}/{_id(r)}" if _id(r) else None
        return MedFact(ref, r["resourceType"], _s(r.get("status")), origin, selected, display, ingredients, dose, r, problems)

    @staticmethod
    def _strength(med: dict[str, Any] | None) -> Decimal | None:
        if not med:
            return None
        ings = [i for i in med.get("ingredient") or [] if isinstance(i, dict)]
        if len(ings) != 1:
            return None
        s = ings[0].get("strength")
        if not isinstance(s, dict):
            return None
        num, den = s.get("numerator") or {}, s.get("denominator") or {}
        try:
            return parse_strength(
                num.get("value"), num.get("code") or num.get("unit"), den.get("value"), den.get("code") or den.get("unit")
            )
        except (UnitError, TypeError, ValueError, ArithmeticError):
            return None

    # ---------------------------------------------------------------- observations

    def _observations(self, resources: list[dict[str, Any]], now: datetime, unreadable: list[str]) -> dict[str, list[Obs]]:
        out: dict[str, list[Obs]] = {}

        def add(code_cc: Any, holder: dict[str, Any], when: datetime | None) -> None:
            # filed under its LOINC codes and under the LOINC key of any SNOMED CT coding the
            # code tables map (codes/observation-codes), once per key
            keys = (self.codes.obs_key(_s(c.get("system")), c.get("code") if isinstance(c.get("code"), str) else None) for c in _codings(code_cc))
            codes = list(dict.fromkeys(k for k in keys if k))
            if not codes:
                return
            value: float | str | None = None
            unit = None
            vq = holder.get("valueQuantity")
            if isinstance(vq, dict) and isinstance(vq.get("value"), (int, float)) and not isinstance(vq.get("value"), bool):
                value = float(vq["value"])
                unit = vq.get("code") or vq.get("unit")
            elif isinstance(holder.get("valueCodeableConcept"), dict):
                cs = _codings(holder["valueCodeableConcept"])
                value = (cs[0].get("code") if cs else None) or _text(holder["valueCodeableConcept"])
            elif isinstance(holder.get("valueInteger"), int):
                value = float(holder["valueInteger"])
            elif isinstance(holder.get("valueBoolean"), bool):
                value = "true" if holder["valueBoolean"] else "false"
            elif isinstance(holder.get("valueString"), str):
                value = holder["valueString"]
            for code in codes:
                out.setdefault(code, []).append(Obs(code, value, unit, when, _text(code_cc)))

        for r in resources:
            self._safe(self._one_observation, unreadable, r, now, add)
        epoch = datetime(1, 1, 1, tzinfo=timezone.utc)
        for lst in out.values():
            lst.sort(key=lambda o: o.time or epoch, reverse=True)
        return out

    @staticmethod
    def _one_observation(r: dict[str, Any], now: datetime, add: Any) -> None:
        if _s(r.get("status")) in BAD_OBS:
            return
        when = parse_time(r.get("effectiveDateTime")) or parse_time(
            (r.get("effectivePeriod") or {}).get("end") if isinstance(r.get("effectivePeriod"), dict) else None
        ) or parse_time(r.get("effectiveInstant")) or parse_time(r.get("issued"))
        if when is not None and when > now:
            return  # results from the future relative to "now" are ignored (replays)
        add(r.get("code"), r, when)
        for comp in r.get("component") or []:
            if isinstance(comp, dict):
                add(comp.get("code"), comp, when)

    @staticmethod
    def _vital(obs: dict[str, list[Obs]], codes: tuple[str, ...], now: datetime, kind: str) -> dict[str, Any] | None:
        cands = [o for c in codes for o in obs.get(c, []) if isinstance(o.value, float)]
        epoch = datetime(1, 1, 1, tzinfo=timezone.utc)
        cands.sort(key=lambda o: o.time or epoch, reverse=True)
        for o in cands:
            if kind == "weight":
                try:
                    kg = weight_to_kg(Decimal(str(o.value)), o.unit or "")
                except UnitError:
                    continue
                val = {"kg": float(kg)}
            else:
                if o.unit not in ("cm", "m", "[in_i]"):
                    continue
                factor = {"cm": 1.0, "m": 100.0, "[in_i]": 2.54}[o.unit]
                val = {"cm": o.value * factor}
            val["date"] = o.time.isoformat() if o.time else None
            val["age_days"] = (now - o.time).days if o.time else None
            return val
        return None

    # ---------------------------------------------------------------- conditions, allergies, encounter

    @staticmethod
    def _conditions(resources: list[dict[str, Any]], *, past: bool = False) -> list[dict[str, Any]]:
        """Active conditions (a Condition without clinicalStatus counts as active), or with
        ``past`` the resolved/inactive/remission ones (history: earlier VTE, GI bleeding …).
        Refuted and entered-in-error conditions are never counted."""
        out = []
        for r in resources:
            clinical = [c.get("code") for c in _codings(r.get("clinicalStatus"))]
            verification = [c.get("code") for c in _codings(r.get("verificationStatus"))]
            is_active = not clinical or bool(set(clinical) & {"active", "recurrence", "relapse"})
            if is_active == past:
                continue
            if set(verification) & {"refuted", "entered-in-error"}:
                continue
            item: dict[str, Any] = {"icd10": [], "icpc2": [], "snomed": [], "display": _text(r.get("code"))}
            item["status"] = next((c for c in clinical if isinstance(c, str)), None)
            abated = parse_time(r.get("abatementDateTime"))
            item["abatement"] = abated.isoformat() if abated else None
            for c in _codings(r.get("code")):
                kind = COND_SYSTEMS.get(c.get("system") or "")
                if kind and isinstance(c.get("code"), str):
                    item[kind].append(c["code"])
            onset = parse_time(r.get("onsetDateTime") or r.get("recordedDate"))
            item["onset"] = onset.isoformat() if onset else None
            item["id"] = _id(r)
            out.append(item)
        return out

    @staticmethod
    def _episodes(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """EpisodeOfCare (e.g. a cancer patient pathway): type codes as "system|code", status,
        period start/end."""
        out = []
        for r in resources:
            if _s(r.get("status")) == "entered-in-error":
                continue
            period = r.get("period") if isinstance(r.get("period"), dict) else {}
            start, end = parse_time(period.get("start")), parse_time(period.get("end"))
            types = [t for t in r.get("type") or [] if isinstance(t, dict)]
            codes = [f"{c.get('system')}|{c.get('code')}" for t in types for c in _codings(t) if isinstance(c.get("code"), str)]
            out.append({
                "id": _id(r), "status": _s(r.get("status")), "codes": codes,
                "display": next((x for x in (_text(t) for t in types) if x), None),
                "start": start.isoformat() if start else None, "end": end.isoformat() if end else None,
            })
        return out

    @staticmethod
    def _procedures(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Procedures (completed or in progress) as "system|code" with their time."""
        out = []
        for r in resources:
            if _s(r.get("status")) in ("entered-in-error", "not-done"):
                continue
            period = r.get("performedPeriod") if isinstance(r.get("performedPeriod"), dict) else {}
            when = parse_time(r.get("performedDateTime")) or parse_time(period.get("start"))
            out.append({
                "id": _id(r), "status": _s(r.get("status")),
                "codes": [f"{c.get('system')}|{c.get('code')}" for c in _codings(r.get("code")) if isinstance(c.get("code"), str)],
                "display": _text(r.get("code")), "time": when.isoformat() if when else None,
            })
        return out

    @staticmethod
    def _allergies(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for r in resources:
            if {c.get("code") for c in _codings(r.get("clinicalStatus"))} & {"inactive", "resolved"}:
                continue
            out.append({"codes": [f"{c.get('system')}|{c.get('code')}" for c in _codings(r.get("code"))], "display": _text(r.get("code"))})
        return out

    @staticmethod
    def _encounter(resources: list[dict[str, Any]], encounter_id: str | None) -> dict[str, Any] | None:
        enc = next((r for r in resources if encounter_id is None or _id(r) == encounter_id), None)
        if enc is None:
            return None
        cls = enc.get("class")
        start = parse_time((enc.get("period") or {}).get("start") if isinstance(enc.get("period"), dict) else None)
        return {
            "id": _id(enc),
            "status": _s(enc.get("status")),
            "class": cls.get("code") if isinstance(cls, dict) else None,
            "start": start.isoformat() if start else None,
        }
