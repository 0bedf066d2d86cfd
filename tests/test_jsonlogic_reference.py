"""datalogic-py (the engine) agrees with panzi-json-logic (a reference implementation) on the
JSON Logic the bundled packs use and on generated expressions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import datalogic_py as dl
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from json_logic import jsonLogic

from cds.engine.functions import OPERATOR_NAMES

REPO = Path(__file__).resolve().parents[1]
ENGINE = dl.Engine()


# The operators of the JSON Logic specification (jsonlogic.com/operations.html). Expressions
# using anything else (our engine functions, datalogic extensions such as ?? or val) have no
# reference to compare with.
STANDARD = {
    "var", "missing", "missing_some", "if", "==", "===", "!=", "!==", "!", "!!", "or", "and", ">", ">=", "<", "<=",
    "max", "min", "+", "-", "*", "/", "%", "map", "reduce", "filter", "all", "none", "some", "merge", "in", "cat",
    "substr", "log",
}


def _uses_custom(e: Any) -> bool:
    if isinstance(e, dict):
        return any(k not in STANDARD or k in OPERATOR_NAMES or _uses_custom(v) for k, v in e.items())
    if isinstance(e, list):
        return any(_uses_custom(x) for x in e)
    return False


def _bundled_expressions() -> list[tuple[str, Any]]:
    out = []
    for f in sorted(REPO.glob("rules/**/rules.yaml")):
        for rule in yaml.safe_load(f.read_text())["rules"]:
            for key in ("when", "severity"):
                v = rule.get(key)
                if isinstance(v, (dict, list)) and not _uses_custom(v):
                    out.append((f"{f.parent.name}:{rule['id']}:{key}", v))
            for name, v in (rule.get("let") or {}).items():
                if isinstance(v, (dict, list)) and not _uses_custom(v):
                    out.append((f"{f.parent.name}:{rule['id']}:let.{name}", v))
    return out


SAMPLE_DATA = [
    {"row": {"relevance": r, "route": "oral", "min_age_days": 90, "max_age_days": 4383, "max_single_mg": 400, "mg_per_kg_dose_high": 10},
     "item": {"identified": ident, "dose": {"route": route, "mg": mg}},
     "patient": {"age_days": age, "weight": w},
     "let": {"mg_per_kg": mgkg, "limit_mg": lim}}
    for r in ("1", "2", "3")
    for ident in (True, False)
    for route, mg, age, w, mgkg, lim in (
        ("oral", 400, 2000, {"kg": 20}, 20, 200),
        ("rectal", 100, 50, None, None, None),
        ("oral", 2000, 5000, {"kg": 60}, 33.3, 400),
    )
]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b)
    return a == b


@pytest.mark.parametrize("name, expr", _bundled_expressions())
def test_bundled_expressions_agree(name: str, expr: Any) -> None:
    rule = ENGINE.compile(expr)
    for data in SAMPLE_DATA:
        ours = rule.evaluate(data)
        ref = jsonLogic(expr, data)
        assert ENGINE.truthy(ours) == bool(ref) if isinstance(ref, bool) or isinstance(ours, bool) else _same(ours, ref), (name, data, ours, ref)


def test_some_bundled_expressions_exist() -> None:
    assert len(_bundled_expressions()) >= 3


numbers = st.one_of(st.integers(-1000, 1000), st.floats(-1000, 1000, allow_nan=False).map(lambda f: round(f, 3)))
leaf = st.one_of(numbers, st.sampled_from([{"var": "x"}, {"var": "y"}]))


def arith(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # "-" is defined for 1 or 2 arguments only; beyond that implementations legitimately differ
    return st.one_of(
        st.tuples(st.sampled_from(["+", "*", "max", "min"]), st.lists(children, min_size=2, max_size=3)).map(lambda t: {t[0]: t[1]}),
        st.lists(children, min_size=2, max_size=2).map(lambda xs: {"-": xs}),
    )


expr_num = st.recursive(leaf, arith, max_leaves=6)
expr_bool = st.one_of(
    st.tuples(st.sampled_from([">", ">=", "<", "<=", "==", "!="]), expr_num, expr_num).map(lambda t: {t[0]: [t[1], t[2]]}),
)
expr_logic = st.recursive(expr_bool, lambda c: st.one_of(
    st.lists(c, min_size=1, max_size=3).map(lambda xs: {"and": xs}),
    st.lists(c, min_size=1, max_size=3).map(lambda xs: {"or": xs}),
    c.map(lambda x: {"!": [x]}),
    st.tuples(c, c, c).map(lambda t: {"if": list(t)}),
), max_leaves=5)


@settings(max_examples=300, deadline=None)
@given(expr=expr_logic, x=numbers, y=numbers)
def test_generated_expressions_agree(expr: Any, x: float, y: float) -> None:
    data = {"x": x, "y": y}
    ours = ENGINE.eval(expr, data)
    ref = jsonLogic(expr, data)
    assert ENGINE.truthy(ours) == bool(ref), (expr, data, ours, ref)
