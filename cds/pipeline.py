"""The one evaluation path: FHIR resources → patient context → rule evaluation → cards.

The HTTP endpoint, ``cds test``, ``cds test --request`` and ``cds explain`` all call
:func:`evaluate`, so a pack test exercises exactly what production runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

from cds.cards.render import render_card, select
from cds.engine.evaluate import Finding, RuleError, RuleTrace, evaluate_pack
from cds.engine.loader import LoadedPack
from cds.engine.registry import RuleSet
from cds.hooks.models import Card, CdsResponse, prune
from cds.hooks.services import ServiceDefinition

EVALUATION_EXT = "org.cdsrules.evaluation"
EXPLAIN_EXT = "org.cdsrules.explain"


@dataclass
class Evaluation:
    response: CdsResponse
    packs: list[tuple[LoadedPack, bool]]  # (pack, shadow)
    cards: list[tuple[Card, Finding]]
    shadow_cards: list[tuple[Card, Finding]] = field(default_factory=list)
    traces: list[RuleTrace] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    errors: list[RuleError] = field(default_factory=list)


def evaluate(
    ruleset: RuleSet,
    service: ServiceDefinition,
    *,
    hook: str,
    context: dict[str, Any],
    resources: Iterable[dict[str, Any]],
    now: datetime,
    locale: str,
    explain: bool = False,
    gaps: list[str] | None = None,
) -> Evaluation:
    resources = list(resources)
    drafts = context.get("draftOrders") if isinstance(context.get("draftOrders"), dict) else {}
    visible = resources + [e["resource"] for e in drafts.get("entry") or [] if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    ctx = ruleset.builder.build(hook=hook, context=context, resources=resources, now=now, gaps=gaps)
    facts = ctx.facts()
    findings: list[Finding] = []
    shadow_findings: list[Finding] = []
    traces: list[RuleTrace] = []
    packs: list[tuple[LoadedPack, bool]] = []
    skipped: list[dict[str, str]] = []
    errors: list[RuleError] = []
    for pin in service.packs:
        pack = ruleset.resolve(pin, now)
        if pack is None:
            skipped.append({"id": pin.id, "version": pin.version, "reason": "no active, effective version at this time"})
            continue
        packs.append((pack, pin.shadow))
        fs, ts = evaluate_pack(pack, facts, hook, shadow=pin.shadow, explain=explain, errors=errors, resources=visible)
        (shadow_findings if pin.shadow else findings).extend(fs)
        traces.extend(ts)

    raw = {m.ref: m.resource for m in ctx.all_meds() if m.ref}
    prov = ruleset.code_maps.provenance()
    cards = [(render_card(f, locale, raw, prov), f) for f in select(findings)]
    shadow_cards = [(render_card(f, locale, raw, prov), f) for f in select(shadow_findings)]

    ext: dict[str, Any] = {
        "packs": [pack.ref() | ({"shadow": True} if sh else {}) for pack, sh in packs if not sh],
        "locale": locale,
    }
    if skipped:
        ext["skipped"] = skipped
    if ctx.gaps:
        ext["dataGaps"] = ctx.gaps
    unidentified = [
        {"ref": m.ref or "(no id)", "display": m.display}
        for m in ctx.all_meds()
        if not m.identified
    ]
    if errors:
        ext["ruleErrors"] = [e.wire() for e in errors if not any(e.pack == p.key and sh for p, sh in packs)]
        if not ext["ruleErrors"]:
            del ext["ruleErrors"]
    if unidentified:
        ext["unidentifiedMedications"] = unidentified
    by_name = [m.ref or m.display for m in ctx.all_meds() if m.identified and any(i.via == "name" for i in m.ingredients)]
    if by_name:
        ext["identifiedByNameOnly"] = by_name
    extension: dict[str, Any] = {EVALUATION_EXT: ext}
    if explain:
        extension[EXPLAIN_EXT] = prune({"facts": _explain_facts(facts), "rules": [t.wire() for t in traces]})
    response = CdsResponse(cards=[c for c, _ in cards], extension=extension)
    return Evaluation(response, packs, cards, shadow_cards, traces, skipped, errors)


def _explain_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """A compact view of what the rules saw about the patient."""
    return {
        "patient": facts["patient"],
        "meds": {
            k: [
                {"ref": m["ref"], "name": m["name"], "atc": m["atc"], "rxnorm": m["rxnorm"], "via": m["via"], "dose": m["dose"]}
                for m in v
            ]
            for k, v in facts["meds"].items()
        },
        "conditions": facts["conditions"],
        "past_conditions": facts["past_conditions"],
        "episodes": facts["episodes"],
        "obs": {k: v[:1] for k, v in facts["obs"].items()},
        "gaps": facts["gaps"],
    }
