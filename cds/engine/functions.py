"""Named engine functions: JSON Logic operators for what plain JSON Logic cannot say cleanly.

Each function takes the operator's evaluated arguments (a JSON array) and returns JSON. They
are pure, never raise on odd input (they return ``null`` instead, which rules treat as
"unknown"), and are documented for authors in docs/authoring.md ("Engine functions").
"""

from __future__ import annotations

import orjson
import math
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation, ROUND_FLOOR
from typing import Any, Callable

from cds.engine.knowledge import Table

ATC_LEVELS = (1, 3, 4, 5, 7)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def atc_in(codes: Any, classes: Any) -> bool:
    """True when any ATC code is within any of the classes (ATC hierarchy: N06AA ⊇ N06AA09)."""
    cs = [c for c in _as_list(codes) if isinstance(c, str)]
    ks = [k for k in _as_list(classes) if isinstance(k, str) and k]
    return any(c.startswith(k) for c in cs for k in ks)


def _matching_meds(meds: Any, classes: Any, except_key: Any = None) -> list[dict[str, Any]]:
    return [
        m for m in _as_list(meds)
        if isinstance(m, dict) and atc_in(m.get("atc"), classes) and (except_key is None or m.get("key") != except_key)
    ]


def any_med_in(meds: Any, classes: Any, except_key: Any = None) -> bool:
    """True when any medication of the list (e.g. meds.all) has an ATC code in the classes,
    optionally leaving out the medication with key ``except_key`` (e.g. the one being checked)."""
    return bool(_matching_meds(meds, classes, except_key))


def meds_in(meds: Any, classes: Any, except_key: Any = None) -> list[str]:
    """Names of the medications of the list with an ATC code in the classes (for card text)."""
    return [str(m.get("name") or m.get("display") or "?") for m in _matching_meds(meds, classes, except_key)]


def pair_key(a: Any, b: Any) -> str:
    """The same key for (a, b) and (b, a): one card per pair, whichever drug came first."""
    x, y = str(a), str(b)
    return f"{x}|{y}" if x <= y else f"{y}|{x}"


def has_condition(conditions: Any, system: Any, prefixes: Any) -> bool:
    """True when any condition has a code in ``system`` (icd10|icpc2|snomed) starting with a prefix
    (ICD-10 A41 matches A41.9; SNOMED codes must match exactly — pass whole codes)."""
    if not isinstance(system, str):
        return False
    ps = [p for p in _as_list(prefixes) if isinstance(p, str) and p]
    for c in _as_list(conditions):
        if not isinstance(c, dict):
            continue
        for code in _as_list(c.get(system)):
            if not isinstance(code, str):
                continue
            for p in ps:
                if code == p if system == "snomed" else code.replace(".", "").startswith(p.replace(".", "")):
                    return True
    return False


def _parse(v: Any) -> datetime | None:
    """ISO date or date-time → aware UTC datetime (a date, or a time without offset, is UTC)."""
    if not isinstance(v, str):
        return None
    try:
        if len(v) == 10:
            return datetime.combine(date.fromisoformat(v), datetime.min.time(), tzinfo=timezone.utc)
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt.astimezone(timezone.utc) if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def days_between(a: Any, b: Any) -> float | None:
    """Calendar days from date/time ``a`` to ``b`` (whole days between the dates)."""
    da, db = _parse(a), _parse(b)
    if da is None or db is None:
        return None
    return float((db.date() - da.date()).days)


def add_days(a: Any, n: Any) -> str | None:
    """The calendar date (YYYY-MM-DD, UTC) ``n`` whole days after date/time ``a`` (before, when
    ``n`` is negative); null when ``a`` is not a date/time or ``n`` is not a whole number."""
    da = _parse(a)
    if da is None or isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) or n != int(n):
        return None
    try:
        return (da.date() + timedelta(days=int(n))).isoformat()
    except OverflowError:
        return None


def hours_between(a: Any, b: Any) -> float | None:
    da, db = _parse(a), _parse(b)
    if da is None or db is None:
        return None
    return round((db - da).total_seconds() / 3600, 3)


def first_coded(items: Any, codes: Any, not_before: Any = None) -> str | None:
    """The earliest ``time`` of the items (e.g. procedures) that carry any of the codes
    ("system|code" strings, as facts give them), counting only items on or after the calendar
    day of ``not_before`` when given; null when there is none."""
    wanted = {c for c in _as_list(codes) if isinstance(c, str) and c}
    floor = _parse(not_before)
    if not_before is not None and floor is None:
        return None
    best: tuple[datetime, str] | None = None
    for it in _as_list(items):
        if not isinstance(it, dict) or not wanted & {c for c in _as_list(it.get("codes")) if isinstance(c, str)}:
            continue
        t = _parse(it.get("time"))
        if t is None or (floor is not None and t.date() < floor.date()):
            continue
        if best is None or t < best[0]:
            best = (t, str(it.get("time")))
    return best[1] if best else None


def latest(observations: Any, max_age_hours: Any = None) -> Any:
    """The most recent observation of a list (newest first, as the context gives them), if it is
    no older than ``max_age_hours``; else null."""
    lst = _as_list(observations)
    limit = _num(max_age_hours)
    for o in lst:
        if not isinstance(o, dict):
            continue
        age = _num(o.get("age_hours"))
        if limit is not None and (age is None or age > limit):
            return None
        return o
    return None


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def per_kg(amount: Any, kg: Any) -> float | None:
    a, w = _num(amount), _num(kg)
    if a is None or w is None or w <= 0:
        return None
    return _finite(a / w)


def round_down(value: Any, step: Any) -> float | None:
    """Largest multiple of ``step`` not above ``value`` (doses are never rounded up). Exact
    decimal arithmetic on the numbers as written: 0.3 with step 0.1 is 0.3, never 0.2 or 0.4."""
    v, s = _num(value), _num(step)
    if v is None or s is None or s <= 0:
        return None
    try:
        dv, ds = Decimal(repr(v)), Decimal(repr(s))
        result = (dv / ds).to_integral_value(rounding=ROUND_FLOOR) * ds
    except (InvalidOperation, ArithmeticError):
        return None
    f = float(result)
    if not math.isfinite(f):
        return None
    while f > v:  # float conversion must not round the result above the value
        f = math.nextafter(f, -math.inf)
    return f


def _numbers(values: tuple[Any, ...]) -> list[float]:
    flat: list[Any] = []
    for v in values:
        flat.extend(v if isinstance(v, list) else [v])
    return [n for n in (_num(x) for x in flat) if n is not None]


def least(*values: Any) -> float | None:
    """The smallest of the values that exist (nulls and non-numbers are skipped); null if none.
    For "the tightest of these limits" where some limits do not apply."""
    nums = _numbers(values)
    return min(nums) if nums else None


def greatest(*values: Any) -> float | None:
    """The largest of the values that exist; null if none."""
    nums = _numbers(values)
    return max(nums) if nums else None


def ratio(a: Any, b: Any) -> float | None:
    x, y = _num(a), _num(b)
    if x is None or y is None or y == 0:
        return None
    return _finite(x / y)


class RowHits:
    """Records which knowledge rows the table functions matched — switched on only while pack
    tests run (for row coverage); in production ``active`` stays None and costs nothing."""

    def __init__(self) -> None:
        self.active: set[tuple[str, int]] | None = None

    def add(self, table_id: str, line: int) -> None:
        if self.active is not None:
            self.active.add((table_id, line))


BandIndex = dict[Any, list[tuple[float | None, float | None, Any, int]]]


def band_index(table: Table) -> BandIndex:
    """Rows of a banded table grouped by parameter, in table order (built once at load)."""
    idx: BandIndex = {}
    lines = table.lines or list(range(2, len(table.rows) + 2))
    for r, line in zip(table.rows, lines):
        idx.setdefault(r.get("parameter"), []).append((_num(r.get("low")), _num(r.get("high")), r.get("points"), line))
    return idx


def band(table: Table | BandIndex | None, key: Any, value: Any, hit: Callable[[int], None] | None = None) -> Any:
    """Points for ``value`` in a banded table (columns: parameter, low, high, points):
    the first row of ``parameter == key`` with ``low <= value <= high`` (open ends when empty)."""
    v = _num(value)
    if table is None or v is None or isinstance(key, (dict, list)):
        return None
    idx = band_index(table) if isinstance(table, Table) else table
    for lo, hi, points, line in idx.get(key, ()):
        if (lo is None or v >= lo) and (hi is None or v <= hi):
            if hit is not None:
                hit(line)
            return points
    return None


ClassIndex = dict[tuple[str, str], list[tuple[str, int]]]
CLASSIFY_SYSTEMS = ("icd10", "icpc2", "snomed", "atc", "rxnorm")


def class_index(table: Table) -> ClassIndex:
    """(system, code) → classes, for a table with columns ``system``, ``code``, ``class``."""
    idx: ClassIndex = {}
    lines = table.lines or list(range(2, len(table.rows) + 2))
    for r, line in zip(table.rows, lines):
        system, code, cls = r.get("system"), r.get("code"), r.get("class")
        if isinstance(system, str) and isinstance(code, str) and cls is not None:
            key = (system, code.replace(".", "") if system in ("icd10", "icpc2") else code)
            idx.setdefault(key, []).append((str(cls), line))
    return idx


def _prefixes(system: str, code: str) -> list[str]:
    if system == "atc":
        return [code[:n] for n in ATC_LEVELS if n <= len(code)]
    if system in ("icd10", "icpc2"):
        c = code.replace(".", "")
        return [c[:n] for n in range(1, len(c) + 1)]
    return [code]


def classify(table: Table | ClassIndex | None, items: Any, hit: Callable[[int], None] | None = None) -> list[str]:
    """The classes (column ``class``) whose codes match any of the items — conditions (icd10,
    icpc2, snomed) or medications (atc, rxnorm). ICD-10/ICPC-2 rows match their subcodes
    (I26 matches I26.9), ATC rows their subclasses; SNOMED CT and RxNorm match exactly."""
    if table is None:
        return []
    idx = class_index(table) if isinstance(table, Table) else table
    found: list[str] = []
    for item in _as_list(items):
        if not isinstance(item, dict):
            continue
        for system in CLASSIFY_SYSTEMS:
            for code in _as_list(item.get(system)):
                if not isinstance(code, str) or not code:
                    continue
                for pre in _prefixes(system, code):
                    for cls, line in idx.get((system, pre), ()):
                        if hit is not None:
                            hit(line)
                        if cls not in found:
                            found.append(cls)
    return found


FUNCTIONS: dict[str, tuple[Callable[..., Any], str]] = {
    "atc_in": (atc_in, "[codes, classes] → true if any ATC code is in any class (hierarchy)"),
    "any_med_in": (any_med_in, "[meds, classes, except_key?] → true if any medication has an ATC code in the classes"),
    "meds_in": (meds_in, "[meds, classes, except_key?] → names of those medications"),
    "pair_key": (pair_key, "[a, b] → one key for the pair in either order"),
    "has_condition": (has_condition, "[conditions, system, prefixes] → true if any active condition matches"),
    "days_between": (days_between, "[from, to] → calendar days between two dates/times"),
    "hours_between": (hours_between, "[from, to] → hours between two times"),
    "add_days": (add_days, "[date, days] → the calendar date that many days later (YYYY-MM-DD), or null"),
    "latest": (latest, "[observations, max_age_hours] → newest observation within the window, or null"),
    "first_coded": (first_coded, "[items, codes, not_before?] → earliest time of an item with any of the codes, or null"),
    "per_kg": (per_kg, "[amount, weight_kg] → amount per kg, or null when either is missing"),
    "round_down": (round_down, "[value, step] → value rounded DOWN to a multiple of step"),
    "ratio": (ratio, "[a, b] → a / b, or null when b is 0 or missing"),
    "least": (least, "[values…] → the smallest value that exists (nulls skipped), or null"),
    "greatest": (greatest, "[values…] → the largest value that exists (nulls skipped), or null"),
}


def operators(tables: dict[str, Table], hits: RowHits | None = None) -> dict[str, Callable[[str], str]]:
    """datalogic custom operators (JSON in, JSON out) bound to a pack's knowledge tables."""

    def wrap(fn: Callable[..., Any]) -> Callable[[str], str]:
        def op(args_json: str) -> str:
            try:
                args = orjson.loads(args_json)
                if not isinstance(args, list):
                    args = [args]
                out = fn(*args)
                if isinstance(out, float) and not math.isfinite(out):
                    return "null"
                return orjson.dumps(out).decode()
            except (TypeError, ValueError, ArithmeticError, orjson.JSONDecodeError, orjson.JSONEncodeError):
                return "null"

        return op

    ops = {name: wrap(fn) for name, (fn, _) in FUNCTIONS.items()}
    bands = {tid: band_index(t) for tid, t in tables.items() if {"parameter", "low", "high", "points"} <= set(t.meta.columns)}
    classes = {tid: class_index(t) for tid, t in tables.items() if {"system", "code", "class"} <= set(t.meta.columns)}

    def recorder(table_id: Any) -> Callable[[int], None] | None:
        if hits is None or hits.active is None or not isinstance(table_id, str):
            return None
        return lambda line: hits.add(table_id, line)

    def band_op(table_id: Any, key: Any, value: Any) -> Any:
        return band(bands.get(table_id) if isinstance(table_id, str) else None, key, value, recorder(table_id))

    def classify_op(table_id: Any, items: Any) -> Any:
        return classify(classes.get(table_id) if isinstance(table_id, str) else None, items, recorder(table_id))

    ops["band"] = wrap(band_op)
    ops["classify"] = wrap(classify_op)
    return ops


TABLE_FUNCTIONS = {"band": ("parameter", "low", "high", "points"), "classify": ("system", "code", "class")}
OPERATOR_NAMES = (*FUNCTIONS, *TABLE_FUNCTIONS)


def _arity(fn: Callable[..., Any]) -> tuple[int, int]:
    import inspect

    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 1, 10_000
    return sum(1 for p in params if p.default is inspect.Parameter.empty), len(params)


ARITY: dict[str, tuple[int, int]] = {name: _arity(fn) for name, (fn, _) in FUNCTIONS.items()} | {"band": (3, 3), "classify": (2, 2)}
