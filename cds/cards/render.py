"""Findings → localised CDS Hooks cards with provenance; de-duplicated and ordered by urgency."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from cds.cards.templates import SUMMARY_TEXT, render_text, render_value
from cds.engine.evaluate import Finding
from cds.engine.pack import CardTpl
from cds.hooks.models import REL_REF, Action, Card, Coding, Link, Source, Suggestion, prune

PROVENANCE = "org.cdsrules.provenance"
URGENCY = {"critical": 0, "warning": 1, "info": 2}


def _set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node: Any = obj
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        key: Any = part
        m = part.endswith("]") and "[" in part
        if m:
            name, idx = part[:-1].split("[")
            node = node.setdefault(name, [])
            k = int(idx)
            while len(node) <= k:
                node.append({})
            if last:
                node[k] = value
                return
            node = node[k]
            continue
        if last:
            node[key] = value
        else:
            node = node.setdefault(key, {})


def render_card(f: Finding, locale: str, resources: dict[str, dict[str, Any]], code_map_prov: list[dict[str, str]]) -> Card:
    tpl: CardTpl = f.rule.card
    data = f.data
    pack = f.pack
    summary = render_text(tpl.summary.get(locale), data, locale, SUMMARY_TEXT)
    if len(summary) > 139:  # load-time validation makes this unreachable for bundled packs
        summary = summary[:138] + "…"
    label = tpl.source.label if isinstance(tpl.source.label, str) else tpl.source.label.get(locale)
    source = Source(
        label=render_text(label, data, locale),
        url=render_text(tpl.source.url, data, locale) if tpl.source.url else None,
        icon=tpl.source.icon,
    )
    suggestions: list[Suggestion] = []
    for s in tpl.suggestions:
        cond = f.rule.suggestion_when.get(s.id)
        if cond is not None and not pack.engine.truthy(cond.evaluate(data)):
            continue
        actions: list[Action] = []
        ok = True
        for a in s.actions:
            desc = render_text(a.description.get(locale), data, locale)
            if a.type == "delete":
                rid = render_text(a.resource_id or "", data, locale)
                if not REL_REF.match(rid):
                    ok = False
                    break
                actions.append(Action(type="delete", description=desc, resourceId=rid))
            elif a.patch is not None:
                base_name = str(a.patch.get("from", "item"))
                base = data.get(base_name) or {}
                original = resources.get(base.get("ref") or "")
                if original is None:
                    ok = False
                    break
                res = copy.deepcopy(original)
                for path, val in (a.patch.get("set") or {}).items():
                    v = render_value(val, data, locale)
                    if v is None:
                        ok = False
                    _set_path(res, path, v)
                if not ok:
                    break
                actions.append(Action(type="update", description=desc, resource=prune(res)))
            else:
                res = prune(render_value(a.resource, data, locale))
                if not isinstance(res, dict) or "resourceType" not in res:
                    ok = False
                    break
                actions.append(Action(type=a.type, description=desc, resource=res))
        if not ok:
            continue  # a suggestion we cannot make exactly is not made at all
        suggestions.append(
            Suggestion(
                label=render_text(s.label.get(locale), data, locale),
                uuid=str(uuid.uuid4()),
                isRecommended=True if s.recommended else None,
                actions=actions or None,
            )
        )
    reasons = {r.code: r for r in pack.manifest.override_reasons}
    override = [
        Coding(
            system=reasons[c].system or pack.manifest.override_reason_system,
            code=c,
            display=reasons[c].display.get(locale),
        )
        for c in tpl.override_reasons
    ]
    links = [
        Link(
            label=l.label.get(locale),
            url=render_text(l.url, data, locale),
            type=l.type,
            appContext=l.app_context,
        )
        for l in tpl.links
    ]
    knowledge = [t.provenance() for t in f.rule.tables]
    if any(m.get("via") and set(m["via"]) & {"rxnorm-in", "rxnorm-product", "name"} for m in _meds(data)):
        knowledge += code_map_prov
    prov: dict[str, Any] = {
        "rule": f.rule.id,
        "pack": pack.id,
        "packVersion": pack.version,
        "packHash": pack.content_hash,
        "knowledge": knowledge,
    }
    if f.row_line is not None and f.rule.tables:
        prov["row"] = {"table": f.rule.tables[0].id, "line": f.row_line}
        rid = data.get("row", {}).get("id")
        if rid:
            prov["row"]["id"] = rid
    subjects = [r for r in f.refs if "/" in r]
    if subjects:
        prov["subjects"] = subjects
    return Card(
        uuid=str(uuid.uuid4()),
        summary=summary,
        detail=render_text(tpl.detail.get(locale), data, locale) if tpl.detail else None,
        indicator=f.severity,  # type: ignore[arg-type]
        source=source,
        suggestions=suggestions or None,
        selectionBehavior=tpl.selection_behavior if suggestions else None,
        overrideReasons=override or None,
        links=links or None,
        extension={PROVENANCE: prov},
    )


def _meds(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for k in ("item", "a", "b") if isinstance(v := data.get(k), dict)]


def dedupe_key(f: Finding) -> str:
    if f.rule.defn.dedupe:
        return render_text(f.rule.defn.dedupe, f.data, "en")
    subjects = [
        v.get("ref") or v.get("key") or f"#{id(v)}"  # never merge two different unnamed items
        for k in ("item", "a", "b")
        if isinstance(v := f.data.get(k), dict)
    ]
    return f"{f.pack.id}:{f.rule.id}:{'|'.join(sorted(subjects))}:{f.row_line}"


def select(findings: list[Finding]) -> list[Finding]:
    """De-duplicate (keep the most urgent per key) and order by urgency, then pack and rule order."""
    best: dict[str, Finding] = {}
    order: list[str] = []
    for f in findings:
        k = dedupe_key(f)
        if k not in best:
            best[k] = f
            order.append(k)
        elif URGENCY[f.severity] < URGENCY[best[k].severity]:
            best[k] = f
    chosen = [best[k] for k in order]
    return sorted(chosen, key=lambda f: URGENCY[f.severity])  # stable: keeps pack/rule order
