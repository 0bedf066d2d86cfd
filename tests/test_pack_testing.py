"""The pack test tooling itself: failure diffs, coverage, JUnit, speed, --request, explain, shadow."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cds.engine.registry import load_ruleset
from cds.hooks.services import PackPin, ServiceDefinition
from cds.pipeline import evaluate
from cds.testing.cases import load_cases, run_case
from cds.testing.fixtures import draft_orders, patient_resources
from cds.testing.suite import coverage, junit_xml, run_pack
from tests.support.live import repo_copy

PACK = "rules/demo/showcase-1.1"
CASE_HEAD = "hook: order-sign\nnow: 2026-11-25T12:00:00Z\nlocale: en\ncases:\n"
CHILD = "    patient: {birthDate: 2020-03-01, weight: {kg: 20, date: 2026-11-20}}\n"


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return repo_copy(tmp_path / "repo")


def run_file(root: Path, text: str) -> list[list[str]]:
    path = root / PACK / "tests" / "probe.yaml"
    path.write_text(CASE_HEAD + text, encoding="utf-8")
    rs, problems = load_ruleset(root / "hooks", root / "rules", root / "knowledge")
    assert rs is not None, problems
    pack = rs.packs["demo.showcase"]["1.1.0"]
    cases, probs = load_cases(path)
    assert not probs, probs
    return [run_case(rs, pack, c).failures for c in cases]


def test_missing_card_fails_with_a_clear_diff(root: Path) -> None:
    [f] = run_file(root, "  - name: n\n" + CHILD + "    orders: [{id: i, atc: M01AE01, dose: 200 mg, frequency: 3/d, route: oral}]\n"
                   "    expect: {cards: [{rule: ibuprofen-dose-above-range, indicator: warning}]}\n")
    assert f == ["missing card: expected a card from rule 'ibuprofen-dose-above-range' (warning); rules that fired: none"]


def test_other_indicator_fails_with_a_clear_diff(root: Path) -> None:
    [f] = run_file(root, "  - name: n\n" + CHILD + "    orders: [{id: i, atc: M01AE01, dose: 400 mg, frequency: 3/d, route: oral}]\n"
                   "    expect: {cards: [{rule: ibuprofen-dose-above-range, indicator: critical}]}\n")
    assert f == ["card from rule 'ibuprofen-dose-above-range' differs:\n    indicator: expected critical, got warning"]


def test_unexpected_extra_card_fails_unless_opted_out(root: Path) -> None:
    body = CHILD + "    orders: [{id: i, atc: M01AE01, dose: 400 mg, frequency: 3/d, route: oral}, {id: x, text: Mystery drops}]\n"
    f1, f2 = run_file(root, "  - name: strict\n" + body + "    expect: {cards: [{rule: ibuprofen-dose-above-range}]}\n"
                      "  - name: lenient\n" + body + "    expect: {exhaustive: false, cards: [{rule: ibuprofen-dose-above-range}]}\n")
    assert f1 == ["unexpected card from rule 'unidentified-medication' (info): \"Interaction check incomplete: 'Mystery drops' was not recognised\""]
    assert f2 == []


def test_summary_diff_shows_expected_and_actual(root: Path) -> None:
    [f] = run_file(root, "  - name: n\n" + CHILD + "    orders: [{id: i, atc: M01AE01, dose: 400 mg, frequency: 3/d, route: oral}]\n"
                   "    expect: {cards: [{rule: ibuprofen-dose-above-range, summary: 'ibuprofen: 400 mg exceeds 100 mg for 20 kg'}]}\n")
    assert "expected: 'ibuprofen: 400 mg exceeds 100 mg for 20 kg'" in f[0] and "actual:   'ibuprofen: 400 mg exceeds 200 mg for 20 kg'" in f[0]


def test_coverage_lists_a_rule_added_without_tests(root: Path) -> None:
    rules = root / PACK / "rules.yaml"
    rules.write_text(rules.read_text() + """
  - id: untested-rule
    title: {nb: Utestet, en: Untested}
    hooks: [order-sign]
    for_each: meds.focus
    when: {"==": [{var: item.name}, "nothing-has-this-name"]}
    severity: info
    card: unidentified
""", encoding="utf-8")
    rs, problems = load_ruleset(root / "hooks", root / "rules", root / "knowledge")
    assert rs is not None, problems
    rep = run_pack(rs, rs.packs["demo.showcase"]["1.1.0"])
    cov = rep.coverage
    assert cov is not None
    assert "untested-rule" in cov.missing_positive
    assert not cov.ok  # min_coverage: 100 in the demo pack
    assert all(r.passed for r in rep.results)


def test_junit_parses_and_counts_every_case(root: Path, tmp_path: Path) -> None:
    rs, _ = load_ruleset(root / "hooks", root / "rules", root / "knowledge")
    assert rs is not None
    reports = [run_pack(rs, p) for p in rs.all_packs()]
    out = tmp_path / "junit.xml"
    junit_xml(reports, out)
    tree = ET.parse(out)
    cases = tree.getroot().findall(".//testcase")
    n_results = sum(len(r.results) for r in reports)
    n_coverage = sum(1 for r in reports if r.coverage and r.coverage.minimum is not None)
    assert len(cases) == n_results + n_coverage
    assert int(tree.getroot().get("tests")) == len(cases)
    assert tree.getroot().get("failures") == "0"


def test_hundreds_of_cases_run_in_seconds(root: Path) -> None:
    """Speed is measured, not asserted: prints the figure for the issue note."""
    doses = ", ".join(f'"{d} mg"' for d in range(201, 701))  # 500 cases
    path = root / PACK / "tests" / "many.yaml"
    path.write_text(CASE_HEAD + "  - name: dose\n" + CHILD + "    matrix: {dose: [" + doses + "]}\n"
                    "    orders: [{id: i, atc: M01AE01, dose: '${dose}', frequency: 3/d, route: oral}]\n"
                    "    expect: {exhaustive: false, cards: [{rule: ibuprofen-dose-above-range}]}\n", encoding="utf-8")
    rs, _ = load_ruleset(root / "hooks", root / "rules", root / "knowledge")
    assert rs is not None
    pack = rs.packs["demo.showcase"]["1.1.0"]
    cases, _ = load_cases(path)
    t0 = time.perf_counter()
    results = [run_case(rs, pack, c) for c in cases]
    dt = time.perf_counter() - t0
    assert len(results) == 500 and all(r.passed for r in results)
    print(f"\n500 pack test cases in {dt:.2f}s ({dt / 500 * 1000:.2f} ms per case)")


def _request_file(tmp_path: Path) -> Path:
    now = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
    res = patient_resources({"id": "p1", "birthDate": "2020-03-01", "weight": {"kg": 20, "date": "2026-11-20"}}, now)
    req = {
        "hook": "order-sign", "hookInstance": "3f6a6b9e-1d9a-4c3e-9d7c-1a2b3c4d5e6f",
        "context": {"userId": "Practitioner/u", "patientId": "p1",
                    "draftOrders": draft_orders([{"id": "ibu", "atc": "M01AE01", "dose": "400 mg", "frequency": "3/d", "route": "oral"}], patient_id="p1", now=now)},
        "prefetch": {
            "patient": res[0],
            "medications": {"resourceType": "Bundle", "type": "searchset", "entry": []},
            "weight": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": res[1]}]},
        },
        "extension": {"org.cdsrules.now": "2026-11-25T12:00:00Z", "org.cdsrules.locale": "en"},
    }
    p = tmp_path / "request.json"
    p.write_text(json.dumps(req), encoding="utf-8")
    return p


def _cds(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cds.cli", *args], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)


def test_cds_test_request_prints_the_cards(tmp_path: Path) -> None:
    r = _cds("test", "--request", str(_request_file(tmp_path)), "--service", "demo-medication-check")
    assert r.returncode == 0, r.stderr
    assert "[WARNING] ibuprofen: 400 mg exceeds 200 mg for 20 kg" in r.stdout
    assert "→ Change the dose to 200 mg" in r.stdout


def test_cds_explain_shows_why(tmp_path: Path) -> None:
    r = _cds("explain", str(_request_file(tmp_path)), "--service", "demo-medication-check")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "rule ibuprofen-dose-above-range (demo.showcase@1.1.0): 1 candidate(s), 1 fired" in out
    assert "let.mg_per_kg = 20.0" in out and "let.limit_mg = 200\n" in out
    assert out.count("let.limit_mg = ") == 1
    assert "item.dose.mg = 400.0" in out and "patient.weight.kg = 20.0" in out
    assert "rule interaction (demo.showcase@1.1.0): 0 candidate(s), 0 fired" in out
    assert "rule weight-missing (demo.showcase@1.1.0): 1 candidate(s), 0 fired" in out


def test_explain_extension_in_the_response(root: Path) -> None:
    rs, _ = load_ruleset(root / "hooks", root / "rules", root / "knowledge")
    assert rs is not None
    svc = rs.services.get("demo-medication-check")
    now = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
    res = patient_resources({"id": "p1", "birthDate": "2020-03-01", "weight": {"kg": 20, "date": "2026-11-20"}}, now)
    ctx = {"userId": "Practitioner/u", "patientId": "p1",
           "draftOrders": draft_orders([{"id": "ibu", "atc": "M01AE01", "dose": "150 mg", "frequency": "3/d", "route": "oral"}], patient_id="p1", now=now)}
    ev = evaluate(rs, svc, hook="order-sign", context=ctx, resources=res, now=now, locale="en", explain=True)
    body = ev.response.wire()
    assert body["cards"] == []
    trace = {t["rule"]: t for t in body["extension"]["org.cdsrules.explain"]["rules"]}
    ev0 = trace["ibuprofen-dose-above-range"]["evaluations"][0]
    assert ev0["fired"] is False and ev0["let"]["limit_mg"] == 200.0 and ev0["reads"]["item.dose.mg"] == 150.0


def test_shadow_pack_is_evaluated_but_not_returned(root: Path) -> None:
    rs, _ = load_ruleset(root / "hooks", root / "rules", root / "knowledge")
    assert rs is not None
    svc = ServiceDefinition(
        id="shadow-test", hooks=["order-sign"], description="d",
        packs=[PackPin(id="demo.showcase", version="1.0.0"), PackPin(id="demo.showcase", version="1.1.0", shadow=True)],
    )
    now = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
    res = patient_resources({"id": "p1", "birthDate": "2020-03-01", "weight": 20, "medications": [{"id": "aza", "atc": "L04AX01"}]}, now)
    ctx = {"userId": "Practitioner/u", "patientId": "p1",
           "draftOrders": draft_orders([{"id": "febu", "atc": "M04AA03"}, {"id": "ibu", "atc": "M01AE01", "dose": "400 mg", "frequency": "3/d", "route": "oral"}], patient_id="p1", now=now)}
    ev = evaluate(rs, svc, hook="order-sign", context=ctx, resources=res, now=now, locale="en")
    body = ev.response.wire()
    returned = {(c["extension"]["org.cdsrules.provenance"]["packVersion"], c["extension"]["org.cdsrules.provenance"]["rule"]) for c in body["cards"]}
    assert returned == {("1.0.0", "interaction")}
    shadow = {(f.pack.version, f.rule.id) for _, f in ev.shadow_cards}
    assert shadow == {("1.1.0", "interaction"), ("1.1.0", "ibuprofen-dose-above-range")}
    assert [p["version"] for p in body["extension"]["org.cdsrules.evaluation"]["packs"]] == ["1.0.0"]


def test_fhirpath_extract_reads_choice_types_with_the_r4_model(root: Path) -> None:
    pack = root / PACK / "pack.yaml"
    pack.write_text(pack.read_text() + """extract:
  spo2:
    resource: Observation
    path: "Observation.where(code.coding.code = '59408-5').value.ofType(Quantity).value"
""", encoding="utf-8")
    rules = root / PACK / "rules.yaml"
    rules.write_text(rules.read_text() + """
  - id: low-spo2-probe
    title: {nb: Probe, en: Probe}
    hooks: [patient-view]
    when: {"<": [{min: {var: extract.spo2}}, 92]}
    severity: info
    card: probe
""", encoding="utf-8")
    cards = root / PACK / "cards.yaml"
    cards.write_text(cards.read_text() + """  probe:
    summary: {nb: "Lav SpO2", en: "Low SpO2"}
    source: {label: test}
""", encoding="utf-8")
    rs, problems = load_ruleset(root / "hooks", root / "rules", root / "knowledge")
    assert rs is not None, problems
    svc = ServiceDefinition(id="x", hooks=["patient-view"], description="d", packs=[PackPin(id="demo.showcase", version="1.1.0")])
    now = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
    res = patient_resources({"id": "p1", "age": "50y", "observations": [{"loinc": "59408-5", "value": 90, "unit": "%"}, {"loinc": "59408-5", "value": 97, "unit": "%", "at": "-3h"}]}, now)
    ev = evaluate(rs, svc, hook="patient-view", context={"userId": "Practitioner/u", "patientId": "p1"}, resources=res, now=now, locale="en", explain=True)
    fired = [f.rule.id for _, f in ev.cards]
    assert fired == ["low-spo2-probe"]
    reads = {t.rule: t for t in ev.traces}["low-spo2-probe"].evaluations[0]["reads"]
    assert sorted(reads["extract.spo2"]) == [90.0, 97.0]


def test_fhirpath_extract_syntax_error_is_reported_at_its_line(root: Path) -> None:
    pack = root / PACK / "pack.yaml"
    pack.write_text(pack.read_text() + 'extract:\n  broken:\n    resource: Observation\n    path: "Observation.where("\n', encoding="utf-8")
    rs, problems = load_ruleset(root / "hooks", root / "rules", root / "knowledge")
    assert rs is None
    [p] = [p for p in problems if p.file.endswith("pack.yaml")]
    lines = pack.read_text().splitlines()
    assert lines[p.line - 1].strip().startswith("path:") and "FHIRPath" in p.message
