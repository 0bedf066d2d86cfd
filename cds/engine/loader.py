"""Load and validate a rule pack into compiled, indexed form.

Everything an author can get wrong is reported as a :class:`Problem` with file, line and column:
unknown keys, bad JSON Logic (checked by the engine itself), missing knowledge files, rows that
fail their schema, checksum drift, placeholders a template cannot fill, missing locale texts,
summaries that can exceed 140 characters, references to unknown cards/tables/columns/reasons.
A pack with any error is not loaded.
"""

from __future__ import annotations

import glob
import json
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import datalogic_py as dl

from cds.cards.templates import FILTERS, SUMMARY_TEXT, literal_length, placeholders
from cds.engine.functions import ARITY, ATC_LEVELS, TABLE_FUNCTIONS, RowHits, operators
from cds.engine.knowledge import KnowledgeCache, Table
from cds.engine.pack import CardsFile, CardTpl, Manifest, RuleDef, RulesFile
from cds.yamlio import Located, Problem, load_model, pointer_to_loc

# The shape of what rules can read: a dict maps names to their shapes; None = any value (a
# leaf, a list, or a map keyed by codes). Paths are checked at load, so `item.dose.mgg` or
# `patient.wieght` are errors instead of silent nulls.
Shape = dict[str, Any] | None
DOSE_SHAPE: Shape = {k: None for k in ("value", "unit", "mg", "mg_low", "per_day", "daily_mg", "max_daily_mg", "route", "as_needed", "problems")}
MED_FIELDS: Shape = {
    **{k: None for k in ("ref", "key", "status", "origin", "selected", "display", "name", "atc", "rxnorm", "via", "by_name", "identified", "problems")},
    "dose": DOSE_SHAPE,
}
COND_FIELDS: Shape = {k: None for k in ("icd10", "icpc2", "snomed", "display", "onset", "id", "status", "abatement")}
EPISODE_FIELDS: Shape = {k: None for k in ("id", "status", "codes", "display", "start", "end")}
PATIENT_SHAPE: Shape = {
    **{k: None for k in ("id", "sex", "birth_date", "age_days", "age_years", "age_months", "gestational_age_weeks", "postmenstrual_age_weeks")},
    "weight": {"kg": None, "date": None, "age_days": None},
    "height": {"cm": None, "date": None, "age_days": None},
}
ROOT_SHAPES: dict[str, Shape] = {
    "patient": PATIENT_SHAPE,
    "meds": {"active": None, "draft": None, "all": None, "focus": None},
    "encounter": {"id": None, "status": None, "class": None, "start": None},
}
FACT_ROOTS = {
    "extract", "now", "hook", "patient", "meds", "conditions", "past_conditions", "episodes", "procedures", "obs",
    "allergies", "encounter", "gaps",
}
SEVERITIES = {"info", "warning", "critical", "none"}
SUMMARY_MAX = 139
NUMBER_WIDTH = 12


@dataclass
class CompiledRule:
    defn: RuleDef
    index: int
    when: dl.Rule
    severity: dl.Rule
    lets: list[tuple[str, dl.Rule]]
    roots: set[str]
    card: CardTpl
    tables: list[Table]
    join: dict[str, list[int]] = field(default_factory=dict)
    pair_a: dict[str, list[int]] = field(default_factory=dict)
    pair_b: dict[str, list[int]] = field(default_factory=dict)
    suggestion_when: dict[str, dl.Rule] = field(default_factory=dict)
    guard: dl.Rule | None = None
    """The conjuncts of ``when`` that read no ``let``: checked first, so a candidate that cannot
    fire costs no ``let`` evaluations (lets are pure, so the outcome is the same)."""
    paths: dict[str, Any] = field(default_factory=dict)
    """Per expression (let names, "when", "severity", "guard"): the data paths it reads."""

    def __post_init__(self) -> None:
        from cds.engine.evaluate import paths_of

        exprs = {**{n: r for n, r in self.lets}, "when": self.when, "severity": self.severity}
        if self.guard is not None:
            exprs["guard"] = self.guard
        self.paths = {k: paths_of(r) for k, r in exprs.items()}

    @property
    def id(self) -> str:
        return self.defn.id


@dataclass
class LoadedPack:
    manifest: Manifest
    dir: Path
    content_hash: str
    rules: list[CompiledRule]
    cards: dict[str, CardTpl]
    tables: dict[str, Table]
    engine: dl.Engine
    test_files: list[Path]
    extracts: dict[str, tuple[str, Any]] = field(default_factory=dict)  # name → (resource type, compiled FHIRPath)
    row_hits: RowHits = field(default_factory=RowHits)  # rows matched by band/classify (pack tests only)
    shared_lets: dict[tuple[str, str], str] = field(default_factory=dict)
    """(rule id, let name) → the let's canonical expression, for lets whose expression occurs
    in more than one rule of the pack (a YAML anchor such as ``let: *padua``). Lets are pure, so
    within one evaluation of the pack a shared let computed from the same inputs is computed once."""

    def __post_init__(self) -> None:
        seen: dict[str, list[tuple[str, str]]] = {}
        for r in self.rules:
            for name, expr in r.defn.let.items():
                seen.setdefault(json.dumps(expr, sort_keys=True, default=str), []).append((r.id, name))
        self.shared_lets = {at: key for key, ats in seen.items() if len(ats) > 1 for at in ats}

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    def ref(self) -> dict[str, str]:
        return {"id": self.id, "version": self.version, "hash": self.content_hash}


def index_codes(rows: list[dict[str, Any]], column: str) -> dict[str, list[int]]:
    idx: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        v = r.get(column)
        for code in v if isinstance(v, list) else [v]:
            if isinstance(code, str) and code:
                idx.setdefault(code, []).append(i)
    return idx


def lookup_codes(idx: dict[str, list[int]], codes: list[str], key: str) -> list[int]:
    """Row indexes whose code matches any of ``codes``: ATC by hierarchy (the row's code is a
    prefix at an ATC level), others exactly. Cost grows with codes, not with rows."""
    hits: list[int] = []
    for c in codes:
        if key == "atc":
            for n in ATC_LEVELS:
                if n <= len(c):
                    hits.extend(idx.get(c[:n], ()))
        else:
            hits.extend(idx.get(c, ()))
    return sorted(set(hits))


def content_hash(pack_dir: Path, files: list[Path], tables: list[Table]) -> str:
    h = hashlib.sha256()
    for p in sorted(files):
        h.update(str(p.relative_to(pack_dir)).encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    for t in sorted(tables, key=lambda t: t.id):
        h.update(f"{t.id}@{t.sha256}".encode())
    return "sha256:" + h.hexdigest()


class _Ctx:
    def __init__(self, manifest_doc: Located) -> None:
        self.problems: list[Problem] = []
        self.manifest_doc = manifest_doc


def load_pack(pack_dir: Path, cache: KnowledgeCache) -> tuple[LoadedPack | None, list[Problem]]:
    mpath = pack_dir / "pack.yaml"
    mdoc, manifest, problems = load_model(mpath, Manifest)
    if mdoc is None or manifest is None:
        return None, problems

    # ---- knowledge tables
    tables: dict[str, Table] = {}
    failed_tables: set[str] = set()
    for i, ref in enumerate(manifest.knowledge):
        t, errs = cache.get(ref.table)
        if errs:
            problems.extend(errs)
        if t is None:
            failed_tables.add(ref.table)
            problems.append(mdoc.problem(["knowledge", i, "table"], f"knowledge table {ref.table!r} could not be loaded"))
            continue
        if t.release != ref.release:
            problems.append(mdoc.problem(["knowledge", i, "release"], f"pinned release {ref.release!r} but the table is release {t.release!r}"))
        if t.sha256 != ref.sha256:
            problems.append(
                mdoc.problem(["knowledge", i, "sha256"], f"checksum mismatch: the table's content is {t.sha256} (new content needs a new pack version)")
            )
        tables[ref.table] = t

    row_hits = RowHits()
    engine = dl.Engine(custom_operators=operators(tables, row_hits))
    files = [mpath]
    extracts: dict[str, tuple[str, Any]] = {}
    for name, ex in manifest.extract.items():
        fn, err = compile_fhirpath(ex.resource, ex.path)
        if fn is None:
            problems.append(mdoc.problem(["extract", name, "path"], f"FHIRPath: {err}"))
        else:
            extracts[name] = (ex.resource, fn)

    # ---- cards
    cards: dict[str, CardTpl] | None = {}
    cards_doc: Located | None = None
    cpath = pack_dir / manifest.cards
    cards_doc, cf, errs = load_model(cpath, CardsFile)
    problems.extend(errs)
    if cards_doc is not None:
        files.append(cpath)
    cards = cf.cards if cf is not None else None  # None: the cards file itself is broken

    reason_codes = {r.code for r in manifest.override_reasons}
    if cards_doc is not None and cards is not None:
        for cid, card in cards.items():
            for j, code in enumerate(card.override_reasons):
                if code not in reason_codes:
                    problems.append(cards_doc.problem(["cards", cid, "override_reasons", j], f"override reason {code!r} is not defined in pack.yaml"))
            for j, s in enumerate(card.suggestions):
                problems.extend(_check_logic(engine, s.when, cards_doc, ["cards", cid, "suggestions", j, "when"]))

    # ---- rules
    compiled: list[CompiledRule] = []
    seen_ids: dict[str, str] = {}
    ref_ids = {r.id for r in manifest.references}
    for rel in manifest.rules:
        rpath = pack_dir / rel
        rdoc, rf, errs = load_model(rpath, RulesFile)
        problems.extend(errs)
        if rdoc is None:
            continue
        files.append(rpath)
        if rf is None:
            continue
        for i, rule in enumerate(rf.rules):
            loc = ["rules", i]
            if rule.id in seen_ids:
                problems.append(rdoc.problem(loc + ["id"], f"duplicate rule id {rule.id!r}"))
                continue
            seen_ids[rule.id] = str(rpath)
            for j, r in enumerate(rule.references):
                if r not in ref_ids:
                    problems.append(rdoc.problem(loc + ["references", j], f"reference {r!r} is not listed in pack.yaml references"))
            cr, errs = _compile_rule(engine, rule, i, rdoc, tables, failed_tables, cards, cards_doc, set(manifest.extract))
            problems.extend(errs)
            if cr is not None:
                compiled.append(cr)

    test_files: list[Path] = []
    for pattern in manifest.tests:
        test_files.extend(Path(p) for p in sorted(glob.glob(str(pack_dir / pattern))))
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        return None, problems
    pack = LoadedPack(
        manifest=manifest,
        dir=pack_dir,
        content_hash=content_hash(pack_dir, files, list(tables.values())),
        rules=compiled,
        cards=cards or {},
        tables=tables,
        engine=engine,
        test_files=test_files,
        extracts=extracts,
        row_hits=row_hits,
    )
    return pack, problems


def compile_fhirpath(resource_type: str, path: str) -> tuple[Any, str | None]:
    """Compile once with the R4 model (without it, choice types such as Observation.value
    silently return nothing) and trial-run it, since fhirpathpy reports syntax errors only
    when an expression first runs."""
    import fhirpathpy
    from fhirpathpy.models import models

    try:
        fn = fhirpathpy.compile(path, model=models["r4"])
        fn({"resourceType": resource_type})
    except Exception as e:  # fhirpathpy raises several exception types for bad expressions
        return None, f"{type(e).__name__}: {e}"
    return fn, None


SCOPED = {"some": 1, "all": 1, "none": 1, "map": 1, "filter": 1, "reduce": 1}


def iter_vars(expr: Any, loc: tuple[Any, ...] = ()) -> Iterator[tuple[list[str], tuple[Any, ...]]]:
    """Every data path an expression reads with ``var``, with its location inside the expression.
    Arguments evaluated per element (``some``, ``all``, ``map`` …) read the element, not the
    rule's data, and are skipped."""
    if isinstance(expr, dict):
        for op, args in expr.items():
            here = loc + (op,)
            if op == "var":
                path = args[0] if isinstance(args, list) and args else args
                if isinstance(path, str) and path:
                    yield path.split("."), loc
                elif isinstance(path, (dict, list)):
                    yield from iter_vars(path, here)
                continue
            if isinstance(args, list):
                for i, a in enumerate(args):
                    if op in SCOPED and i >= SCOPED[op]:
                        continue
                    yield from iter_vars(a, here + (i,))
            else:
                yield from iter_vars(args, here)
    elif isinstance(expr, list):
        for i, a in enumerate(expr):
            yield from iter_vars(a, loc + (i,))


def _arity_problems(expr: Any, loc: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    if isinstance(expr, dict):
        for op, args in expr.items():
            if op in ARITY:
                lo, hi = ARITY[op]
                n = len(args) if isinstance(args, list) else 1
                if not lo <= n <= hi:
                    want = f"{lo}" if lo == hi else f"{lo} to {hi}"
                    yield loc, f"JSON Logic: engine function `{op}` takes {want} arguments, not {n}"
            for i, a in enumerate(args if isinstance(args, list) else [args]):
                yield from _arity_problems(a, loc + ((op, i) if isinstance(args, list) else (op,)))
    elif isinstance(expr, list):
        for i, a in enumerate(expr):
            yield from _arity_problems(a, loc + (i,))


def _band_tables(expr: Any, loc: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any, str]]:
    if isinstance(expr, dict):
        for op, args in expr.items():
            if op in TABLE_FUNCTIONS and isinstance(args, list) and args and not isinstance(args[0], (dict, list)):
                yield loc + (op, 0), args[0], op
            for i, a in enumerate(args if isinstance(args, list) else [args]):
                yield from _band_tables(a, loc + ((op, i) if isinstance(args, list) else (op,)))
    elif isinstance(expr, list):
        for i, a in enumerate(expr):
            yield from _band_tables(a, loc + (i,))


def _check_logic(engine: dl.Engine, logic: Any, doc: Located, loc: list[Any]) -> list[Problem]:
    if isinstance(logic, (bool, int, float, str)) or logic is None:
        return []
    out = []
    for d in engine.check(logic):
        if d["severity"] != "error":
            continue
        out.append(doc.problem(loc + pointer_to_loc(d["pointer"]), f"JSON Logic: {d['message']}"))
    for where, msg in _arity_problems(logic):
        out.append(doc.problem(loc + _flat(where), msg))
    return out


def _flat(loc: tuple[Any, ...]) -> list[Any]:
    out: list[Any] = []
    for part in loc:
        if isinstance(part, tuple):
            out.extend(part)
        else:
            out.append(part)
    return out


def _compile_rule(
    engine: dl.Engine,
    rule: RuleDef,
    index: int,
    doc: Located,
    tables: dict[str, Table],
    failed_tables: set[str],
    cards: dict[str, CardTpl] | None,
    cards_doc: Located | None,
    extract_names: set[str] | None = None,
) -> tuple[CompiledRule | None, list[Problem]]:
    loc: list[Any] = ["rules", index]
    problems: list[Problem] = []

    # bindings this rule provides, and what each exposes
    bindings: dict[str, Shape] = {r: ROOT_SHAPES.get(r) for r in FACT_ROOTS}
    bindings["let"] = {k: None for k in rule.let}
    bindings["extract"] = {k: None for k in extract_names or ()}
    used_tables: list[Table] = []
    join: dict[str, list[int]] = {}
    pair_a: dict[str, list[int]] = {}
    pair_b: dict[str, list[int]] = {}
    if rule.for_each:
        bindings["item"] = {"conditions": COND_FIELDS, "past_conditions": COND_FIELDS, "episodes": EPISODE_FIELDS}.get(rule.for_each, MED_FIELDS)
    broken = False  # the rule depends on something already reported as broken: report nothing more
    if rule.table:
        t = tables.get(rule.table.table)
        if t is None and rule.table.table in failed_tables:
            broken = True
            bindings["row"] = None
        elif t is None:
            problems.append(doc.problem(loc + ["table", "table"], f"table {rule.table.table!r} is not declared in pack.yaml knowledge"))
        elif rule.table.column not in t.meta.columns:
            problems.append(doc.problem(loc + ["table", "column"], f"table {t.id!r} has no column {rule.table.column!r}"))
        else:
            used_tables.append(t)
            bindings["row"] = {c: None for c in t.meta.columns}
            join = index_codes(t.rows, rule.table.column)
    if rule.pair:
        t = tables.get(rule.pair.table)
        if t is None and rule.pair.table in failed_tables:
            broken = True
            bindings.update(row=None, a=MED_FIELDS, b=MED_FIELDS)
        elif t is None:
            problems.append(doc.problem(loc + ["pair", "table"], f"table {rule.pair.table!r} is not declared in pack.yaml knowledge"))
        else:
            for side in ("a", "b"):
                col = getattr(rule.pair, side)
                if col not in t.meta.columns:
                    problems.append(doc.problem(loc + ["pair", side], f"table {t.id!r} has no column {col!r}"))
            if not problems:
                used_tables.append(t)
                bindings["row"] = {c: None for c in t.meta.columns}
                bindings["a"] = MED_FIELDS
                bindings["b"] = MED_FIELDS
                pair_a = index_codes(t.rows, rule.pair.a)
                pair_b = index_codes(t.rows, rule.pair.b)

    def compile_expr(expr: Any, where: list[Any]) -> dl.Rule | None:
        if isinstance(expr, str):
            expr = json.dumps(expr)  # datalogic reads a Python str as JSON text
        errs = _check_logic(engine, expr, doc, where)
        if errs:
            problems.extend(errs)
            return None
        try:
            r = engine.compile(expr)
        except dl.DataLogicError as e:
            problems.append(doc.problem(where, f"JSON Logic: {e}"))
            return None
        if not isinstance(expr, str):
            for path, at in iter_vars(expr):
                _check_path(path, bindings, doc, where + list(at), problems)
            for at, tid, fn in _band_tables(expr):
                if tid not in tables:
                    problems.append(doc.problem(where + list(at), f"{fn}: table {tid!r} is not declared in pack.yaml knowledge"))
                elif not set(TABLE_FUNCTIONS[fn]) <= set(tables[tid].meta.columns):
                    problems.append(doc.problem(where + list(at), f"{fn}: table {tid!r} needs the columns {', '.join(TABLE_FUNCTIONS[fn])}"))
        return r

    lets: list[tuple[str, dl.Rule]] = []
    for name, expr in rule.let.items():
        r = compile_expr(expr, loc + ["let", name])
        if r is not None:
            lets.append((name, r))
    when = compile_expr(rule.when, loc + ["when"])
    severity = compile_expr(rule.severity, loc + ["severity"])
    if isinstance(rule.severity, str) and rule.severity not in SEVERITIES:
        problems.append(doc.problem(loc + ["severity"], f"severity must be one of {sorted(SEVERITIES)} or JSON Logic giving one"))

    card = cards.get(rule.card) if cards is not None else None
    if card is None and cards is not None:
        problems.append(doc.problem(loc + ["card"], f"card {rule.card!r} is not defined in the pack's cards file"))
    elif card is not None and cards_doc is not None:
        problems.extend(_check_card(rule, card, bindings, used_tables, cards_doc))
        for j, sug in enumerate(card.suggestions):
            for path, at in iter_vars(sug.when):
                before = len(problems)
                _check_path(path, bindings, cards_doc, ["cards", rule.card, "suggestions", j, "when", *at], problems)
                for p in problems[before:]:
                    object.__setattr__(p, "message", f"{p.message} (card used by rule {rule.id!r})")
    if rule.dedupe:
        for path, _ in placeholders(rule.dedupe):
            _check_path(path.split("."), bindings, doc, loc + ["dedupe"], problems)

    suggestion_when: dict[str, dl.Rule] = {}
    if card is not None:
        for s in card.suggestions:
            if s.when is not True:
                try:
                    suggestion_when[s.id] = engine.compile(json.dumps(s.when) if isinstance(s.when, str) else s.when)
                except dl.DataLogicError:
                    pass  # reported by the cards check

    if broken:
        return None, []
    if problems or when is None or severity is None or card is None:
        return None, problems
    guard = None
    if rule.let and isinstance(rule.when, dict) and list(rule.when) == ["and"] and isinstance(rule.when["and"], list):
        free = [c for c in rule.when["and"] if not any(p[0] == "let" for p, _ in iter_vars(c))]
        if free and len(free) < len(rule.when["and"]):
            guard = engine.compile({"and": free})
    roots = set()
    for r in [when, severity, *(x for _, x in lets), *suggestion_when.values()]:
        roots.update(p[0] for p in r.facts()["reads"] if p)
    for path, _ in _card_placeholders(card):
        roots.add(path.split(".")[0])
    roots &= FACT_ROOTS
    return (
        CompiledRule(rule, index, when, severity, lets, roots, card, used_tables, join, pair_a, pair_b, suggestion_when, guard),
        problems,
    )


def _check_path(path: list[str], bindings: dict[str, Shape], doc: Located, where: list[Any], problems: list[Problem]) -> None:
    if not path:
        return
    root = path[0]
    if root not in bindings:
        avail = ", ".join(sorted(bindings))
        problems.append(doc.problem(where, f"{'.'.join(path)!r}: unknown name {root!r} here (available: {avail})"))
        return
    shape = bindings[root]
    for i, part in enumerate(path[1:], start=1):
        if shape is None:
            return
        if part not in shape:
            owner = ".".join(path[:i])
            problems.append(doc.problem(where, f"{'.'.join(path)!r}: {owner} has no field {part!r} (has: {', '.join(sorted(shape))})"))
            return
        shape = shape[part]


def _strings(v: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    if isinstance(v, str):
        yield at, v
    elif isinstance(v, dict):
        for k, x in v.items():
            yield from _strings(x, at + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _strings(x, at + (i,))


def _card_placeholders(card: CardTpl) -> list[tuple[str, str | None]]:
    return placeholders(card.model_dump(mode="json", exclude={"override_reasons"}))


def _check_card(
    rule: RuleDef, card: CardTpl, bindings: dict[str, Shape], tables: list[Table], doc: Located
) -> list[Problem]:
    problems: list[Problem] = []
    cloc: list[Any] = ["cards", rule.card]
    for at, text in _strings(card.model_dump(mode="json", exclude={"override_reasons"}, exclude_defaults=True)):
        for path, flt in placeholders(text):
            _check_path(path.split("."), bindings, doc, cloc + list(at), problems)
            if flt is not None and flt not in FILTERS:
                problems.append(doc.problem(cloc + list(at), f"unknown filter {flt!r} in {{{{ {path} | {flt} }}}} (filters: {', '.join(sorted(FILTERS))})"))
    for p in problems:
        object.__setattr__(p, "message", f"{p.message} (card used by rule {rule.id!r})")
    # worst-case summary length per locale
    for locale in ("nb", "en"):
        text = card.summary.get(locale)
        worst = literal_length(text)
        for path, flt in placeholders(text):
            parts = path.split(".")
            if parts[0] == "row" and len(parts) == 2 and tables:
                width = max(min(t.column_max_len(parts[1]), SUMMARY_TEXT) for t in tables)
            elif flt and flt.startswith("round") or parts[0] in ("let",) or parts[-1] in ("kg", "mg", "value", "age_days", "age_years"):
                width = NUMBER_WIDTH
            elif flt == "date":
                width = 10
            else:
                width = SUMMARY_TEXT
            worst += width
        if worst > SUMMARY_MAX:
            problems.append(
                doc.problem(cloc + ["summary", locale], f"summary ({locale}) can reach {worst} characters; the limit is {SUMMARY_MAX} (CDS Hooks: < 140)")
            )
    return problems
