"""End-to-end over real HTTP: uvicorn on a loopback port, a real FHIR server (Medplum) on
another, really signed ES384 JWTs, a real SQLite audit file."""

from __future__ import annotations

import copy
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from cds.hooks.conformance import check_discovery, check_response
from cds.testing.fixtures import draft_orders, patient_resources
from tests.support.live import LiveService, repo_copy, test_settings

NOW = datetime.now(timezone.utc)
PID = "pt-e2e"
PROV = "org.cdsrules.provenance"


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    root = repo_copy(tmp_path_factory.mktemp("e2e"))
    s = LiveService(test_settings(root)).start()
    yield s
    s.stop()


def child_resources() -> list[dict[str, Any]]:
    return patient_resources(
        {
            "id": PID,
            "birthDate": (NOW - timedelta(days=6 * 365)).date().isoformat(),
            "sex": "female",
            "weight": {"kg": 20, "date": "-2d"},
            "medications": [{"id": "aza", "atc": "L04AX01", "text": "Azathioprine 50 mg"}],
        },
        NOW,
    )


def by_type(resources: list[dict[str, Any]], rt: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == rt]


def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources), "entry": [{"resource": r} for r in resources]}


def sign_request(orders: list[dict[str, Any]], *, prefetch: dict[str, Any] | None, fhir: str | None = None, token: str | None = None, hook: str = "order-sign") -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/doc-1", "patientId": PID, "draftOrders": draft_orders(orders, patient_id=PID, now=NOW)},
    }
    if hook == "order-select":
        body["context"]["selections"] = [f"MedicationRequest/{orders[0]['id']}"]
    if prefetch is not None:
        body["prefetch"] = prefetch
    if fhir:
        body["fhirServer"] = fhir
    if token:
        body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": "user/*.read", "subject": "cds-service"}
    return body


def full_prefetch() -> dict[str, Any]:
    res = child_resources()
    return {
        "patient": by_type(res, "Patient")[0],
        "medications": bundle(by_type(res, "MedicationRequest")),
        "weight": bundle(by_type(res, "Observation")),
    }


FEBUXOSTAT = {"id": "febu", "atc": "M04AA03", "text": "Febuxostat 80 mg"}
IBU_400 = {"id": "ibu", "atc": "M01AE01", "text": "Ibuprofen 400 mg", "dose": "400 mg", "frequency": "3/d", "route": "oral"}


def rules_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((c["extension"][PROV]["rule"], c["indicator"]) for c in body["cards"])


# ---------------------------------------------------------------- discovery


def test_discovery_lists_bundled_services(svc: LiveService) -> None:
    r = svc.get("/cds-services")
    assert r.status_code == 200
    body = r.json()
    assert check_discovery(body) == []
    pairs = {(s["id"], s["hook"]) for s in body["services"]}
    assert ("demo-medication-check", "order-sign") in pairs
    assert ("demo-medication-check", "order-select") in pairs  # same id on two hooks
    assert ("demo-medication-review", "patient-view") in pairs
    sign = next(s for s in body["services"] if s["id"] == "demo-medication-check" and s["hook"] == "order-sign")
    assert sign["prefetch"]["patient"] == "Patient/{{context.patientId}}"


def test_no_token_is_a_bare_401(svc: LiveService) -> None:
    for r in (svc.get("/cds-services", auth=False), svc.post("/cds-services/demo-medication-check", {}, auth=False)):
        assert r.status_code == 401
        assert r.content == b""


def test_token_for_another_endpoint_is_rejected(svc: LiveService) -> None:
    tok = svc.token("/cds-services")  # aud = discovery URL
    r = svc.http.post(svc.base_url + "/cds-services/demo-medication-check", json={}, headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 401


def test_cors_preflight(svc: LiveService) -> None:
    r = svc.http.options(
        svc.base_url + "/cds-services/demo-medication-check",
        headers={"Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"},
    )
    assert r.status_code == 200
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-origin"] in ("*", "https://sandbox.cds-hooks.org")


# ---------------------------------------------------------------- calls


def test_full_prefetch_gives_cards_without_fhir(svc: LiveService) -> None:
    r = svc.post("/cds-services/demo-medication-check", sign_request([FEBUXOSTAT, IBU_400], prefetch=full_prefetch()))
    assert r.status_code == 200, r.text
    body = r.json()
    assert check_response(body) == []
    assert rules_of(body) == [("ibuprofen-dose-above-range", "warning"), ("interaction", "critical")]
    assert body["cards"][0]["indicator"] == "critical"  # ordered by urgency
    assert body["cards"][0]["summary"] == "Interaction: febuxostat + azathioprine – avoid"  # client locale en
    packs = body["extension"]["org.cdsrules.evaluation"]["packs"]
    assert [(p["id"], p["version"]) for p in packs] == [("demo.showcase", "1.1.0")]
    for c in body["cards"]:
        prov = c["extension"][PROV]
        assert prov["pack"] == "demo.showcase" and prov["packVersion"] == "1.1.0" and prov["packHash"].startswith("sha256:")
        assert all(k["release"] and len(k["sha256"]) == 64 for k in prov["knowledge"])


def test_locale_extension_overrides_client_locale(svc: LiveService) -> None:
    req = sign_request([FEBUXOSTAT], prefetch=full_prefetch())
    req["extension"] = {"org.cdsrules.locale": "nb"}
    body = svc.post("/cds-services/demo-medication-check", req).json()
    assert body["cards"][0]["summary"] == "Interaksjon: febuxostat + azathioprine – bør unngås"


def test_versions_side_by_side(svc: LiveService) -> None:
    v2 = svc.post("/cds-services/demo-medication-check", sign_request([FEBUXOSTAT], prefetch=full_prefetch())).json()
    pf = full_prefetch()
    del pf["weight"]
    v1 = svc.post("/cds-services/demo-medication-check-v1", sign_request([FEBUXOSTAT], prefetch=pf)).json()
    assert v2["cards"][0]["extension"][PROV]["packVersion"] == "1.1.0"
    assert v1["cards"][0]["extension"][PROV]["packVersion"] == "1.0.0"
    assert v1["cards"][0]["summary"] == "Drug interaction: febuxostat and azathioprine"
    assert v1["cards"][0]["extension"][PROV]["packHash"] != v2["cards"][0]["extension"][PROV]["packHash"]


def test_sandbox_quirks_bundle_without_type_and_no_intent(svc: LiveService) -> None:
    req = sign_request([FEBUXOSTAT, IBU_400], prefetch=full_prefetch(), hook="order-select")
    del req["context"]["draftOrders"]["type"]
    for e in req["context"]["draftOrders"]["entry"]:
        e["resource"].pop("intent", None)
    r = svc.post("/cds-services/demo-medication-check", req)
    assert r.status_code == 200, r.text
    assert rules_of(r.json()) == [("interaction", "critical")]  # only the selected order


def test_absent_prefetch_is_fetched_from_fhir_with_bearer_token(svc: LiveService, fresh_fhir_server: Any) -> None:
    fresh_fhir_server.load(child_resources())
    pf = full_prefetch()
    del pf["medications"], pf["weight"]
    req = sign_request([FEBUXOSTAT, IBU_400], prefetch=pf, fhir=fresh_fhir_server.base_url, token="secret-access-token")
    r = svc.post("/cds-services/demo-medication-check", req)
    assert r.status_code == 200, r.text
    assert rules_of(r.json()) == [("ibuprofen-dose-above-range", "warning"), ("interaction", "critical")]
    log = fresh_fhir_server.requests()
    paths = sorted(e["path"] for e in log)
    assert paths == ["/MedicationRequest", "/Observation"]  # the Patient key came with the call
    assert all(e["authorization"] == "Bearer secret-access-token" for e in log)


def test_null_prefetch_means_no_data_and_is_not_refetched(svc: LiveService, fresh_fhir_server: Any) -> None:
    fresh_fhir_server.load(child_resources())
    pf = full_prefetch()
    pf["weight"] = None
    req = sign_request([IBU_400], prefetch=pf, fhir=fresh_fhir_server.base_url, token="t")
    body = svc.post("/cds-services/demo-medication-check", req).json()
    assert fresh_fhir_server.requests() == []
    assert rules_of(body) == [("weight-missing", "warning")]


def test_unreachable_fhir_is_412_naming_the_key(svc: LiveService) -> None:
    pf = full_prefetch()
    del pf["medications"]
    s = socket_free_port()
    r = svc.post("/cds-services/demo-medication-check", sign_request([FEBUXOSTAT], prefetch=pf, fhir=f"http://127.0.0.1:{s}", token="t"))
    assert r.status_code == 412
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    assert "medications" in oo["issue"][0]["diagnostics"]
    assert "secret" not in r.text


def test_fhir_error_is_412(svc: LiveService, fresh_fhir_server: Any) -> None:
    fresh_fhir_server.fail(500, count=5)
    pf = full_prefetch()
    del pf["weight"]
    r = svc.post("/cds-services/demo-medication-check", sign_request([FEBUXOSTAT], prefetch=pf, fhir=fresh_fhir_server.base_url, token="t"))
    assert r.status_code == 412
    assert "weight" in r.text and "HTTP 500" in r.text


def test_prefetch_operation_outcome_is_a_fetch_error(svc: LiveService) -> None:
    pf = full_prefetch()
    pf["medications"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    r = svc.post("/cds-services/demo-medication-check", sign_request([FEBUXOSTAT], prefetch=pf))
    assert r.status_code == 412 and "medications" in r.text


def test_absent_key_without_fhir_server_is_412(svc: LiveService) -> None:
    pf = full_prefetch()
    del pf["patient"]
    r = svc.post("/cds-services/demo-medication-check", sign_request([FEBUXOSTAT], prefetch=pf))
    assert r.status_code == 412 and "patient" in r.text


def test_open_fhir_server_needs_allow_list(svc: LiveService, fresh_fhir_server: Any) -> None:
    pf = full_prefetch()
    del pf["medications"]
    r = svc.post("/cds-services/demo-medication-check", sign_request([FEBUXOSTAT], prefetch=pf, fhir=fresh_fhir_server.base_url))
    assert r.status_code == 412 and "allow-listed" in r.text
    assert fresh_fhir_server.requests() == []


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "mutate, status, fragment",
    [
        (lambda b: b.pop("hook"), 400, "hook"),
        (lambda b: b.pop("hookInstance"), 400, "hookInstance"),
        (lambda b: b.pop("context"), 400, "context"),
        (lambda b: b.__setitem__("hook", "patient-view"), 400, "does not handle hook"),
        (lambda b: b["context"].pop("patientId"), 400, "context.patientId"),
        (lambda b: b["context"].pop("draftOrders"), 400, "context.draftOrders"),
        (lambda b: b["context"].__setitem__("userId", "nobody"), 400, "userId"),
        (lambda b: b["context"].__setitem__("patientId", "../../etc/passwd"), 400, "patientId"),
        (lambda b: b.__setitem__("fhirAuthorization", {"access_token": "x", "token_type": "Bearer", "expires_in": 1, "scope": "s", "subject": "c"}), 400, "cds-r-1"),
        (lambda b: b.__setitem__("context", []), 400, "context"),
    ],
)
def test_bad_requests_are_400_with_operation_outcome(svc: LiveService, mutate: Any, status: int, fragment: str) -> None:
    body = sign_request([FEBUXOSTAT], prefetch=full_prefetch())
    mutate(body)
    r = svc.post("/cds-services/demo-medication-check", body)
    assert r.status_code == status, r.text
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    assert fragment in " ".join(i["diagnostics"] for i in oo["issue"])


def test_malformed_json_is_400(svc: LiveService) -> None:
    r = svc.post("/cds-services/demo-medication-check", content=b'{"hook": ')
    assert r.status_code == 400 and "not valid JSON" in r.text


def test_selection_not_in_draft_orders_is_400(svc: LiveService) -> None:
    body = sign_request([FEBUXOSTAT], prefetch=full_prefetch(), hook="order-select")
    body["context"]["selections"] = ["MedicationRequest/nope"]
    r = svc.post("/cds-services/demo-medication-check", body)
    assert r.status_code == 400 and "not in draftOrders" in r.text


def test_unknown_service_is_404(svc: LiveService) -> None:
    r = svc.post("/cds-services/no-such-service", sign_request([FEBUXOSTAT], prefetch=full_prefetch()))
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


# ---------------------------------------------------------------- feedback and audit


def test_feedback_is_stored_linked_and_idempotent(svc: LiveService) -> None:
    req = sign_request([FEBUXOSTAT, IBU_400], prefetch=full_prefetch())
    body = svc.post("/cds-services/demo-medication-check", req).json()
    crit = next(c for c in body["cards"] if c["indicator"] == "critical")
    warn = next(c for c in body["cards"] if c["indicator"] == "warning")
    ts = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    accepted = {"feedback": [{"card": warn["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": warn["suggestions"][0]["uuid"]}], "outcomeTimestamp": ts}]}
    overridden = {"feedback": [{"card": crit["uuid"], "outcome": "overridden", "outcomeTimestamp": ts,
                                "overrideReason": {"reason": {"code": "will-monitor", "system": crit["overrideReasons"][1]["system"]}, "userComment": "INR checked"}}]}
    unknown = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": ts}]}
    for fb in (accepted, overridden, overridden, unknown):  # overridden twice: a client retry
        r = svc.post("/cds-services/demo-medication-check/feedback", fb)
        assert r.status_code == 200 and r.json() == {}
    svc.state.audit.flush()
    rows = [f for f in svc.state.audit.feedback() if f["card_uuid"] in (crit["uuid"], warn["uuid"])]
    assert len(rows) == 2
    by_card = {f["card_uuid"]: f for f in rows}
    assert by_card[crit["uuid"]]["rule_id"] == "interaction" and by_card[crit["uuid"]]["reason_code"] == "will-monitor"
    assert by_card[warn["uuid"]]["rule_id"] == "ibuprofen-dose-above-range"
    assert by_card[crit["uuid"]]["known_card"] and by_card[warn["uuid"]]["known_card"]
    flagged = [f for f in svc.state.audit.feedback() if f["card_uuid"] == unknown["feedback"][0]["card"]]
    assert len(flagged) == 1 and not flagged[0]["known_card"]
    cards = svc.state.audit.cards_for(req["hookInstance"])
    assert {c["uuid"] for c in cards} == {crit["uuid"], warn["uuid"]}


def test_invalid_feedback_is_400(svc: LiveService) -> None:
    ts = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    for fb in (
        {"feedback": [{"card": "x", "outcome": "accepted", "outcomeTimestamp": ts}]},  # cds-fb-2
        {"feedback": [{"card": "x", "outcome": "ignored", "outcomeTimestamp": ts}]},  # cds-fb-1
        {"feedback": [{"card": "x", "outcome": "overridden", "outcomeTimestamp": ts, "overrideReason": {}}]},  # cds-fb-3
        {"feedback": []},
    ):
        r = svc.post("/cds-services/demo-medication-check/feedback", fb)
        assert r.status_code == 400, fb


def test_every_call_is_audited_once(svc: LiveService) -> None:
    req = sign_request([FEBUXOSTAT], prefetch=full_prefetch())
    svc.post("/cds-services/demo-medication-check", req)
    bad = copy.deepcopy(req)
    bad["hookInstance"] = str(uuid.uuid4())
    del bad["prefetch"]["patient"]
    svc.post("/cds-services/demo-medication-check", bad)
    svc.state.audit.flush()
    evs = {e["hook_instance"]: e for e in svc.state.audit.evaluations(limit=1000)}
    ok = evs[req["hookInstance"]]
    assert ok["status"] == 200 and ok["outcome"] == "ok" and ok["patient_ref"] == f"Patient/{PID}"
    assert ok["client_iss"] == "https://ehr.test.example"
    failed = evs[bad["hookInstance"]]
    assert failed["status"] == 412 and failed["outcome"] == "precondition-failed"


def test_tokens_are_never_stored(svc: LiveService, fresh_fhir_server: Any) -> None:
    fresh_fhir_server.load(child_resources())
    pf = full_prefetch()
    del pf["medications"]
    svc.post("/cds-services/demo-medication-check", sign_request([FEBUXOSTAT], prefetch=pf, fhir=fresh_fhir_server.base_url, token="TOPSECRET-ACCESS"))
    svc.state.audit.flush()
    db = Path(svc.settings.audit.path)
    blob = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    assert b"TOPSECRET-ACCESS" not in blob
    assert b"eyJ" not in blob  # no JWT (base64url JSON header) either


# ---------------------------------------------------------------- operations


def test_health_ready_metrics(svc: LiveService) -> None:
    assert svc.http.get(svc.base_url + "/healthz").json() == {"status": "ok"}
    ready = svc.http.get(svc.base_url + "/readyz").json()
    assert ready["status"] == "ready" and "demo.showcase@1.1.0" in ready["packs"]
    svc.post("/cds-services/demo-medication-check", sign_request([FEBUXOSTAT], prefetch=full_prefetch()))
    m = svc.http.get(svc.base_url + "/metrics").text
    assert 'cds_requests_total{hook="order-sign",service="demo-medication-check",status="200"}' in m
    assert 'cds_cards_total{indicator="critical",rule="interaction",service="demo-medication-check"}' in m
    assert "cds_request_duration_seconds_bucket" in m
    assert svc.http.get(svc.base_url + "/openapi.json").json()["info"]["title"]


def socket_free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_bundled_sandbox_config_is_a_valid_trusted_client() -> None:
    import httpx as _httpx
    import yaml

    from cds.api.auth import JWTVerifier, MemoryReplayCache
    from cds.settings import Settings

    repo = Path(__file__).resolve().parents[1]
    data = yaml.safe_load((repo / "config" / "sandbox.yaml").read_text())
    settings = Settings(**data)
    [client] = settings.auth.clients
    assert client.iss == "https://sandbox.cds-hooks.org"
    assert "https://sandbox.cds-hooks.org/.well-known/jwks.json" in client.jku
    JWTVerifier(settings.auth, _httpx.AsyncClient(), MemoryReplayCache())  # raises if the inline key does not parse
