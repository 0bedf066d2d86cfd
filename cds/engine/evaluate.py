"""Evaluate compiled packs against a patient's facts → findings (+ an explain trace).

Candidate generation is index-driven: a table rule looks up only the rows whose codes match
the item's codes; a pair rule looks up rows for each focus drug and then checks the other
drugs against the row's other column. Each candidate's data holds only the fact roots the
rule reads, so evaluation cost does not grow with the size of the patient record either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import datalogic_py as dl
import orjson

from cds.engine.functions import OPERATOR_NAMES, atc_in
from cds.engine.loader import CompiledRule, LoadedPack, lookup_codes

Bindings = dict[str, Any]


@dataclass
class Finding:
    pack: LoadedPack
    rule: CompiledRule
    severity: str  # info | warning | critical
    data: dict[str, Any]  # everything the card templates may use
    row_line: int | None
    shadow: bool = False

    @property
    def refs(self) -> list[str]:
        out = []
        for k in ("item", "a", "b"):
            v = self.data.get(k)
            if isinstance(v, dict) and (v.get("ref") or v.get("key")):
                out.append(v.get("ref") or v["key"])
        return out


@dataclass
class RuleTrace:
    rule: str
    pack: str
    candidates: int = 0
    fired: int = 0
    evaluations: list[dict[str, Any]] = field(default_factory=list)

    def wire(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "pack": self.pack,
            "candidates": self.candidates,
            "fired": self.fired,
            "evaluations": self.evaluations,
        }


def _codes(med: dict[str, Any], key: str) -> list[str]:
    return list(med.get(key) or [])


def _matches(med: dict[str, Any], row_codes: Any, key: str) -> bool:
    codes = row_codes if isinstance(row_codes, list) else [row_codes]
    if key == "atc":
        return atc_in(med.get("atc"), codes)
    return bool(set(_codes(med, key)) & {c for c in codes if isinstance(c, str)})


def _same_substance(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(set(a.get("atc") or []) & set(b.get("atc") or [])) or bool(
        set(a.get("rxnorm") or []) & set(b.get("rxnorm") or [])
    )


def _collection(facts: dict[str, Any], name: str) -> list[dict[str, Any]]:
    if name in ("conditions", "past_conditions", "episodes"):
        return list(facts.get(name) or [])
    meds = facts.get("meds") or {}
    if name == "meds.all":
        return list(meds.get("active") or []) + list(meds.get("draft") or [])
    return list(meds.get(name.split(".", 1)[1]) or [])


def candidates(rule: CompiledRule, facts: dict[str, Any]) -> Iterator[tuple[Bindings, int | None]]:
    d = rule.defn
    if d.pair:
        p = d.pair
        table = rule.tables[0]
        focus = _collection(facts, "meds.focus")
        other = _collection(facts, p.other)
        seen: set[tuple[int, frozenset[str]]] = set()
        for x in focus:
            sides = [("a", rule.pair_a, p.b)]
            if p.symmetric:
                sides.append(("b", rule.pair_b, p.a))
            for side, idx, other_col in sides:
                for ri in lookup_codes(idx, _codes(x, p.key), p.key):
                    row = table.rows[ri]
                    for y in other:
                        if y is x or (y.get("key") and y.get("key") == x.get("key")) or _same_substance(x, y):
                            continue
                        if not _matches(y, row.get(other_col), p.key):
                            continue
                        key = (ri, frozenset((x.get("key") or str(id(x)), y.get("key") or str(id(y)))))
                        if key in seen:
                            continue
                        seen.add(key)
                        a, b = (x, y) if side == "a" else (y, x)
                        yield {"row": row, "a": a, "b": b}, table.lines[ri]
        return
    if d.for_each:
        items = _collection(facts, d.for_each)
        if d.table:
            table = rule.tables[0]
            key = d.table.key
            for item in items:
                if key == "code":
                    codes = [c for k in ("icd10", "icpc2", "snomed") for c in item.get(k) or []]
                    codes = codes + [c.replace(".", "")[:n] for c in codes for n in range(3, len(c.replace(".", "")))]
                    hits = lookup_codes(rule.join, codes, "code")
                else:
                    hits = lookup_codes(rule.join, _codes(item, key), key)
                for ri in hits:
                    yield {"item": item, "row": table.rows[ri]}, table.lines[ri]
        else:
            for item in items:
                yield {"item": item}, None
        return
    yield {}, None


Paths = tuple[tuple[str, ...], ...] | None


def paths_of(expr: dl.Rule) -> Paths:
    """The data paths an expression reads, or None when it may read anything (computed reads,
    or the whole data)."""
    f = expr.facts()
    # Our engine functions see only their evaluated arguments, never the data, so they do not
    # make the reads incomplete (datalogic must assume a custom operator could read anything).
    complete = f["reads_complete"] or set(f["custom_operators"]) <= set(OPERATOR_NAMES)
    if not complete or f["computed_reads"] or any(len(p) == 0 for p in f["reads"]):
        return None
    return tuple(tuple(p) for p in f["reads"])


def slice_data(data: dict[str, Any], paths: Paths) -> dict[str, Any]:
    """Only what an expression reads: the engine converts its input on every call, so passing
    three numbers instead of a whole medication list is most of the evaluation cost saved."""
    if paths is None:
        return data
    out: dict[str, Any] = {}
    for path in paths:
        src: Any = data
        dst = out
        for i, part in enumerate(path):
            if not isinstance(src, dict) or part not in src:
                break
            val = src[part]
            if i == len(path) - 1 or not isinstance(val, dict):
                dst[part] = val  # a leaf, a list or the end of the path: the whole value
                break
            have = dst.get(part)
            if have is val:
                break  # already copied whole by a shorter path
            if not isinstance(have, dict):
                have = dst[part] = {}
            dst, src = have, val
    return out


def _summarise(b: Bindings, line: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in ("item", "a", "b"):
        v = b.get(k)
        if isinstance(v, dict):
            out[k] = v.get("ref") or v.get("name") or v.get("display") or v.get("id")
    if "row" in b:
        out["row"] = {"line": line, **{k: v for k, v in b["row"].items() if k in ("id", "pair_id", "drug", "parameter")}}
    return out


@dataclass
class RuleError:
    """A rule whose expressions failed at run time (e.g. comparing an object with a number).
    It does not fire; the error is reported (response extension, log, ``cds test`` fails)."""

    rule: str
    pack: str
    message: str
    subject: dict[str, Any]

    def wire(self) -> dict[str, Any]:
        return {"rule": self.rule, "pack": self.pack, "message": self.message, **({"subject": self.subject} if self.subject else {})}


def evaluate_pack(
    pack: LoadedPack,
    facts: dict[str, Any],
    hook: str,
    *,
    shadow: bool = False,
    explain: bool = False,
    errors: list[RuleError] | None = None,
    resources: list[dict[str, Any]] | None = None,
) -> tuple[list[Finding], list[RuleTrace]]:
    findings: list[Finding] = []
    traces: list[RuleTrace] = []
    if pack.extracts:
        facts = {**facts, "extract": extract_values(pack, resources or [])}
    truthy = pack.engine.truthy
    # shared lets (the same expression in several rules): one result per distinct input
    memo: dict[tuple[str, bytes], Any] = {}
    shared = pack.shared_lets
    for rule in pack.rules:
        if hook not in rule.defn.hooks:
            continue
        trace = RuleTrace(rule.id, pack.key) if explain else None
        base = {r: facts.get(r) for r in rule.roots}
        for binds, line in candidates(rule, facts):
            data = dict(base)
            data.update(binds)
            lets: dict[str, Any] = {}
            data["let"] = lets
            try:
                if rule.guard is not None and not truthy(rule.guard.evaluate(slice_data(data, rule.paths["guard"]))):
                    if trace is not None:
                        trace.candidates += 1
                        trace.evaluations.append({**_summarise(binds, line), "when": False, "guard": False, "fired": False, "reads": _reads(rule, data)})
                    continue
                for name, expr in rule.lets:
                    arg = slice_data(data, rule.paths[name])
                    key = shared.get((rule.id, name))
                    if key is None:
                        lets[name] = expr.evaluate(arg)
                        continue
                    try:
                        mk = (key, orjson.dumps(arg, option=orjson.OPT_SORT_KEYS))
                    except TypeError:  # not JSON data: computed, not memoised
                        lets[name] = expr.evaluate(arg)
                        continue
                    if mk in memo:
                        lets[name] = memo[mk]
                    else:
                        lets[name] = memo[mk] = expr.evaluate(arg)
                fired = truthy(rule.when.evaluate(slice_data(data, rule.paths["when"])))
                sev = rule.severity.evaluate(slice_data(data, rule.paths["severity"])) if fired else None
            except dl.DataLogicError as e:
                if errors is not None:
                    errors.append(RuleError(rule.id, pack.key, str(e), _summarise(binds, line)))
                if trace is not None:
                    trace.candidates += 1
                    trace.evaluations.append({**_summarise(binds, line), "error": str(e), "fired": False})
                continue
            if sev not in ("info", "warning", "critical", "none"):
                sev = "none" if not fired else "warning"  # unknown severity: fail safe, visible
            if trace is not None:
                trace.candidates += 1
                trace.evaluations.append(
                    {
                        **_summarise(binds, line),
                        "let": dict(lets),
                        "when": fired,
                        "severity": sev,
                        "fired": bool(fired and sev != "none"),
                        "reads": _reads(rule, data),
                    }
                )
            if fired and sev != "none":
                if trace is not None:
                    trace.fired += 1
                findings.append(Finding(pack, rule, sev, data, line, shadow))
        if trace is not None:
            traces.append(trace)
    return findings, traces


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    try:
        return float(v) if hasattr(v, "as_integer_ratio") else str(v)
    except (TypeError, ValueError):
        return str(v)


def extract_values(pack: LoadedPack, resources: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The pack's FHIRPath extracts over the patient's resources (a failing expression on a
    malformed resource yields nothing for that resource, never an exception)."""
    out: dict[str, list[Any]] = {}
    for name, (rtype, fn) in pack.extracts.items():
        vals: list[Any] = []
        for r in resources:
            if isinstance(r, dict) and r.get("resourceType") == rtype:
                try:
                    vals.extend(_jsonable(x) for x in fn(r))
                except Exception:  # noqa: BLE001 - client data of any shape
                    continue
        out[name] = vals
    return out


def _reads(rule: CompiledRule, data: dict[str, Any]) -> dict[str, Any]:
    """The values the rule's expressions read (for explain): path → value."""
    out: dict[str, Any] = {}
    exprs = [rule.when, rule.severity, *(r for _, r in rule.lets)]
    for e in exprs:
        for path in e.facts()["reads"]:
            if path and path[0] == "let":
                continue  # shown with the let values
            node: Any = data
            for part in path:
                if isinstance(node, dict):
                    node = node.get(part)
                elif isinstance(node, list) and str(part).isdigit() and int(part) < len(node):
                    node = node[int(part)]
                else:
                    node = None
                    break
            if isinstance(node, (dict, list)) and len(str(node)) > 300:
                node = f"<{type(node).__name__} of {len(node)}>"
            out[".".join(map(str, path))] = node
    return out
