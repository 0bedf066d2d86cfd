"""ContextBuilder on hand-written FHIR R4 resources → PatientContext / facts().

The code maps are built from small tables written to a temporary knowledge directory (same
columns as knowledge/codes/*.meta.yaml), so these tests do not depend on the shipped maps.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from cds.context.codes import CodeMaps
from cds.context.patient import ContextBuilder, PatientContext
from cds.engine.knowledge import KnowledgeCache

ATC = "http://www.whocc.no/atc"
ATC_NO = "urn:oid:2.16.578.1.12.4.1.1.7180"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SCT = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ICD10_NO = "urn:oid:2.16.578.1.12.4.1.1.7110"
CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"

NOW = datetime(2024, 6, 15, 12, 0, tzinfo=timezone.utc)
SENTINEL = "RAW-RESOURCE-SENTINEL-7f3a"


# --------------------------------------------------------------------------- code maps


def _write(root: Path, table_id: str, columns: dict[str, Any], rows: list[dict[str, str]]) -> None:
    csv_path = root / f"{table_id}.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)
    meta = {"id": table_id, "title": table_id, "release": "test.1", "key": list(columns)[0], "columns": columns}
    (root / f"{table_id}.meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")


@pytest.fixture(scope="module")
def code_maps(tmp_path_factory: pytest.TempPathFactory) -> CodeMaps:
    root = tmp_path_factory.mktemp("knowledge")
    src = "test fixture"
    _write(
        root,
        "codes/rxnorm-ingredients",
        {
            "rxcui": {"type": "code", "required": True, "unique": True},
            "name": {"type": "text", "required": True},
            "atc": {"type": "atc_list"},
            "source": {"type": "text", "required": True},
        },
        [
            {"rxcui": "5640", "name": "ibuprofen", "atc": "M01AE01", "source": src},
            {"rxcui": "6851", "name": "methotrexate", "atc": "L01BA01;L04AX03", "source": src},
            {"rxcui": "161", "name": "acetaminophen", "atc": "N02BE01", "source": src},
            {"rxcui": "11289", "name": "warfarin", "atc": "B01AA03", "source": src},
            {"rxcui": "723", "name": "amoxicillin", "atc": "J01CA04", "source": src},
            {"rxcui": "48203", "name": "clavulanate", "atc": "", "source": src},
        ],
    )
    _write(
        root,
        "codes/rxnorm-products",
        {
            "rxcui": {"type": "code", "required": True, "unique": True},
            "tty": {"type": "enum", "required": True, "values": ["SCD", "SBD", "GPCK", "BPCK", "SCDC", "SBDC"]},
            "name": {"type": "text", "required": True},
            "ingredients": {"type": "list", "required": True},
            "strength": {"type": "text"},
            "route": {"type": "enum", "values": ["oral", "topical"]},
            "atc": {"type": "atc_list"},
            "source": {"type": "text", "required": True},
        },
        [
            {"rxcui": "197806", "tty": "SCD", "name": "ibuprofen 400 MG Oral Tablet", "ingredients": "5640", "strength": "400 MG", "route": "oral", "source": src},
            {"rxcui": "900001", "tty": "SCD", "name": "ibuprofen 50 MG/ML Topical Gel (fixture)", "ingredients": "5640", "strength": "", "route": "topical", "source": src},
            {"rxcui": "900002", "tty": "SCD", "name": "ibuprofen 50 MG/ML Topical Foam (fixture)", "ingredients": "5640", "strength": "", "route": "topical",
             "atc": "M02AA13", "source": src},
            {
                "rxcui": "562508",
                "tty": "SCD",
                "name": "amoxicillin 875 MG / clavulanate 125 MG Oral Tablet",
                "ingredients": "723;48203",
                "strength": "",
                "route": "oral",
                "source": src,
            },
        ],
    )
    _write(
        root,
        "codes/atc-substances",
        {
            "atc": {"type": "atc", "required": True, "unique": True},
            "name_en": {"type": "text", "required": True},
            "name_nb": {"type": "text", "required": True},
            "synonyms": {"type": "list"},
            "source": {"type": "text", "required": True},
        },
        [
            {"atc": "M01AE01", "name_en": "ibuprofen", "name_nb": "ibuprofen", "synonyms": "", "source": src},
            {"atc": "N02BE01", "name_en": "paracetamol", "name_nb": "paracetamol", "synonyms": "acetaminophen", "source": src},
            {"atc": "B01AA03", "name_en": "warfarin", "name_nb": "warfarin", "synonyms": "", "source": src},
            {"atc": "J01CA04", "name_en": "amoxicillin", "name_nb": "amoksicillin", "synonyms": "", "source": src},
            {"atc": "L01BA01", "name_en": "methotrexate", "name_nb": "metotreksat", "synonyms": "", "source": src},
            {"atc": "L04AX03", "name_en": "methotrexate", "name_nb": "metotreksat", "synonyms": "", "source": src},
        ],
    )
    _write(
        root,
        "codes/observation-codes",
        {
            "id": {"type": "code", "required": True, "unique": True},
            "system": {"type": "enum", "required": True, "values": ["snomed", "loinc"]},
            "code": {"type": "code", "required": True},
            "key": {"type": "code", "required": True},
            "display": {"type": "text", "required": True},
            "source": {"type": "text", "required": True},
        },
        [{"id": "RR", "system": "snomed", "code": "86290005", "key": "9279-1", "display": "Respiratory rate", "source": src}],
    )
    maps, problems = CodeMaps.load(KnowledgeCache(root))
    assert not [p for p in problems if p.severity == "error"], problems
    assert len(maps.tables) == 4
    return maps


@pytest.fixture(scope="module")
def builder(code_maps: CodeMaps) -> ContextBuilder:
    return ContextBuilder(code_maps)


# --------------------------------------------------------------------------- FHIR helpers


def cc(system: str | None = None, code: str | None = None, text: str | None = None, display: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if system:
        coding: dict[str, Any] = {"system": system, "code": code}
        if display:
            coding["display"] = display
        out["coding"] = [coding]
    if text:
        out["text"] = text
    return out


def mr(rid: str | None, status: str | None = "active", **med: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"resourceType": "MedicationRequest", "intent": "order", "subject": {"reference": "Patient/p1"}}
    if rid is not None:
        r["id"] = rid
    if status is not None:
        r["status"] = status
    if "concept" in med:
        r["medicationCodeableConcept"] = med.pop("concept")
    r.update(med)
    return r


def ms(rid: str, status: str, concept: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "MedicationStatement", "id": rid, "status": status, "medicationCodeableConcept": concept, "subject": {"reference": "Patient/p1"}}


def patient(birth: str | None = "2020-06-16", **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"resourceType": "Patient", "id": "p1", "gender": "female"}
    if birth is not None:
        r["birthDate"] = birth
    r.update(extra)
    return r


def obs(rid: str, loinc: str, value: float | None, unit: str | None, when: str, status: str = "final", **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "resourceType": "Observation",
        "id": rid,
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "effectiveDateTime": when,
    }
    if value is not None:
        r["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    r.update(extra)
    return r


def bp(rid: str, sys: float, dia: float, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
        "effectiveDateTime": when,
        "component": [
            {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": {"value": sys, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": {"value": dia, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}},
        ],
    }


def cond(rid: str, system: str, code: str, clinical: str | None = "active", verification: str | None = None, text: str | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"resourceType": "Condition", "id": rid, "code": cc(system, code, text=text), "subject": {"reference": "Patient/p1"}}
    if clinical:
        r["clinicalStatus"] = {"coding": [{"system": CLIN, "code": clinical}]}
    if verification:
        r["verificationStatus"] = {"coding": [{"system": VER, "code": verification}]}
    return r


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def build(
    builder: ContextBuilder,
    resources: list[dict[str, Any]],
    *,
    hook: str = "patient-view",
    drafts: list[dict[str, Any]] | None = None,
    selections: list[str] | None = None,
    now: datetime = NOW,
) -> PatientContext:
    context: dict[str, Any] = {"userId": "Practitioner/u1", "patientId": "p1"}
    if drafts is not None:
        context["draftOrders"] = bundle(*drafts)
    if selections is not None:
        context["selections"] = selections
    return builder.build(hook=hook, context=context, resources=resources, now=now)


def one_med(builder: ContextBuilder, r: dict[str, Any]) -> dict[str, Any]:
    f = build(builder, [patient(), r]).facts()
    assert len(f["meds"]["active"]) == 1, f["meds"]
    return f["meds"]["active"][0]


# --------------------------------------------------------------------------- medication identification


class TestIdentification:
    def test_by_atc(self, builder: ContextBuilder) -> None:
        m = one_med(builder, mr("a1", concept=cc(ATC, "M01AE01", text="Ibux 400 mg")))
        assert m["atc"] == ["M01AE01"]
        assert m["rxnorm"] == ["5640"]
        assert m["via"] == ["atc"]
        assert m["identified"] is True and m["by_name"] is False
        assert m["name"] == "ibuprofen"
        assert m["display"] == "Ibux 400 mg"
        assert m["problems"] == []
        assert m["ref"] == "MedicationRequest/a1"
        assert m["origin"] == "active" and m["selected"] is False

    def test_by_norwegian_atc_oid(self, builder: ContextBuilder) -> None:
        m = one_med(builder, mr("a1", concept=cc(ATC_NO, "B01AA03", display="Marevan")))
        assert m["atc"] == ["B01AA03"] and m["via"] == ["atc"] and m["display"] == "Marevan"

    def test_by_rxnorm_ingredient(self, builder: ContextBuilder) -> None:
        m = one_med(builder, mr("a1", concept=cc(RXNORM, "161", display="acetaminophen")))
        assert m["atc"] == ["N02BE01"]
        assert m["rxnorm"] == ["161"]
        assert m["via"] == ["rxnorm-in"]
        assert m["identified"] is True and m["by_name"] is False

    def test_by_rxnorm_product(self, builder: ContextBuilder) -> None:
        m = one_med(builder, mr("a1", concept=cc(RXNORM, "197806", display="ibuprofen 400 MG Oral Tablet")))
        assert m["rxnorm"] == ["5640"]  # the SCD is mapped to its ingredient
        assert m["atc"] == ["M01AE01"]
        assert m["via"] == ["rxnorm-product"]
        assert m["name"] == "ibuprofen"
        assert m["identified"] is True

    def test_by_rxnorm_combination_product(self, builder: ContextBuilder) -> None:
        m = one_med(builder, mr("a1", concept=cc(RXNORM, "562508")))
        assert m["rxnorm"] == ["723", "48203"]
        assert m["atc"] == ["J01CA04"]  # clavulanate has no ATC of its own in the map
        assert m["name"] == "amoxicillin + clavulanate"
        assert m["identified"] is True

    def test_first_known_coding_wins(self, builder: ContextBuilder) -> None:
        concept = {"coding": [{"system": "urn:oid:local", "code": "X1"}, {"system": ATC, "code": "N02BE01"}]}
        m = one_med(builder, mr("a1", concept=concept))
        assert m["atc"] == ["N02BE01"] and m["via"] == ["atc"]

    def test_by_name_only_is_flagged(self, builder: ContextBuilder) -> None:
        m = one_med(builder, mr("a1", concept=cc("urn:oid:local", "123", text="Paracetamol 500 mg tablett")))
        assert m["atc"] == ["N02BE01"]
        assert m["via"] == ["name"]
        assert m["by_name"] is True
        assert m["identified"] is True
        assert any("name only" in p for p in m["problems"])

    @pytest.mark.parametrize("text", ["Ibuprofen gel 5 % krem", "ibuprofen cream", "Paracetamol øyedråper", "warfarin eye drops (test)"])
    def test_a_local_preparation_is_not_recognised_by_name(self, builder: ContextBuilder, text: str) -> None:
        # the name would give the systemic ATC code, which a local preparation does not have
        m = one_med(builder, mr("a1", concept=cc(text=text)))
        assert m["identified"] is False and m["atc"] == []
        assert any("could not be identified" in p for p in m["problems"])

    def test_name_match_needs_a_whole_word(self, builder: ContextBuilder) -> None:
        m = one_med(builder, mr("a1", concept=cc(text="Paracetamolum-X mixture")))
        assert m["identified"] is False

    def test_unidentified(self, builder: ContextBuilder) -> None:
        m = one_med(builder, mr("a1", concept=cc("urn:oid:local", "999", text="Mystery herbal drops")))
        assert m["identified"] is False
        assert m["atc"] == [] and m["rxnorm"] == [] and m["via"] == []
        assert m["display"] == "Mystery herbal drops"
        assert m["name"] == "Mystery herbal drops"
        assert any("could not be identified" in p for p in m["problems"])

    def test_ingredient_with_two_atc_codes_by_rxnorm(self, builder: ContextBuilder) -> None:
        m = one_med(builder, mr("a1", concept=cc(RXNORM, "6851", display="methotrexate")))
        assert m["atc"] == ["L01BA01", "L04AX03"]  # rows keyed by either ATC code match
        assert m["rxnorm"] == ["6851"] and m["name"] == "methotrexate"

    def test_second_atc_code_of_an_ingredient(self, builder: ContextBuilder) -> None:
        m = one_med(builder, mr("a1", concept=cc(ATC, "L04AX03", display="Metoject")))
        assert m["atc"] == ["L04AX03"]  # an ATC code is exact: not widened to the ingredient's other codes
        assert m["rxnorm"] == ["6851"] and m["via"] == ["atc"]

    def test_atc_without_a_name_keeps_the_records_text(self, builder: ContextBuilder) -> None:
        m = one_med(builder, mr("a1", concept=cc(ATC, "C01BD07", display="Multaq 400 mg")))
        assert m["atc"] == ["C01BD07"] and m["rxnorm"] == []
        assert m["name"] == "Multaq 400 mg"  # never the bare code on a card
        assert m["identified"] is True
        m = one_med(builder, mr("a2", concept=cc(ATC, "C01BD07")))
        assert m["name"] == "C01BD07"  # nothing better to show

    def test_product_dose_form_gives_the_route_when_the_dosage_has_none(self, builder: ContextBuilder) -> None:
        gel = one_med(builder, mr("g1", concept=cc(RXNORM, "900001")))
        assert gel["dose"]["route"] == "topical"
        assert "no route stated" not in gel["dose"]["problems"]
        stated = {"route": {"coding": [{"system": SCT, "code": "26643006"}]}}  # the order's own route wins
        m = one_med(builder, mr("g2", concept=cc(RXNORM, "900001"), dosageInstruction=[stated]))
        assert m["dose"]["route"] == "oral"
        unreadable = {"route": {"text": "per sonde"}}  # an unreadable route is not papered over
        m = one_med(builder, mr("g3", concept=cc(RXNORM, "900001"), dosageInstruction=[unreadable]))
        assert m["dose"]["route"] is None
        assert any("route not recognised" in p for p in m["dose"]["problems"])
        assert one_med(builder, mr("a1", concept=cc(ATC, "M01AE01")))["dose"]["route"] is None  # no product: no guess

    def test_a_product_for_local_use_carries_its_own_atc(self, builder: ContextBuilder) -> None:
        m = one_med(builder, mr("f1", concept=cc(RXNORM, "900002")))
        assert m["atc"] == ["M02AA13"]  # not the systemic M01AE01 of the ingredient
        assert m["rxnorm"] == ["5640"] and m["name"] == "ibuprofen" and m["via"] == ["rxnorm-product"]

    def test_a_name_with_two_atc_rows_is_one_ingredient(self, builder: ContextBuilder) -> None:
        m = one_med(builder, mr("a1", concept=cc(text="Methotrexate 2.5 mg tablets")))
        assert m["name"] == "methotrexate" and m["rxnorm"] == ["6851"]
        assert m["atc"] == ["L01BA01", "L04AX03"]

    def test_unknown_rxnorm_is_not_identified(self, builder: ContextBuilder) -> None:
        m = one_med(builder, mr("a1", concept=cc(RXNORM, "99999999")))
        assert m["identified"] is False
        assert m["display"] == "unnamed medication"


class TestMedicationReference:
    def test_contained_medication(self, builder: ContextBuilder) -> None:
        r = mr(
            "a1",
            medicationReference={"reference": "#m1"},
            contained=[{"resourceType": "Medication", "id": "m1", "code": cc(ATC, "B01AA03", text="Marevan 2,5 mg")}],
        )
        m = one_med(builder, r)
        assert m["atc"] == ["B01AA03"] and m["display"] == "Marevan 2,5 mg" and m["identified"] is True

    def test_contained_medication_identified_by_its_ingredients(self, builder: ContextBuilder) -> None:
        r = mr(
            "a1",
            medicationReference={"reference": "#m1"},
            contained=[
                {
                    "resourceType": "Medication",
                    "id": "m1",
                    "code": cc(text="Local mixture"),
                    "ingredient": [{"itemCodeableConcept": cc(RXNORM, "5640")}],
                }
            ],
        )
        m = one_med(builder, r)
        assert m["atc"] == ["M01AE01"] and m["via"] == ["rxnorm-in"]

    def test_medication_in_the_draft_bundle(self, builder: ContextBuilder) -> None:
        med = {"resourceType": "Medication", "id": "medX", "code": cc(RXNORM, "197806", text="Ibuprofen 400 mg")}
        draft = mr("d1", status="draft", medicationReference={"reference": "Medication/medX"})
        ctx = build(builder, [patient()], hook="order-sign", drafts=[med, draft])
        f = ctx.facts()
        assert [m["ref"] for m in f["meds"]["draft"]] == ["MedicationRequest/d1"]  # the Medication itself is no order
        d = f["meds"]["draft"][0]
        assert d["atc"] == ["M01AE01"] and d["via"] == ["rxnorm-product"] and d["origin"] == "draft"

    def test_medication_in_prefetch(self, builder: ContextBuilder) -> None:
        med = {"resourceType": "Medication", "id": "m9", "code": cc(ATC, "J01CA04")}
        m = one_med(builder, {**mr("a1", medicationReference={"reference": "Medication/m9"}), "note": []})
        assert m["identified"] is False  # Medication not given: cannot be resolved
        f = build(builder, [patient(), med, mr("a1", medicationReference={"reference": "Medication/m9"})]).facts()
        assert f["meds"]["active"][0]["atc"] == ["J01CA04"]

    def test_unresolvable_reference_uses_its_display(self, builder: ContextBuilder) -> None:
        m = one_med(builder, mr("a1", medicationReference={"reference": "Medication/gone", "display": "Warfarin 5 mg"}))
        assert any("could not be resolved" in p for p in m["problems"])
        assert m["atc"] == ["B01AA03"] and m["by_name"] is True

    def test_missing_contained(self, builder: ContextBuilder) -> None:
        m = one_med(builder, mr("a1", medicationReference={"reference": "#nope"}))
        assert m["identified"] is False
        assert any("could not be resolved" in p for p in m["problems"])


# --------------------------------------------------------------------------- drafts, active, selection, status


IBU = cc(ATC, "M01AE01", text="Ibuprofen")
PARA = cc(ATC, "N02BE01", text="Paracetamol")
WARF = cc(ATC, "B01AA03", text="Warfarin")


class TestOrders:
    def drafts(self) -> list[dict[str, Any]]:
        return [mr("d1", "draft", concept=IBU), mr("d2", "draft", concept=PARA)]

    def test_drafts_and_active_kept_apart(self, builder: ContextBuilder) -> None:
        # The EHR also returns the draft order d1 in the prefetch: it must count once, as a draft.
        prefetch = [patient(), mr("a1", concept=WARF), mr("d1", "draft", concept=IBU)]
        f = build(builder, prefetch, hook="order-sign", drafts=self.drafts()).facts()
        assert [m["ref"] for m in f["meds"]["active"]] == ["MedicationRequest/a1"]
        assert [m["ref"] for m in f["meds"]["draft"]] == ["MedicationRequest/d1", "MedicationRequest/d2"]
        assert all(m["origin"] == "active" for m in f["meds"]["active"])
        assert all(m["origin"] == "draft" for m in f["meds"]["draft"])

    def test_draft_in_prefetch_with_active_status_still_only_draft(self, builder: ContextBuilder) -> None:
        prefetch = [patient(), mr("d1", "active", concept=IBU)]
        f = build(builder, prefetch, hook="order-sign", drafts=self.drafts()).facts()
        assert f["meds"]["active"] == []

    def test_selected_only_for_selections(self, builder: ContextBuilder) -> None:
        ctx = build(builder, [patient(), mr("a1", concept=WARF)], hook="order-select", drafts=self.drafts(), selections=["MedicationRequest/d2"])
        f = ctx.facts()
        sel = {m["ref"]: m["selected"] for m in f["meds"]["draft"]}
        assert sel == {"MedicationRequest/d1": False, "MedicationRequest/d2": True}
        assert f["meds"]["active"][0]["selected"] is False
        assert [m["ref"] for m in f["meds"]["focus"]] == ["MedicationRequest/d2"]

    def test_order_sign_selects_nothing_and_focuses_all_drafts(self, builder: ContextBuilder) -> None:
        f = build(builder, [patient(), mr("a1", concept=WARF)], hook="order-sign", drafts=self.drafts()).facts()
        assert not any(m["selected"] for m in f["meds"]["draft"] + f["meds"]["active"])
        assert [m["ref"] for m in f["meds"]["focus"]] == ["MedicationRequest/d1", "MedicationRequest/d2"]

    def test_selections_ignored_outside_order_select(self, builder: ContextBuilder) -> None:
        # order-sign has no selections; a stray field sent by a client must not mark orders selected
        f = build(builder, [patient()], hook="order-sign", drafts=self.drafts(), selections=["MedicationRequest/d1"]).facts()
        assert not any(m["selected"] for m in f["meds"]["draft"])

    def test_patient_view_focus_is_active(self, builder: ContextBuilder) -> None:
        f = build(builder, [patient(), mr("a1", concept=WARF)]).facts()
        assert [m["ref"] for m in f["meds"]["focus"]] == ["MedicationRequest/a1"]
        assert f["meds"]["draft"] == []

    @pytest.mark.parametrize("status", ["stopped", "cancelled", "entered-in-error", "completed", "draft", None])
    def test_inactive_requests_excluded(self, builder: ContextBuilder, status: str | None) -> None:
        f = build(builder, [patient(), mr("a1", status, concept=WARF), mr("a2", concept=IBU)]).facts()
        assert [m["ref"] for m in f["meds"]["active"]] == ["MedicationRequest/a2"]

    @pytest.mark.parametrize("status", ["active", "on-hold"])
    def test_active_requests_counted(self, builder: ContextBuilder, status: str) -> None:
        f = build(builder, [patient(), mr("a1", status, concept=WARF)]).facts()
        assert [m["status"] for m in f["meds"]["active"]] == [status]

    def test_medication_statement(self, builder: ContextBuilder) -> None:
        res = [
            patient(),
            ms("s1", "active", PARA),
            ms("s2", "stopped", IBU),
            ms("s3", "entered-in-error", WARF),
            ms("s4", "completed", WARF),
        ]
        f = build(builder, res).facts()
        assert [(m["ref"], m["atc"]) for m in f["meds"]["active"]] == [("MedicationStatement/s1", ["N02BE01"])]

    def test_duplicate_resources_counted_once(self, builder: ContextBuilder) -> None:
        r = mr("a1", concept=WARF)
        f = build(builder, [patient(), r, dict(r)]).facts()
        assert len(f["meds"]["active"]) == 1


# --------------------------------------------------------------------------- weight, height, observations


class TestVitals:
    def test_latest_weight_wins(self, builder: ContextBuilder) -> None:
        res = [
            patient(),
            obs("w1", "29463-7", 20.0, "kg", "2024-06-01T08:00:00Z"),
            obs("w2", "29463-7", 21.5, "kg", "2024-06-14T08:00:00Z"),
        ]
        w = build(builder, res).facts()["patient"]["weight"]
        assert w["kg"] == 21.5
        assert w["date"].startswith("2024-06-14T08:00")
        assert w["age_days"] == 1

    def test_order_of_resources_does_not_matter(self, builder: ContextBuilder) -> None:
        res = [
            patient(),
            obs("w2", "29463-7", 21.5, "kg", "2024-06-14T08:00:00Z"),
            obs("w1", "3141-9", 20.0, "kg", "2024-06-01T08:00:00Z"),
        ]
        assert build(builder, res).facts()["patient"]["weight"]["kg"] == 21.5

    def test_weight_in_pounds_exact(self, builder: ContextBuilder) -> None:
        res = [patient(), obs("w1", "29463-7", 44, "[lb_av]", "2024-06-14")]
        kg = build(builder, res).facts()["patient"]["weight"]["kg"]
        assert kg == float(Decimal(44) * Decimal("0.45359237"))  # 19.95806428, exact by definition

    def test_weight_in_grams_exact(self, builder: ContextBuilder) -> None:
        res = [patient(), obs("w1", "29463-7", 3450, "g", "2024-06-14")]
        assert build(builder, res).facts()["patient"]["weight"]["kg"] == 3.45

    def test_future_weight_ignored(self, builder: ContextBuilder) -> None:
        res = [
            patient(),
            obs("w1", "29463-7", 20.0, "kg", "2024-06-10T08:00:00Z"),
            obs("w2", "29463-7", 99.0, "kg", "2024-06-15T12:00:01Z"),  # one second after "now"
        ]
        ctx = build(builder, res)
        assert ctx.facts()["patient"]["weight"]["kg"] == 20.0
        assert [o["value"] for o in ctx.facts()["obs"]["29463-7"]] == [20.0]

    def test_unusable_weights_skipped(self, builder: ContextBuilder) -> None:
        res = [
            patient(),
            obs("w0", "29463-7", 18.0, "kg", "2024-05-01"),
            obs("w1", "29463-7", 0, "kg", "2024-06-14"),  # not a weight
            obs("w2", "29463-7", 30, "cm", "2024-06-13"),  # not a mass unit
            obs("w3", "29463-7", 25, "kg", "2024-06-12", status="entered-in-error"),
        ]
        assert build(builder, res).facts()["patient"]["weight"]["kg"] == 18.0

    def test_no_weight(self, builder: ContextBuilder) -> None:
        assert build(builder, [patient()]).facts()["patient"]["weight"] is None

    def test_height(self, builder: ContextBuilder) -> None:
        res = [patient(), obs("h1", "8302-2", 110.0, "cm", "2024-01-01"), obs("h2", "8302-2", 112.0, "cm", "2024-06-01")]
        h = build(builder, res).facts()["patient"]["height"]
        assert h["cm"] == 112.0 and h["date"].startswith("2024-06-01")

    @pytest.mark.parametrize("value,unit,cm", [(1.12, "m", 112.0), (44, "[in_i]", 111.76)])
    def test_height_units(self, builder: ContextBuilder, value: float, unit: str, cm: float) -> None:
        h = build(builder, [patient(), obs("h1", "8302-2", value, unit, "2024-06-01")]).facts()["patient"]["height"]
        assert h["cm"] == pytest.approx(cm, abs=1e-9)

    def test_height_unknown_unit_ignored(self, builder: ContextBuilder) -> None:
        assert build(builder, [patient(), obs("h1", "8302-2", 44, "ft", "2024-06-01")]).facts()["patient"]["height"] is None


class TestObservations:
    def test_grouped_by_loinc_newest_first(self, builder: ContextBuilder) -> None:
        res = [
            patient(),
            obs("t1", "8310-5", 37.0, "Cel", "2024-06-15T06:00:00Z"),
            obs("t2", "8310-5", 39.1, "Cel", "2024-06-15T10:00:00Z"),
            obs("t3", "8310-5", 38.0, "Cel", "2024-06-15T08:00:00+02:00"),  # 06:00Z... same as t1
            obs("c1", "1988-5", 45.0, "mg/L", "2024-06-14T12:00:00Z"),
        ]
        o = build(builder, res).facts()["obs"]
        assert [x["value"] for x in o["8310-5"][:1]] == [39.1]
        assert o["8310-5"][0]["age_hours"] == 2.0
        assert o["8310-5"][0]["unit"] == "Cel"
        assert o["1988-5"] == [{"value": 45.0, "unit": "mg/L", "time": "2024-06-14T12:00:00+00:00", "age_hours": 24.0}]
        ages = [x["age_hours"] for x in o["8310-5"]]
        assert ages == sorted(ages)

    def test_bp_components_flattened(self, builder: ContextBuilder) -> None:
        res = [patient(), bp("bp1", 110, 70, "2024-06-14T12:00:00Z"), bp("bp2", 135, 85, "2024-06-15T11:00:00Z")]
        o = build(builder, res).facts()["obs"]
        assert [x["value"] for x in o["8480-6"]] == [135.0, 110.0]
        assert [x["value"] for x in o["8462-4"]] == [85.0, 70.0]
        assert o["8480-6"][0]["unit"] == "mm[Hg]"
        assert o["8480-6"][0]["age_hours"] == 1.0
        assert "85354-9" in o  # the panel itself is kept, without a value
        assert o["85354-9"][0]["value"] is None

    @pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "registered"])
    def test_bad_status_excluded(self, builder: ContextBuilder, status: str) -> None:
        res = [patient(), obs("x", "8310-5", 40.0, "Cel", "2024-06-15", status=status)]
        assert "8310-5" not in build(builder, res).facts()["obs"]

    def test_other_value_types(self, builder: ContextBuilder) -> None:
        res = [
            patient(),
            {"resourceType": "Observation", "id": "o1", "status": "final", "code": cc(LOINC, "72166-2"), "effectiveDateTime": "2024-06-01",
             "valueCodeableConcept": cc(SCT, "8517006", text="Ex-smoker")},
            {"resourceType": "Observation", "id": "o2", "status": "final", "code": cc(LOINC, "9279-1"), "effectiveDateTime": "2024-06-01",
             "valueInteger": 22},
            {"resourceType": "Observation", "id": "o3", "status": "final", "code": cc(LOINC, "X-1"), "effectiveDateTime": "2024-06-01",
             "valueString": "positive"},
            {"resourceType": "Observation", "id": "o4", "status": "final", "code": cc("urn:other", "8310-5"), "valueQuantity": {"value": 1}},
        ]
        o = build(builder, res).facts()["obs"]
        assert o["72166-2"][0]["value"] == "8517006"
        assert o["9279-1"][0]["value"] == 22.0
        assert o["X-1"][0]["value"] == "positive"
        assert "8310-5" not in o  # not a LOINC coding

    def test_snomed_coding_filed_under_its_mapped_loinc_key(self, builder: ContextBuilder) -> None:
        def rr(rid: str, codings: list[dict[str, str]], value: int, when: str) -> dict[str, Any]:
            return {"resourceType": "Observation", "id": rid, "status": "final", "code": {"coding": codings},
                    "effectiveDateTime": when, "valueQuantity": {"value": value, "unit": "/min", "system": UCUM, "code": "/min"}}

        res = [
            patient(),
            rr("s1", [{"system": SCT, "code": "86290005"}], 24, "2024-06-15T11:00:00Z"),  # SNOMED only (mapped)
            rr("b1", [{"system": LOINC, "code": "9279-1"}, {"system": SCT, "code": "86290005"}], 18, "2024-06-15T10:00:00Z"),
            rr("u1", [{"system": SCT, "code": "364075005"}], 99, "2024-06-15T11:30:00Z"),  # SNOMED, no row: not filed
        ]
        o = build(builder, res).facts()["obs"]
        assert [x["value"] for x in o["9279-1"]] == [24.0, 18.0]  # both codings -> filed once
        assert "86290005" not in o and "364075005" not in o


# --------------------------------------------------------------------------- conditions


class TestConditions:
    def test_filters_and_systems(self, builder: ContextBuilder) -> None:
        res = [
            patient(),
            cond("c1", ICD10, "J45.9", text="Asthma"),
            cond("c2", ICD10_NO, "E10"),
            cond("c3", ICD10, "I10", clinical="inactive"),
            cond("c4", ICD10, "I21", clinical="resolved"),
            cond("c5", ICD10, "A41.9", verification="refuted"),
            cond("c6", ICD10, "A40", verification="entered-in-error"),
            cond("c7", SCT, "195967001", clinical="recurrence"),
            cond("c8", "http://hl7.org/fhir/sid/icpc-2", "R96", clinical=None),
            cond("c9", ICD10, "K35", clinical="remission"),
        ]
        cs = build(builder, res).facts()["conditions"]
        assert [c["id"] for c in cs] == ["c1", "c2", "c7", "c8"]
        by_id = {c["id"]: c for c in cs}
        assert by_id["c1"]["icd10"] == ["J45.9"] and by_id["c1"]["display"] == "Asthma"
        assert by_id["c2"]["icd10"] == ["E10"]  # Norwegian OID lands in icd10 too
        assert by_id["c7"]["snomed"] == ["195967001"] and by_id["c7"]["icd10"] == []
        assert by_id["c8"]["icpc2"] == ["R96"]

    def test_unconfirmed_kept(self, builder: ContextBuilder) -> None:
        cs = build(builder, [patient(), cond("c1", ICD10, "J45", verification="provisional")]).facts()["conditions"]
        assert [c["icd10"] for c in cs] == [["J45"]]

    def test_onset(self, builder: ContextBuilder) -> None:
        c = cond("c1", ICD10, "J45")
        c["onsetDateTime"] = "2023-01-02"
        cs = build(builder, [patient(), c]).facts()["conditions"]
        assert cs[0]["onset"] == "2023-01-02T00:00:00+00:00"


# --------------------------------------------------------------------------- patient


class TestPatient:
    @pytest.mark.parametrize(
        "now,days,years,months",
        [
            (datetime(2024, 6, 15, 23, 59, tzinfo=timezone.utc), 1460, 3, 47),  # the day before the 4th birthday
            (datetime(2024, 6, 16, 0, 0, tzinfo=timezone.utc), 1461, 4, 48),  # on the birthday
            (datetime(2020, 6, 16, 12, 0, tzinfo=timezone.utc), 0, 0, 0),  # day of birth
            (datetime(2020, 7, 15, 12, 0, tzinfo=timezone.utc), 29, 0, 0),  # a day short of 1 month
            (datetime(2020, 7, 16, 12, 0, tzinfo=timezone.utc), 30, 0, 1),
        ],
    )
    def test_ages(self, builder: ContextBuilder, now: datetime, days: int, years: int, months: int) -> None:
        p = build(builder, [patient("2020-06-16")], now=now).facts()["patient"]
        assert (p["age_days"], p["age_years"], p["age_months"]) == (days, years, months)
        assert p["birth_date"] == "2020-06-16"
        assert p["sex"] == "female"
        assert p["id"] == "p1"

    def test_no_birth_date(self, builder: ContextBuilder) -> None:
        ctx = build(builder, [patient(None)])
        p = ctx.facts()["patient"]
        assert p["age_days"] is None and p["age_years"] is None and p["age_months"] is None
        assert any("birthDate" in g for g in ctx.gaps)

    def test_no_patient_is_a_gap(self, builder: ContextBuilder) -> None:
        ctx = build(builder, [])
        assert any("no Patient" in g for g in ctx.facts()["gaps"])

    def test_postmenstrual_age(self, builder: ContextBuilder) -> None:
        res = [patient("2024-06-01"), obs("ga", "76516-4", 30, "wk", "2024-06-01")]
        p = build(builder, res).facts()["patient"]
        assert p["gestational_age_weeks"] == 30.0
        assert p["postmenstrual_age_weeks"] == 32.0  # 30 weeks + 14 days

    def test_postmenstrual_age_rounding(self, builder: ContextBuilder) -> None:
        res = [patient("2024-06-05"), obs("ga", "76516-4", 27.5, "wk", "2024-06-05")]
        p = build(builder, res).facts()["patient"]
        assert p["postmenstrual_age_weeks"] == round(27.5 + 10 / 7, 2)

    def test_no_gestational_age(self, builder: ContextBuilder) -> None:
        p = build(builder, [patient("2024-06-01")]).facts()["patient"]
        assert p["gestational_age_weeks"] is None and p["postmenstrual_age_weeks"] is None

    def test_gestational_age_in_days(self, builder: ContextBuilder) -> None:
        res = [patient("2024-06-01"), obs("ga", "76516-4", 210, "d", "2024-06-01")]
        p = build(builder, res).facts()["patient"]
        assert p["gestational_age_weeks"] in (None, pytest.approx(30.0))


# --------------------------------------------------------------------------- facts() contract


class TestFacts:
    def full(self, builder: ContextBuilder) -> PatientContext:
        note = [{"text": SENTINEL}]
        res = [
            patient(name=[{"family": SENTINEL}]),
            mr("a1", concept=WARF, note=note, dosageInstruction=[{"text": "1 tablet daily"}]),
            ms("s1", "active", PARA) | {"note": note},
            obs("w1", "29463-7", 20, "kg", "2024-06-14", note=note),
            bp("bp1", 110, 70, "2024-06-14T12:00:00Z") | {"note": note},
            cond("c1", ICD10, "J45") | {"note": note},
            {"resourceType": "AllergyIntolerance", "id": "al1", "code": cc(SCT, "91936005", text="Penicillin allergy"), "note": note},
            {"resourceType": "Encounter", "id": "e1", "status": "in-progress", "class": {"code": "IMP"}, "period": {"start": "2024-06-14T10:00:00Z"}, "text": {"div": SENTINEL}},
        ]
        draft = mr("d1", "draft", concept=IBU, note=note, contained=[{"resourceType": "Basic", "id": "b", "code": {"text": SENTINEL}}])
        return build(builder, res, hook="order-select", drafts=[draft], selections=["MedicationRequest/d1"])

    def test_json_serialisable(self, builder: ContextBuilder) -> None:
        f = self.full(builder).facts()
        text = json.dumps(f, allow_nan=False)
        assert json.loads(text) == f
        assert set(f) == {"now", "hook", "patient", "meds", "conditions", "past_conditions", "episodes", "procedures", "obs", "allergies", "encounter", "gaps"}

    def test_no_raw_resources(self, builder: ContextBuilder) -> None:
        f = self.full(builder).facts()
        text = json.dumps(f)
        assert SENTINEL not in text
        assert '"resourceType"' not in text
        assert '"dosageInstruction"' not in text
        # but the facts do describe what was there
        assert f["meds"]["draft"][0]["selected"] is True
        assert f["encounter"] == {"id": "e1", "status": "in-progress", "class": "IMP", "start": "2024-06-14T10:00:00+00:00"}
        assert f["allergies"][0]["display"] == "Penicillin allergy"
        assert f["now"] == NOW.isoformat() and f["hook"] == "order-select"

    def test_facts_are_fresh_copies(self, builder: ContextBuilder) -> None:
        ctx = self.full(builder)
        a = ctx.facts()
        a["meds"]["active"].clear()
        a["gaps"].append("mutated")
        b = ctx.facts()
        assert b["meds"]["active"] and "mutated" not in b["gaps"]


class TestHistoryEpisodesProcedures:
    """Past conditions, episodes of care and procedures are kept apart from active conditions."""

    def test_past_conditions_are_history_not_active(self, builder: ContextBuilder) -> None:
        now = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
        res = [
            {"resourceType": "Condition", "id": "c1", "clinicalStatus": {"coding": [{"code": "resolved"}]},
             "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "K25.0"}]}, "abatementDateTime": "2025-01-01"},
            {"resourceType": "Condition", "id": "c2", "clinicalStatus": {"coding": [{"code": "active"}]},
             "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10"}]}},
            {"resourceType": "Condition", "id": "c3", "clinicalStatus": {"coding": [{"code": "inactive"}]},
             "verificationStatus": {"coding": [{"code": "refuted"}]},
             "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I26.9"}]}},
        ]
        f = builder.build(hook="patient-view", context={"patientId": "p"}, resources=res, now=now).facts()
        assert [c["icd10"] for c in f["conditions"]] == [["I10"]]
        assert [(c["icd10"], c["status"]) for c in f["past_conditions"]] == [(["K25.0"], "resolved")]
        assert f["past_conditions"][0]["abatement"].startswith("2025-01-01")

    def test_episodes_and_procedures(self, builder: ContextBuilder) -> None:
        now = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
        res = [
            {"resourceType": "EpisodeOfCare", "id": "e1", "status": "active", "period": {"start": "2026-11-10"},
             "type": [{"coding": [{"system": "urn:test:npr", "code": "A37A", "display": "Thyroid pathway"}]}]},
            {"resourceType": "EpisodeOfCare", "id": "e2", "status": "entered-in-error", "type": []},
            {"resourceType": "Procedure", "id": "p1", "status": "completed", "performedDateTime": "2026-11-12T09:00:00Z",
             "code": {"coding": [{"system": "urn:test:npr", "code": "A37S"}]}},
            {"resourceType": "Procedure", "id": "p2", "status": "not-done", "code": {"coding": [{"system": "s", "code": "x"}]}},
        ]
        f = builder.build(hook="patient-view", context={"patientId": "p"}, resources=res, now=now).facts()
        assert [(e["id"], e["codes"], e["start"][:10], e["display"]) for e in f["episodes"]] == [("e1", ["urn:test:npr|A37A"], "2026-11-10", "Thyroid pathway")]
        assert [(p["id"], p["codes"]) for p in f["procedures"]] == [("p1", ["urn:test:npr|A37S"])]
