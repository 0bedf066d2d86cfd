"""Pack test suites: given this patient and this hook call at this moment, this pack version
answers with exactly these cards — and nothing else.

Cases run through :func:`cds.pipeline.evaluate` (the code the HTTP endpoint runs), in-process.
See docs/authoring.md "Testing a pack" for the format.
"""

from __future__ import annotations

import copy
import itertools
import re
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cds.engine.loader import LoadedPack
from cds.engine.registry import RuleSet
from cds.hooks.conformance import check_response
from cds.hooks.models import CONTEXT_MODELS, HOOKS
from cds.hooks.services import PackPin, ServiceDefinition
from cds.pipeline import evaluate
from cds.testing.fixtures import FixtureError, draft_orders, parse_when, patient_resources
from cds.yamlio import Problem, load_model, validate_model


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActionExpect(_M):
    type: Literal["create", "update", "delete"]
    resourceId: str | None = None
    resource: dict[str, Any] | None = None
    """Expected values at dotted paths of the action's resource, e.g.
    {"dosageInstruction[0].doseAndRate[0].doseQuantity.value": 200}."""


class SuggestionExpect(_M):
    label: str | None = None
    label_contains: str | None = None
    recommended: bool | None = None
    actions: list[ActionExpect] | None = None


class CardExpect(_M):
    rule: str
    row: str | None = None
    """The id of the knowledge-table row that produced the card."""
    indicator: Literal["info", "warning", "critical"] | None = None
    pack_version: str | None = None
    summary: str | None = None
    summary_matches: str | None = None
    detail_contains: str | list[str] | None = None
    subjects: list[str] | None = None
    source_label: str | None = None
    suggestions: list[SuggestionExpect] | None = None
    override_reasons: list[str] | None = None
    links: list[str] | None = None


class Expect(_M):
    cards: list[CardExpect] = []
    exhaustive: bool = True
    """Every card must be expected (unexpected extra cards fail). Opt out with ``exhaustive: false``."""
    unidentified: list[str] | None = None
    data_gaps_contain: list[str] | None = None
    rule_errors: bool = False


class CaseDef(_M):
    name: str
    hook: Literal[HOOKS] | None = None  # type: ignore[valid-type]
    now: str | datetime | date | None = None
    locale: Literal["nb", "en"] | None = None
    use: str | list[str] | None = None
    patient: dict[str, Any] = {}
    orders: list[dict[str, Any]] = []
    selections: list[str] | None = None
    encounter: dict[str, Any] | None = None
    matrix: dict[str, list[Any]] | None = None
    expect: Expect
    tags: list[str] = []


class TestFile(_M):
    hook: Literal[HOOKS] | None = None  # type: ignore[valid-type]
    now: str | datetime | date | None = None
    locale: Literal["nb", "en"] = "en"
    fixtures: dict[str, dict[str, Any]] = {}
    cases: list[dict[str, Any]] = Field(min_length=1)


@dataclass
class Case:
    name: str
    file: Path
    line: int
    hook: str
    now: datetime
    locale: str
    patient: dict[str, Any]
    orders: list[dict[str, Any]]
    selections: list[str] | None
    encounter: dict[str, Any] | None
    expect: Expect


@dataclass
class CaseResult:
    pack: str
    case: Case
    passed: bool
    failures: list[str]
    seconds: float
    cards: list[dict[str, Any]] = field(default_factory=list)
    fired_rules: set[str] = field(default_factory=set)
    fired_rows: set[tuple[str, int]] = field(default_factory=set)

    @property
    def id(self) -> str:
        return f"{self.case.file.name}::{self.case.name}"


# ------------------------------------------------------------------ loading


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if k.endswith("+") and isinstance(v, list):
                key = k[:-1]
                out[key] = list(out.get(key) or []) + copy.deepcopy(v)
            else:
                out[k] = _merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


_VAR = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def _subst(v: Any, env: dict[str, Any]) -> Any:
    if isinstance(v, str):
        m = _VAR.fullmatch(v)
        if m:
            return _lookup(env, m.group(1))
        return _VAR.sub(lambda mm: str(_lookup(env, mm.group(1))), v)
    if isinstance(v, dict):
        return {_subst(k, env): _subst(x, env) for k, x in v.items()}
    if isinstance(v, list):
        return [_subst(x, env) for x in v]
    return v


def _lookup(env: dict[str, Any], path: str) -> Any:
    node: Any = env
    for p in path.split("."):
        if not isinstance(node, dict) or p not in node:
            raise FixtureError(f"${{{path}}} is not defined by the case's matrix")
        node = node[p]
    return node


def load_cases(path: Path) -> tuple[list[Case], list[Problem]]:
    doc, tf, problems = load_model(path, TestFile)
    if doc is None or tf is None:
        return [], problems
    cases: list[Case] = []
    for i, raw in enumerate(tf.cases):
        loc = ["cases", i]
        line = doc.where(loc)[0]
        # with a matrix, values such as orders: ["${drug}"] are only typed after substitution
        probe = {k: ([] if k in ("orders",) and raw.get("matrix") else v) for k, v in raw.items()}
        raw_cd, errs = validate_model(CaseDef, doc, probe, tuple(loc))
        if raw_cd is None:
            problems.extend(errs)
            continue
        combos: list[dict[str, Any]] = [{}]
        if raw_cd.matrix:
            keys = list(raw_cd.matrix)
            combos = [dict(zip(keys, vals)) for vals in itertools.product(*(raw_cd.matrix[k] for k in keys))]
        for env in combos:
            try:
                data = {k: v for k, v in raw.items() if k != "matrix"}
                if env:
                    data = _subst(data, env)
                uses = data.get("use") or []
                merged: dict[str, Any] = {}
                for u in [uses] if isinstance(uses, str) else uses:
                    if u not in tf.fixtures:
                        raise FixtureError(f"fixture {u!r} is not defined in this file's fixtures")
                    merged = _merge(merged, tf.fixtures[u])
                data = _merge(merged, {k: v for k, v in data.items() if k != "use"})
                cd = CaseDef.model_validate(data)
                hook = cd.hook or tf.hook
                if hook is None:
                    raise FixtureError("no hook: set it on the case or at the top of the file")
                now_s = cd.now or tf.now
                if now_s is None:
                    raise FixtureError("no 'now': pin the moment on the case or at the top of the file")
                now = parse_when(now_s, datetime.now(timezone.utc))
                name = cd.name if not env else f"{cd.name} [{', '.join(f'{k}={_short(v)}' for k, v in env.items())}]"
                cases.append(
                    Case(name, path, line, hook, now, cd.locale or tf.locale, cd.patient, cd.orders, cd.selections, cd.encounter, cd.expect)
                )
            except (FixtureError, ValueError) as e:
                problems.append(doc.problem(loc, f"case {raw.get('name', i)!r}: {e}"))
    return cases, problems


def _short(v: Any) -> str:
    if isinstance(v, dict):
        for k in ("name", "id", "atc", "rxnorm", "value"):
            if k in v:
                return str(v[k])
    return str(v)


# ------------------------------------------------------------------ running


def service_for(pack: LoadedPack) -> ServiceDefinition:
    return ServiceDefinition(
        id="pack-test",
        hooks=list(HOOKS),
        description=f"test harness for {pack.key}",
        packs=[PackPin(id=pack.id, version=pack.version, allow_draft=True)],
    )


def build_call(case: Case) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The hook context and the FHIR resources (as prefetch would carry them) for a case."""
    pid = str(case.patient.get("id", "test-patient"))
    resources = patient_resources(case.patient, case.now, case.file.parent)
    context: dict[str, Any] = {"userId": "Practitioner/test-user", "patientId": pid}
    if case.encounter is not None:
        enc = {"resourceType": "Encounter", "id": str(case.encounter.get("id", "enc-1")), "status": case.encounter.get("status", "in-progress"),
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": case.encounter.get("class", "IMP")},
               "subject": {"reference": f"Patient/{pid}"}}
        if case.encounter.get("start"):
            enc["period"] = {"start": parse_when(case.encounter["start"], case.now).isoformat()}
        resources.append(enc)
        context["encounterId"] = enc["id"]
    if case.hook in ("order-select", "order-sign"):
        context["draftOrders"] = draft_orders(case.orders, patient_id=pid, now=case.now)
    if case.hook == "order-select":
        ids = case.selections or [r["resource"]["id"] for r in context["draftOrders"]["entry"]]
        context["selections"] = [s if "/" in s else f"MedicationRequest/{s}" for s in ids]
    if case.hook in ("encounter-start", "encounter-discharge") and "encounterId" not in context:
        context["encounterId"] = "enc-1"
    if case.hook == "appointment-book":
        context["appointments"] = {"resourceType": "Bundle", "type": "collection", "entry": []}
    return context, resources


def run_case(ruleset: RuleSet, pack: LoadedPack, case: Case) -> CaseResult:
    t0 = time.perf_counter()
    failures: list[str] = []
    pin = service_for(pack).packs[0]
    if ruleset.resolve(pin, case.now) is not pack:
        m = pack.manifest
        return CaseResult(pack.key, case, False, [
            f"{pack.key} is not in force at now={case.now.isoformat()} (status {m.status}, effective "
            f"{m.effective.start}..{m.effective.end or ''}): the case would test nothing"], time.perf_counter() - t0)
    try:
        context, resources = build_call(case)
        ctx_model = CONTEXT_MODELS[case.hook].model_validate(context)
        pack.row_hits.active = set()
        ev = evaluate(
            ruleset,
            service_for(pack),
            hook=case.hook,
            context=ctx_model.model_dump(mode="json"),
            resources=resources,
            now=case.now,
            locale=case.locale,
        )
    except Exception as e:  # a broken case is a failing case, with the reason
        pack.row_hits.active = None
        return CaseResult(pack.key, case, False, [f"could not run: {type(e).__name__}: {e}"], time.perf_counter() - t0)
    looked_up, pack.row_hits.active = pack.row_hits.active or set(), None
    body = ev.response.wire()
    failures.extend(f"response is not CDS Hooks conformant: {p}" for p in check_response(body))
    if ev.errors and not case.expect.rule_errors:
        failures.extend(f"rule {e.rule} failed at run time: {e.message}" for e in ev.errors)
    failures.extend(compare(case.expect, body["cards"]))
    ext = body.get("extension", {}).get("org.cdsrules.evaluation", {})
    if case.expect.unidentified is not None:
        got = sorted(u["ref"] for u in ext.get("unidentifiedMedications", []))
        want = sorted(s if "/" in s else f"MedicationRequest/{s}" for s in case.expect.unidentified)
        if got != want:
            failures.append(f"unidentified medications: expected {want}, got {got}")
    for frag in case.expect.data_gaps_contain or []:
        if not any(frag in g for g in ext.get("dataGaps", [])):
            failures.append(f"data gaps: expected one containing {frag!r}, got {ext.get('dataGaps', [])}")
    fired = {f.rule.id for _, f in ev.cards}
    rows = {(f.rule.tables[0].id, f.row_line) for _, f in ev.cards if f.row_line is not None and f.rule.tables}
    rows |= looked_up  # rows matched by band/classify lookups in this case
    return CaseResult(pack.key, case, not failures, failures, time.perf_counter() - t0, body["cards"], fired, rows)


def _prov(card: dict[str, Any]) -> dict[str, Any]:
    return (card.get("extension") or {}).get("org.cdsrules.provenance") or {}


def _get_path(obj: Any, path: str) -> Any:
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            i = int(part[1:-1])
            obj = obj[i] if isinstance(obj, list) and i < len(obj) else None
        else:
            obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def card_diffs(exp: CardExpect, card: dict[str, Any]) -> list[str]:
    """Differences between an expected card and an actual one (empty list = match)."""
    out: list[str] = []
    prov = _prov(card)
    if exp.indicator and card["indicator"] != exp.indicator:
        out.append(f"indicator: expected {exp.indicator}, got {card['indicator']}")
    if exp.row is not None and (prov.get("row") or {}).get("id") != exp.row:
        out.append(f"row: expected {exp.row}, got {(prov.get('row') or {}).get('id')}")
    if exp.pack_version and prov.get("packVersion") != exp.pack_version:
        out.append(f"pack version: expected {exp.pack_version}, got {prov.get('packVersion')}")
    if exp.summary is not None and card["summary"] != exp.summary:
        out.append(f"summary:\n      expected: {exp.summary!r}\n      actual:   {card['summary']!r}")
    if exp.summary_matches is not None and not re.search(exp.summary_matches, card["summary"]):
        out.append(f"summary {card['summary']!r} does not match /{exp.summary_matches}/")
    for frag in [exp.detail_contains] if isinstance(exp.detail_contains, str) else exp.detail_contains or []:
        if frag not in (card.get("detail") or ""):
            out.append(f"detail does not contain {frag!r}; detail is {card.get('detail')!r}")
    if exp.subjects is not None:
        want = sorted(s if "/" in s else f"MedicationRequest/{s}" for s in exp.subjects)
        if sorted(prov.get("subjects", [])) != want:
            out.append(f"subjects: expected {want}, got {sorted(prov.get('subjects', []))}")
    if exp.source_label is not None and card["source"]["label"] != exp.source_label:
        out.append(f"source label: expected {exp.source_label!r}, got {card['source']['label']!r}")
    if exp.override_reasons is not None:
        got = [c["code"] for c in card.get("overrideReasons", [])]
        if got != exp.override_reasons:
            out.append(f"override reasons: expected {exp.override_reasons}, got {got}")
    if exp.links is not None:
        got = [l["url"] for l in card.get("links", [])]
        if got != exp.links:
            out.append(f"links: expected {exp.links}, got {got}")
    if exp.suggestions is not None:
        got_s = card.get("suggestions", [])
        if len(got_s) != len(exp.suggestions):
            out.append(f"suggestions: expected {len(exp.suggestions)}, got {len(got_s)} {[s['label'] for s in got_s]}")
        for i, (es, gs) in enumerate(zip(exp.suggestions, got_s)):
            if es.label is not None and gs["label"] != es.label:
                out.append(f"suggestion {i} label: expected {es.label!r}, got {gs['label']!r}")
            if es.label_contains is not None and es.label_contains not in gs["label"]:
                out.append(f"suggestion {i} label {gs['label']!r} does not contain {es.label_contains!r}")
            if es.recommended is not None and bool(gs.get("isRecommended")) != es.recommended:
                out.append(f"suggestion {i} recommended: expected {es.recommended}")
            if es.actions is not None:
                acts = gs.get("actions", [])
                if len(acts) != len(es.actions):
                    out.append(f"suggestion {i}: expected {len(es.actions)} actions, got {len(acts)}")
                for j, (ea, ga) in enumerate(zip(es.actions, acts)):
                    if ga["type"] != ea.type:
                        out.append(f"suggestion {i} action {j}: expected {ea.type}, got {ga['type']}")
                    if ea.resourceId is not None:
                        want_id = ea.resourceId if "/" in ea.resourceId else f"MedicationRequest/{ea.resourceId}"
                        if ga.get("resourceId") != want_id:
                            out.append(f"suggestion {i} action {j}: resourceId expected {want_id}, got {ga.get('resourceId')}")
                    for path, val in (ea.resource or {}).items():
                        got_v = _get_path(ga.get("resource"), path)
                        if got_v != val:
                            out.append(f"suggestion {i} action {j}: resource {path} expected {val!r}, got {got_v!r}")
    return out


def compare(expect: Expect, cards: list[dict[str, Any]]) -> list[str]:
    """Match expected cards to actual ones; report missing, different and unexpected cards."""
    failures: list[str] = []
    remaining = list(range(len(cards)))
    for exp in expect.cards:
        same_rule = [i for i in remaining if _prov(cards[i]).get("rule") == exp.rule]
        exact = next((i for i in same_rule if not card_diffs(exp, cards[i])), None)
        if exact is not None:
            remaining.remove(exact)
            continue
        if same_rule:
            i = same_rule[0]
            remaining.remove(i)
            diffs = "\n    ".join(card_diffs(exp, cards[i]))
            failures.append(f"card from rule {exp.rule!r} differs:\n    {diffs}")
        else:
            fired = sorted({_prov(c).get('rule') for c in cards}) or "none"
            failures.append(f"missing card: expected a card from rule {exp.rule!r} ({exp.indicator or 'any indicator'}); rules that fired: {fired}")
    if expect.exhaustive:
        for i in remaining:
            c = cards[i]
            failures.append(f"unexpected card from rule {_prov(c).get('rule')!r} ({c['indicator']}): {c['summary']!r}")
    return failures
