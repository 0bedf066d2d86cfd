"""Proves that the test FHIR server (tests/fhir_server, Medplum 5.2.13 on Node 22) is a real
FHIR R4 server over HTTP, and that its test-only controls work."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator

import httpx
import pytest

if TYPE_CHECKING:  # a runtime import here would pre-empt the plugin's assertion rewriting
    from tests.support.fhir_server import FhirTestServer

# Harmless when tests/conftest.py also lists it: a plugin is registered once.
pytest_plugins = ["tests.support.fhir_server"]

LOINC = "http://loinc.org"
WEIGHT = "29463-7"
FHIR_JSON = "application/fhir+json"


def _weight(oid: str, patient: str, when: str, kg: float) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": WEIGHT, "display": "Body weight"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": kg, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
    }


def _med(mid: str, patient: str, status: str, text: str) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {"text": text},
        "subject": {"reference": f"Patient/{patient}"},
    }


def _condition(cid: str, patient: str, clinical: str, text: str) -> dict:
    return {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}]
        },
        "code": {"text": text},
        "subject": {"reference": f"Patient/{patient}"},
    }


def _ids(bundle: dict) -> list[str]:
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset", bundle
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


@pytest.fixture
def fhir(fresh_fhir_server: FhirTestServer) -> FhirTestServer:
    return fresh_fhir_server


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0, headers={"Accept": FHIR_JSON}) as client:
        yield client


def test_metadata_is_a_capability_statement(fhir: FhirTestServer, http: httpx.Client) -> None:
    r = http.get(f"{fhir.base_url}/metadata")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(FHIR_JSON)
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    assert any(res["type"] == "Patient" for res in cs["rest"][0]["resource"])


def test_create_then_read_patient(fhir: FhirTestServer, http: httpx.Client) -> None:
    r = http.post(
        f"{fhir.base_url}/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Chalmers", "given": ["Peter"]}], "gender": "male"},
        headers={"Content-Type": FHIR_JSON},
    )
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith(FHIR_JSON)
    created = r.json()
    pid = created["id"]
    assert created["meta"]["versionId"]
    assert r.headers["location"].startswith(f"{fhir.base_url}/Patient/{pid}")

    r = http.get(f"{fhir.base_url}/Patient/{pid}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(FHIR_JSON)
    assert r.json()["name"][0]["family"] == "Chalmers"
    assert r.headers["etag"] == f'W/"{created["meta"]["versionId"]}"'

    # update with PUT, and the base URL with a path works too
    body = {**r.json(), "gender": "other"}
    r = http.put(f"{fhir.base_url_with_path}/Patient/{pid}", json=body, headers={"Content-Type": FHIR_JSON})
    assert r.status_code == 200, r.text
    assert http.get(f"{fhir.base_url_with_path}/Patient/{pid}").json()["gender"] == "other"

    # delete
    assert http.delete(f"{fhir.base_url}/Patient/{pid}").status_code == 200
    assert http.get(f"{fhir.base_url}/Patient/{pid}").status_code in (404, 410)


def test_read_missing_is_404_operation_outcome(fhir: FhirTestServer, http: httpx.Client) -> None:
    r = http.get(f"{fhir.base_url}/Patient/does-not-exist")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith(FHIR_JSON)
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    assert oo["issue"][0]["severity"] == "error"
    assert oo["issue"][0]["code"] == "not-found"


def test_medication_request_search_by_patient_and_status(fhir: FhirTestServer, http: httpx.Client) -> None:
    fhir.load(
        [
            {"resourceType": "Patient", "id": "pa"},
            {"resourceType": "Patient", "id": "pb"},
            _med("ma1", "pa", "active", "metformin"),
            _med("ma2", "pa", "active", "lisinopril"),
            _med("ma3", "pa", "stopped", "warfarin"),
            _med("mb1", "pb", "active", "aspirin"),
        ]
    )
    r = http.get(f"{fhir.base_url}/MedicationRequest", params={"patient": "pa", "status": "active"})
    assert r.status_code == 200
    assert sorted(_ids(r.json())) == ["ma1", "ma2"]
    assert r.json()["total"] == 2
    # the reference form and subject= work the same way
    r = http.get(f"{fhir.base_url}/MedicationRequest", params={"subject": "Patient/pb", "status": "active"})
    assert _ids(r.json()) == ["mb1"]
    r = http.get(f"{fhir.base_url}/MedicationRequest", params={"patient": "pb", "status": "stopped"})
    assert _ids(r.json()) == []


def test_observation_code_sort_count_returns_newest_weight(fhir: FhirTestServer, http: httpx.Client) -> None:
    other_code = _weight("height", "p1", "2025-01-01T00:00:00Z", 180)
    other_code["code"]["coding"][0]["code"] = "8302-2"
    fhir.load(
        [
            {"resourceType": "Patient", "id": "p1"},
            {"resourceType": "Patient", "id": "p2"},
            _weight("w-old", "p1", "2023-03-01T08:00:00Z", 81.0),
            _weight("w-new", "p1", "2024-11-02T08:00:00Z", 79.5),
            _weight("w-mid", "p1", "2024-02-10T08:00:00Z", 80.2),
            _weight("w-other-patient", "p2", "2025-06-01T08:00:00Z", 60.0),
            other_code,
        ]
    )
    # exactly the query string the service sends (unencoded '|')
    r = http.get(f"{fhir.base_url}/Observation?patient=p1&code={LOINC}|{WEIGHT}&_sort=-date&_count=1")
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert _ids(bundle) == ["w-new"]
    assert bundle["entry"][0]["resource"]["valueQuantity"]["value"] == 79.5
    assert bundle["total"] == 3
    # ascending sort gives the oldest
    r = http.get(f"{fhir.base_url}/Observation?patient=p1&code={LOINC}|{WEIGHT}&_sort=date&_count=1")
    assert _ids(r.json()) == ["w-old"]


def test_condition_search_by_clinical_status(fhir: FhirTestServer, http: httpx.Client) -> None:
    fhir.load(
        [
            _condition("c-active", "p1", "active", "diabetes"),
            _condition("c-resolved", "p1", "resolved", "pneumonia"),
            _condition("c-other", "p2", "active", "asthma"),
        ]
    )
    r = http.get(f"{fhir.base_url}/Condition", params={"patient": "p1", "clinical-status": "active"})
    assert _ids(r.json()) == ["c-active"]
    r = http.get(f"{fhir.base_url}/Condition", params={"patient": "p1"})
    assert sorted(_ids(r.json())) == ["c-active", "c-resolved"]


def test_transaction_bundle(fhir: FhirTestServer, http: httpx.Client) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "tx1"}, "request": {"method": "PUT", "url": "Patient/tx1"}},
            {"resource": _med("txm", "tx1", "active", "x"), "request": {"method": "PUT", "url": "MedicationRequest/txm"}},
        ],
    }
    r = http.post(fhir.base_url, json=bundle, headers={"Content-Type": FHIR_JSON})
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "transaction-response"
    assert http.get(f"{fhir.base_url}/MedicationRequest/txm").json()["subject"]["reference"] == "Patient/tx1"


def test_searchset_paging_next_links(fhir: FhirTestServer, http: httpx.Client) -> None:
    fhir.load([_med(f"m{i}", "p1", "active", f"drug {i}") for i in range(5)] + [_med("x", "p2", "active", "y")])
    url: str | None = f"{fhir.base_url}/MedicationRequest?patient=p1&status=active&_count=2"
    seen: list[str] = []
    pages = 0
    while url:
        r = http.get(url)
        assert r.status_code == 200, r.text
        bundle = r.json()
        assert bundle["total"] == 5
        assert len(bundle.get("entry", [])) <= 2
        assert all(e["fullUrl"].startswith(fhir.base_url + "/MedicationRequest/") for e in bundle.get("entry", []))
        seen += _ids(bundle)
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert links["self"]
        url = links.get("next")
        pages += 1
        assert pages <= 5
    assert pages == 3
    assert sorted(seen) == [f"m{i}" for i in range(5)]
    # the default page size is 20: a full page gets a next link, a short one does not
    r = http.get(f"{fhir.base_url}/MedicationRequest", params={"patient": "p1"})
    assert "next" not in {link["relation"] for link in r.json()["link"]}


def test_reset_empties(fhir: FhirTestServer, http: httpx.Client) -> None:
    fhir.load([{"resourceType": "Patient", "id": "gone"}])
    assert http.get(f"{fhir.base_url}/Patient/gone").status_code == 200
    fhir.reset()
    assert http.get(f"{fhir.base_url}/Patient/gone").status_code == 404
    assert _ids(http.get(f"{fhir.base_url}/Patient").json()) == []


def test_requests_log_records_authorization(fhir: FhirTestServer, http: httpx.Client) -> None:
    fhir.load([{"resourceType": "Patient", "id": "p1"}])
    assert fhir.requests() == []  # fixture loading is not logged
    http.get(f"{fhir.base_url}/Patient/p1", headers={"Authorization": "Bearer tok-123"})
    http.get(f"{fhir.base_url_with_path}/Condition?patient=p1&clinical-status=active")
    log = fhir.requests()
    assert [(e["method"], e["url"]) for e in log] == [
        ("GET", "/Patient/p1"),
        ("GET", "/fhir/R4/Condition?patient=p1&clinical-status=active"),
    ]
    assert log[0]["authorization_present"] is True
    assert log[0]["authorization"] == "Bearer tok-123"
    assert log[0]["status"] == 200
    assert log[1]["authorization_present"] is False and log[1]["authorization"] is None
    assert log[1]["path"] == "/Condition"
    assert log[1]["query"] == {"patient": "p1", "clinical-status": "active"}
    fhir.clear_requests()
    assert fhir.requests() == []


def test_fail_injects_errors_then_recovers(fhir: FhirTestServer, http: httpx.Client) -> None:
    fhir.fail(500, count=2)
    fhir.load([{"resourceType": "Patient", "id": "p1"}])  # the harness's own calls never fail
    for _ in range(2):
        r = http.get(f"{fhir.base_url}/Patient/p1")
        assert r.status_code == 500
        assert r.headers["content-type"].startswith(FHIR_JSON)
        assert r.json()["resourceType"] == "OperationOutcome"
    assert http.get(f"{fhir.base_url}/Patient/p1").status_code == 200
    assert [e["status"] for e in fhir.requests()] == [500, 500, 200]

    # only matching requests fail
    fhir.fail(503, count=1, match="Observation")
    assert http.get(f"{fhir.base_url}/Patient/p1").status_code == 200
    r = http.get(f"{fhir.base_url}/Observation?patient=p1")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert http.get(f"{fhir.base_url}/Observation?patient=p1").status_code == 200


def test_delay(fhir: FhirTestServer, http: httpx.Client) -> None:
    fhir.load([{"resourceType": "Patient", "id": "p1"}])
    fhir.delay(300, count=1)
    t0 = time.monotonic()
    assert http.get(f"{fhir.base_url}/Patient/p1").status_code == 200
    assert time.monotonic() - t0 >= 0.29
    t0 = time.monotonic()
    assert http.get(f"{fhir.base_url}/Patient/p1").status_code == 200
    assert time.monotonic() - t0 < 0.25
    # a delay longer than the client's timeout looks like a hung server
    fhir.delay(1500)
    with pytest.raises(httpx.ReadTimeout):
        http.get(f"{fhir.base_url}/Patient/p1", timeout=0.3)
    fhir.clear_faults()
    assert http.get(f"{fhir.base_url}/Patient/p1", timeout=1.0).status_code == 200


def test_realistic_fixture_search_latency(fhir: FhirTestServer, http: httpx.Client) -> None:
    """1 patient + 20 resources: the searches a CDS prefetch makes stay fast."""
    fixture: list[dict] = [{"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01"}]
    fixture += [_weight(f"w{i}", "p1", f"2024-{i + 1:02d}-01T00:00:00Z", 80 - i) for i in range(8)]
    fixture += [_med(f"m{i}", "p1", "active" if i % 2 else "stopped", f"drug {i}") for i in range(8)]
    fixture += [_condition(f"c{i}", "p1", "active" if i % 2 else "resolved", f"dx {i}") for i in range(4)]
    fhir.load(fixture)
    queries = [
        "/Patient/p1",
        "/MedicationRequest?patient=p1&status=active",
        f"/Observation?patient=p1&code={LOINC}|{WEIGHT}&_sort=-date&_count=1",
        "/Condition?patient=p1&clinical-status=active",
    ]
    for q in queries:  # warm up
        assert http.get(fhir.base_url + q).status_code == 200
    t0 = time.perf_counter()
    rounds = 25
    for _ in range(rounds):
        for q in queries:
            http.get(fhir.base_url + q)
    per_request_ms = (time.perf_counter() - t0) * 1000 / (rounds * len(queries))
    assert _ids(http.get(fhir.base_url + queries[2]).json()) == ["w7"]
    print(f"\nmean latency over {rounds * len(queries)} requests: {per_request_ms:.2f} ms")
    assert per_request_ms < 100


def test_unknown_search_parameter_is_400_not_an_empty_result(fhir: FhirTestServer, http: httpx.Client) -> None:
    fhir.load([_condition("c1", "p1", "active", "x")])
    r = http.get(f"{fhir.base_url}/Condition", params={"patient": "p1", "clinicalstatus": "active"})
    assert r.status_code == 400
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    assert "clinicalstatus" in oo["issue"][0]["diagnostics"]
    # FHIR lenient handling drops the unknown parameter instead
    r = http.get(
        f"{fhir.base_url}/Condition",
        params={"patient": "p1", "clinicalstatus": "active"},
        headers={"Prefer": "handling=lenient"},
    )
    assert r.status_code == 200 and _ids(r.json()) == ["c1"]
